package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/rpc"
)

// clusterCheckTimeout bounds each question the cluster status asks: a
// monitoring endpoint, Patroni, the bus.
const clusterCheckTimeout = 2 * time.Second

// Database roles and states as reported.
const (
	roleStandalone = "standalone"
	// The standalone database's name: the gateway knows no more of it.
	standaloneName = "postgresql"
)

// GetCluster reports the cluster's members (see checkCluster), gathered
// once for every caller within clusterFresh.
func (s systemServer) GetCluster(ctx context.Context, _ *systemv1.GetClusterRequest) (*systemv1.Cluster, error) {
	return s.g.cluster.get(ctx, s.g.checkCluster), nil
}

// RemoveManagers takes managers that are gone off the list (see
// membership.Remove).
func (s systemServer) RemoveManagers(ctx context.Context, req *systemv1.RemoveManagersRequest) (*systemv1.RemoveManagersResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, apierr.Invalid("name", "is required: a host, or a manager's key (<service>.<host>.<process id>)")
	}
	// Bounded like a call to a backing service: while the bucket's stream
	// has no leader (a host was just lost) its read can wait on, and the
	// operator is better told to try again than kept waiting.
	ctx, cancel := context.WithTimeout(ctx, s.g.requestTimeout)
	defer cancel()
	removed, err := membership.Remove(ctx, s.g.js, name, time.Now(), s.g.deps.MemberHealthyWithin)
	switch {
	case errors.Is(err, membership.ErrNoSuchManager):
		return nil, apierr.NotFound("manager", name)
	case errors.Is(err, membership.ErrRunning):
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "%v", err)
	case bus.Unanswered(err):
		// The managers' bucket cannot be read or written now: a server
		// that held its stream's leader is gone and the others are
		// electing one, as when a host is lost.
		return nil, apierr.Unavailable("the managers' list cannot be changed now (its stream may be electing a leader); try again: %v", err)
	case err != nil:
		return nil, err
	}
	s.g.cluster.forget()
	s.g.log.InfoContext(ctx, "managers removed", "name", name, "count", len(removed))
	return &systemv1.RemoveManagersResponse{Removed: removed}, nil
}

// checkCluster gathers, in parallel, the managers from their heartbeats,
// the NATS servers and the streams' replicas, and the databases. What it
// cannot find out becomes a warning, never an error: an operator asks
// this most when something is down.
func (g *Gateway) checkCluster(ctx context.Context) *systemv1.Cluster {
	c := &systemv1.Cluster{Time: timestamppb.Now()}
	var mu sync.Mutex
	warn := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		c.Warnings = append(c.Warnings, fmt.Sprintf(format, args...))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		lctx, cancel := context.WithTimeout(ctx, clusterCheckTimeout)
		defer cancel()
		managers, err := membership.List(lctx, g.js, time.Now(), g.deps.MemberHealthyWithin)
		if err != nil {
			warn("managers: %v", err)
		}
		for _, m := range managers {
			if p := m.GetCredentialsProblem(); p != "" {
				warn("manager %s: %s (sign them again with this release's flotilla admin bus-credentials init, and copy its .creds file to %s)", m.GetName(), p, m.GetHost())
			}
		}
		c.Managers = managers
		g.warnBrokersIgnoringNetworks(lctx, managers, warn)
	})
	wg.Go(func() { c.Brokers, c.Streams = g.brokers(ctx, warn) })
	wg.Go(func() { c.Databases = g.databases(ctx, warn) })
	wg.Wait()
	slices.Sort(c.Warnings)
	return c
}

// warnBrokersIgnoringNetworks warns of each secret broker among managers
// of a release before fleet secrets' networks (a host not upgraded yet, or
// an old one added back): new networks are refused while it is listed
// (see brokersLacking), but it releases a fleet secret to its
// templates' instances in any network, so the warning counts the fleet
// secrets it would release beyond theirs.
func (g *Gateway) warnBrokersIgnoringNetworks(ctx context.Context, managers []*systemv1.Manager, warn func(string, ...any)) {
	old := membership.LackingOf(managers, subjects.Secrets, string(vocab.ManagerFeatureFleetSecretNetworks))
	if len(old) == 0 {
		return
	}
	risk := "fleet secrets cannot name networks until it is upgraded, or stopped and off the list"
	list, err := rpc.Call(ctx, g.bus, endpoints.FleetSecretList, &secretsv1.ListFleetSecretsRequest{})
	switch {
	case err != nil:
		risk += fmt.Sprintf("; whether fleet secrets name networks already is unknown now (%v)", err)
	default:
		named := 0
		for _, sec := range list.GetSecrets() {
			if len(sec.GetNetworkIds()) > 0 {
				named++
			}
		}
		if named > 0 {
			which := fmt.Sprintf("the %d fleet secrets that name networks", named)
			if named == 1 {
				which = "the fleet secret that names networks"
			}
			risk = "it releases " + which + " to instances in any network; upgrade it, or stop it (flotilla cluster managers remove takes it off the list at once)"
		}
	}
	for _, m := range old {
		warn("manager %s: a secret broker of version %s, which does not keep fleet secrets' networks: %s", m.GetName(), cmp.Or(m.GetVersion(), "unknown"), risk)
	}
}

