// Package stacktest starts a stack of Flotilla services for a test, on real
// infrastructure from libs/testkit: the same composition (stack.Start) as
// `flotilla up` and the service binaries, with test defaults filled in.
package stacktest

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/testkit"
)

// Start builds cfg's services and runs them until the test ends. Whatever
// cfg leaves empty is filled in: a fresh NATS server with per-service bus
// credentials (testkit.SecureNATS), a fresh database (from the package's
// testkit PostgreSQL), listeners on 127.0.0.1 with free ports, and a CA and
// master key in temp dirs. A service that stops with an error fails the
// test.
func Start(t testing.TB, cfg stack.Config) *stack.Stack {
	t.Helper()
	runs := func(s string) bool { return len(cfg.Services) == 0 || slices.Contains(cfg.Services, s) }
	if cfg.NATSServer == nil && cfg.NATSURL == "" {
		cfg = OnBus(cfg, testkit.SecureNATS(t))
	}
	if cfg.DatabaseURL == "" && (runs(subjects.Inventory) || runs(subjects.Secrets)) {
		cfg.DatabaseURL = testkit.NewDatabase(t)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = "127.0.0.1:0"
	}
	if cfg.AgentAddr == "" {
		cfg.AgentAddr = "127.0.0.1:0"
	}
	dir := t.TempDir()
	if cfg.CACertFile == "" {
		cfg.CACertFile, cfg.CAKeyFile = filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "ca", "ca.key")
	}
	if cfg.KMSKeyFile == "" && cfg.KMSAWS == nil {
		cfg.KMSKeyFile, cfg.CreateKMSKey = filepath.Join(dir, "keys", "master.key"), true
	}
	if cfg.DatabaseWait == 0 {
		cfg.DatabaseWait = 10 * time.Second
	}
	st, err := stack.Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("stacktest: start %v: %v", cfg.Services, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stacktest: a service stopped with an error: %v", err)
				}
			case <-time.After(2 * time.Minute):
				t.Error("stacktest: the stack did not stop within 2 minutes")
			}
		})
	}
	t.Cleanup(stop)
	stops.Store(st, stop)
	return st
}

// stops holds each started stack's stop function.
var stops sync.Map

// Stop stops a stack Start started, as SIGTERM stops a process, and waits
// for it; the test's end would otherwise.
func Stop(t testing.TB, st *stack.Stack) {
	t.Helper()
	stop, ok := stops.LoadAndDelete(st)
	if !ok {
		t.Fatal("stacktest: Stop of a stack not started by Start, or stopped already")
	}
	stop.(func())()
}

// OnBus points cfg at bus, each service with its own credentials.
func OnBus(cfg stack.Config, bus *testkit.Bus) stack.Config {
	cfg.NATSURL, cfg.NATSCreds, cfg.NATSTLS = bus.URL, bus.Creds, bus.TLS
	return cfg
}
