package natsx_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/testkit"
)

// startServer starts an embedded server on port (-1: a free one) that
// stops when the test ends.
func startServer(t *testing.T, name string, port int) *server.Server {
	t.Helper()
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{ServerName: name, Port: port, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// TestAConnectionGoesBackToItsHomeServer: a connection given three servers
// (a cluster host's services name the one beside them first) moves to
// another when the first is lost, and back to the first — not to the third
// — once it has been up a while, its subscriptions with it; nats.go alone
// would stay away.
func TestAConnectionGoesBackToItsHomeServer(t *testing.T) {
	t.Parallel()
	home := startServer(t, "home", -1)
	away := startServer(t, "away", -1)
	third := startServer(t, "third", -1)
	homeURL, port := home.ClientURL(), home.Addr().(*net.TCPAddr).Port
	nc, err := natsx.Connect(homeURL+","+away.ClientURL()+","+third.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	got := make(chan string, 16)
	if _, err := nc.Subscribe("test.home", func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if nc.ConnectedUrl() != homeURL {
		t.Fatalf("connected to %s, want home %s", nc.ConnectedUrl(), homeURL)
	}

	home.Shutdown()
	home.WaitForShutdown()
	testkit.WaitFor(t, 10*time.Second, "the connection to move to the other server", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() == away.ClientURL()
	})
	back := startServer(t, "home-again", port)
	testkit.WaitFor(t, natsx.HomeStable+4*natsx.HomeProbe, "the connection to go back home", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() == homeURL
	})
	// Its subscription came with it.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := testkit.NATSConn(t, back)
	if err := pub.Publish("test.home", []byte("welcome back")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "welcome back" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription made before the move does not receive at home")
	}
}

// TestAHomecomingFailsNoRequest: requests sent without pause while a
// connection goes back home all get their answers. The homecoming waits
// for those in flight and holds new ones until it is back, where a
// reconnection made on purpose would have given up those in flight.
func TestAHomecomingFailsNoRequest(t *testing.T) {
	t.Parallel()
	home := startServer(t, "home", -1)
	away := startServer(t, "away", -1)
	homeURL, port := home.ClientURL(), home.Addr().(*net.TCPAddr).Port
	// A slow responder on each server, so that requests are in flight.
	answer := func(ns *server.Server) {
		_, err := testkit.NATSConn(t, ns).Subscribe("test.slow", func(m *nats.Msg) {
			time.Sleep(20 * time.Millisecond)
			_ = m.Respond(nil)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	answer(away)
	nc, err := natsx.Connect(homeURL+","+away.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	home.Shutdown()
	home.WaitForShutdown()
	testkit.WaitFor(t, 10*time.Second, "the connection to move away", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() == away.ClientURL()
	})
	answer(startServer(t, "home-again", port))

	calls := testkit.KeepCalling(t, 4, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		return natsx.Request(ctx, nc, "test.slow", &emptypb.Empty{}, &emptypb.Empty{})
	})
	testkit.WaitFor(t, natsx.HomeStable+4*natsx.HomeProbe, "the connection to go back home", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() == homeURL
	})
	time.Sleep(200 * time.Millisecond) // requests on the home server too
	calls.Stop("the homecoming")
}