// brokers reports the NATS servers, from their monitoring endpoints when
// configured, and every Flotilla stream's replicas.
func (g *Gateway) brokers(ctx context.Context, warn func(string, ...any)) ([]*systemv1.Broker, []*systemv1.StreamReplication) {
	streams := g.streamReplication(ctx, warn)
	var brokers []*systemv1.Broker
	if len(g.deps.NATSMonitorURLs) > 0 {
		brokers = g.monitoredBrokers(ctx, warn)
	} else {
		nc := g.deps.NATS
		connected := &systemv1.Broker{Name: nc.ConnectedServerName(), Version: nc.ConnectedServerVersion(), Url: nc.ConnectedUrlRedacted()}
		brokers = brokersFromStreams(streams, connected, warn)
	}
	slices.SortFunc(brokers, func(a, b *systemv1.Broker) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return brokers, streams
}

// streamReplication reads the information of every declared stream; one
// not created yet (its service never ran) is left out.
func (g *Gateway) streamReplication(ctx context.Context, warn func(string, ...any)) []*systemv1.StreamReplication {
	out := make([]*systemv1.StreamReplication, len(endpoints.Streams))
	var wg sync.WaitGroup
	for i, u := range endpoints.Streams {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, clusterCheckTimeout)
			defer cancel()
			s, err := g.js.Stream(sctx, u.Stream)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return
			}
			if err != nil {
				warn("stream %s: %v", u.Stream, err)
				return
			}
			info := s.CachedInfo()
			r := &systemv1.StreamReplication{Name: u.Stream, Messages: info.State.Msgs}
			if cl := info.Cluster; cl != nil {
				r.Cluster, r.Leader = cl.Name, cl.Leader
				for _, p := range cl.Replicas {
					r.Replicas = append(r.Replicas, &systemv1.StreamReplica{Name: p.Name, Current: p.Current,
						Active: durationpb.New(p.Active), Lag: p.Lag, Offline: p.Offline})
				}
			}
			out[i] = r
		})
	}
	wg.Wait()
	return slices.DeleteFunc(out, func(r *systemv1.StreamReplication) bool { return r == nil })
}

// brokersFromStreams names the servers the gateway can see without
// monitoring endpoints: the one it is connected to (with its version and
// URL) and those holding a stream. A server no stream reports offline is
// healthy. With one server (flotilla up) that server is the meta leader;
// with more, the leader is unknown.
func brokersFromStreams(streams []*systemv1.StreamReplication, connected *systemv1.Broker, warn func(string, ...any)) []*systemv1.Broker {
	seen := map[string]*systemv1.Broker{}
	if connected.GetName() != "" {
		connected.Healthy = true
		seen[connected.GetName()] = connected
	}
	add := func(name string, healthy bool) {
		if name == "" {
			return
		}
		if b, ok := seen[name]; ok {
			b.Healthy = b.Healthy && healthy
			return
		}
		seen[name] = &systemv1.Broker{Name: name, Healthy: healthy}
	}
	for _, s := range streams {
		add(s.GetLeader(), true)
		for _, r := range s.GetReplicas() {
			add(r.GetName(), !r.GetOffline())
		}
	}
	out := make([]*systemv1.Broker, 0, len(seen))
	for _, b := range seen {
		out = append(out, b)
	}
	switch {
	case len(out) == 1:
		out[0].MetaLeader = true
	case len(out) > 1:
		warn("brokers: the JetStream meta leader is unknown without FLOTILLA_NATS_MONITOR_URLS")
	}
	return out
}

// varz and jsz are the parts of a NATS server's /varz and /jsz monitoring
// answers the cluster status reads.
type (
	varz struct {
		ServerName string `json:"server_name"`
		Version    string `json:"version"`
	}
	jsz struct {
		Meta *struct {
			Leader   string `json:"leader"`
			Replicas []struct {
				Name    string `json:"name"`
				Current bool   `json:"current"`
				Offline bool   `json:"offline"`
			} `json:"replicas"`
		} `json:"meta_cluster"`
	}
)

