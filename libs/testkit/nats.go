package testkit

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// natsReadyTimeout bounds the wait for an embedded server to accept clients.
const natsReadyTimeout = 10 * time.Second

// NATS starts an embedded nats-server with JetStream on a random port of
// 127.0.0.1, storing its streams in a temp dir of tb, and shuts it down when
// tb ends. Each call starts a separate server.
func NATS(tb testing.TB) *server.Server {
	tb.Helper()
	opts := &server.Options{
		ServerName: "testkit",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   tb.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("testkit: create nats-server: %v", err)
	}
	// Registered after TempDir, so it runs before the store is removed.
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	ns.Start()
	if !ns.ReadyForConnections(natsReadyTimeout) {
		tb.Fatalf("testkit: nats-server not ready for connections after %v", natsReadyTimeout)
	}
	return ns
}

// NATSConn connects to ns, named after the test, and closes the connection
// when tb ends.
func NATSConn(tb testing.TB, ns *server.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.Name(tb.Name())}, opts...)
	nc, err := nats.Connect(ns.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("testkit: connect to nats-server %s: %v", ns.ClientURL(), err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
