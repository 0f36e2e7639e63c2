package natsx

import (
	"context"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// A connection to a cluster (Connect given several URLs) has a home: the
// first server named, which a cluster host's services list first as the one
// beside them. When home is lost the connection moves to another server;
// nats.go would keep it there for good, so that a host whose server was
// restarted once would have its services talk across hosts from then on.
// homing brings the connection back: once home has accepted connections
// HomeStable, it reconnects, home first.
const (
	// HomeProbe is how often a connection away from home tries home.
	HomeProbe = 2 * time.Second
	// HomeStable is how long home must have been accepting connections
	// (successive probes) before a connection goes back to it.
	HomeStable = 4 * time.Second
	// maxHomeStable bounds the wait after homecomings that did not take.
	maxHomeStable = 5 * time.Minute
)

// homing follows one cluster connection's home.
type homing struct {
	home *url.URL
	// back is set when home was found up again, for the reconnect that
	// follows to try it first (once).
	back atomic.Bool
}

// newHoming returns the homing of a connection to the comma-separated
// urls, or nil when there is only one server (nothing to come back to).
func newHoming(urls string) *homing {
	first, rest, several := strings.Cut(urls, ",")
	if !several || strings.TrimSpace(rest) == "" {
		return nil
	}
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil || u.Host == "" {
		return nil
	}
	return &homing{home: u}
}

// pick is the connection's ReconnectToServer callback: home, at once, when
// it was just found up again; otherwise nats.go's own choice.
func (h *homing) pick(servers []nats.Server, _ nats.ServerInfo) (*nats.Server, time.Duration) {
	if !h.back.Swap(false) {
		return nil, 0
	}
	for i := range servers {
		if servers[i].URL != nil && servers[i].URL.Host == h.home.Host {
			return &servers[i], 0
		}
	}
	return nil, 0
}

// follow runs until nc closes: while nc is connected away from home it
// tries home every HomeProbe, and once home has answered for HomeStable it
// makes nc reconnect, home first. A homecoming that did not take (home
// accepts connections but refuses this client, say) doubles the time home
// must answer before the next, up to maxHomeStable, so a working
// connection is not broken again and again for it.
func (h *homing) follow(nc *nats.Conn) {
	tick := time.NewTicker(HomeProbe)
	defer tick.Stop()
	var upSince time.Time
	stable, tried := HomeStable, false
	for range tick.C {
		if nc.IsClosed() {
			return
		}
		if !nc.IsConnected() {
			upSince = time.Time{}
			continue
		}
		if h.atHome(nc) {
			upSince, stable, tried = time.Time{}, HomeStable, false
			continue
		}
		if tried {
			stable, tried = min(2*stable, maxHomeStable), false
		}
		c, err := net.DialTimeout("tcp", h.home.Host, time.Second)
		if err != nil {
			upSince = time.Time{}
			continue
		}
		_ = c.Close()
		if upSince.IsZero() {
			upSince = time.Now()
		}
		if time.Since(upSince) < stable {
			continue
		}
		upSince, tried = time.Time{}, true
		h.comeHome(nc)
	}
}

// HomeDrain bounds how long a homecoming waits for the requests in flight
// on the connection to be answered, and then for the connection to be
// back: the requests made meanwhile wait for it (Bounded).
const HomeDrain = time.Second

// comeHome makes nc reconnect, home first, without failing a request.
// The responders on nc pause first (see Quiescer): they stop taking
// requests and answer those they have, up to HomeDrain, while other
// instances take the new ones. Then new requests wait while those in
// flight are answered (up to HomeDrain; one still unanswered then fails as
// a lost connection's, "may or may not"), and until nc is connected again
// (up to HomeDrain more). The reconnection takes milliseconds: home was
// just found accepting connections.
func (h *homing) comeHome(nc *nats.Conn) {
	v, ok := links.Load(nc)
	if !ok {
		h.back.Store(true)
		_ = nc.ForceReconnect()
		return
	}
	l := v.(*link)
	ctx, cancel := context.WithTimeout(context.Background(), HomeDrain)
	resume := l.pause(ctx)
	cancel()
	defer resume()
	release := l.gate.hold(HomeDrain)
	defer release()
	h.back.Store(true)
	if nc.ForceReconnect() != nil {
		return
	}
	for deadline := time.Now().Add(HomeDrain); !nc.IsConnected() && !nc.IsClosed() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// atHome says whether nc is connected to its home server.
func (h *homing) atHome(nc *nats.Conn) bool {
	u, err := url.Parse(nc.ConnectedUrl())
	return err == nil && u.Host == h.home.Host
}