// monitoredBrokers asks every monitoring endpoint for its server's name
// and version (/varz) and its view of the JetStream meta group (/jsz): a
// server that does not answer is unhealthy, and a peer of the meta group
// without a monitoring URL is listed from the others' view.
func (g *Gateway) monitoredBrokers(ctx context.Context, warn func(string, ...any)) []*systemv1.Broker {
	urls := g.deps.NATSMonitorURLs
	brokers := make([]*systemv1.Broker, len(urls))
	views := make([]jsz, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Go(func() {
			b := &systemv1.Broker{Url: u}
			brokers[i] = b
			var v varz
			err := g.getJSON(ctx, u, "/varz", &v)
			if err == nil {
				err = g.getJSON(ctx, u, "/jsz", &views[i])
			}
			if err != nil {
				b.Name, b.Message = hostOfURL(u), err.Error()
				warn("broker %s: %v", u, err)
				return
			}
			b.Name, b.Version, b.Healthy = v.ServerName, v.Version, true
		})
	}
	wg.Wait()
	leader := ""
	named := map[string]bool{}
	for _, b := range brokers {
		named[b.GetName()] = true
	}
	for _, v := range views {
		if v.Meta == nil {
			continue
		}
		leader = cmp.Or(leader, v.Meta.Leader)
		for _, p := range v.Meta.Replicas {
			if !named[p.Name] {
				named[p.Name] = true
				brokers = append(brokers, &systemv1.Broker{Name: p.Name, Healthy: p.Current && !p.Offline,
					Message: "seen by the meta group; not among FLOTILLA_NATS_MONITOR_URLS"})
			}
		}
	}
	standalone := false
	for i, b := range brokers[:len(urls)] {
		// A server that answers without a meta group runs JetStream alone:
		// it is its own meta leader.
		if b.GetHealthy() && views[i].Meta == nil {
			b.MetaLeader, standalone = true, true
		}
	}
	for _, b := range brokers {
		b.MetaLeader = b.MetaLeader || leader != "" && b.GetName() == leader
	}
	if leader == "" && !standalone && slices.ContainsFunc(brokers, (*systemv1.Broker).GetHealthy) {
		warn("brokers: no server named a JetStream meta leader")
	}
	return brokers
}

// patroniMember is one member of Patroni's GET /cluster answer. lag is a
// number of bytes, or a string ("unknown") when Patroni cannot tell.
type patroniMember struct {
	Name  string          `json:"name"`
	Role  string          `json:"role"`
	State string          `json:"state"`
	Host  string          `json:"host"`
	Port  int32           `json:"port"`
	Lag   json.RawMessage `json:"lag"`
}

// databases reports the PostgreSQL members as Patroni sees them (the
// first of PatroniURLs that answers), or, without Patroni, the one
// database, healthy when the inventory (which alone opens it) answers.
func (g *Gateway) databases(ctx context.Context, warn func(string, ...any)) []*systemv1.Database {
	if len(g.deps.PatroniURLs) == 0 {
		db := &systemv1.Database{Name: standaloneName, Role: roleStandalone, Healthy: true}
		if err := g.ping(ctx, subjects.Inventory); err != nil {
			db.Healthy, db.Message = false, "the inventory does not answer: "+err.Error()
		}
		return []*systemv1.Database{db}
	}
	var errs []string
	for _, u := range g.deps.PatroniURLs {
		var answer struct {
			Members []patroniMember `json:"members"`
		}
		if err := g.getJSON(ctx, u, "/cluster", &answer); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", u, err))
			continue
		}
		out := make([]*systemv1.Database, 0, len(answer.Members))
		for _, m := range answer.Members {
			db := &systemv1.Database{Name: m.Name, Role: m.Role, State: m.State, Host: m.Host, Port: m.Port,
				Healthy: m.State == "running" || m.State == "streaming"}
			var lag int64
			if json.Unmarshal(m.Lag, &lag) == nil {
				db.LagBytes = &lag
			}
			out = append(out, db)
		}
		return out
	}
	warn("databases: no Patroni REST API answered: %s", strings.Join(errs, "; "))
	return nil
}

// getJSON reads base+path as JSON into out, within clusterCheckTimeout
// and at most 4 MiB.
func (g *Gateway) getJSON(ctx context.Context, base, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, clusterCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := g.web.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(out); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// hostOfURL names a server that did not answer by its URL's host.
func hostOfURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Hostname()
	}
	return raw
}

// ping asks service whether it is ready, within clusterCheckTimeout; the
// error says what a client may see.
func (g *Gateway) ping(ctx context.Context, service string) error {
	pctx, cancel := context.WithTimeout(ctx, clusterCheckTimeout)
	defer cancel()
	ep, _ := endpoints.Ping(service)
	if _, err := rpc.Call(pctx, g.bus, ep, &systemv1.PingRequest{}); err != nil {
		return errors.New(apierr.Public(ctx, g.log, err).Message) // an internal error's cause is logged
	}
	return nil
}
