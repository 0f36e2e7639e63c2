package adapters_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func setup(t *testing.T) (*pgxpool.Pool, jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := adapters.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	return pool, js
}

func streamCount(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestOutboxRepublishAfterACrashIsDeduplicated(t *testing.T) {
	t.Parallel()
	pool, js := setup(t)
	ctx := context.Background()
	msg, err := bus.NewEvent(ctx, "network", "n1", "created", "test", 1, time.Now(), &systemv1.PingResponse{Service: "x"})
	if err != nil {
		t.Fatal(err)
	}
	write := func() {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return adapters.AddToOutbox(ctx, tx, msg) }); err != nil {
			t.Fatal(err)
		}
	}
	write()
	f := adapters.NewForwarder(pool, js, slog.New(slog.DiscardHandler))
	if n, err := f.Forward(ctx); err != nil || n != 1 {
		t.Fatalf("forward: %d %v", n, err)
	}
	// The forwarder crashed after publishing but before deleting the row: the
	// same row (same message id) is forwarded again.
	write()
	if n, err := f.Forward(ctx); err != nil || n != 1 {
		t.Fatalf("forward again: %d %v", n, err)
	}
	if got := streamCount(t, js); got != 1 {
		t.Fatalf("stream has %d messages, want 1: the republished one must be dropped", got)
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil || left != 0 {
		t.Fatalf("outbox rows left: %d %v", left, err)
	}
}

func TestOutboxKeepsRowsWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	ctx := context.Background()
	ns := testkit.NATS(t)
	nc := testkit.NATSConn(t, ns)
	js, _ := jetstream.New(nc)
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	msg, _ := bus.NewEvent(ctx, "network", "n2", "created", "test", 1, time.Now(), &systemv1.PingResponse{})
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return adapters.AddToOutbox(ctx, tx, msg) }); err != nil {
		t.Fatal(err)
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	f := adapters.NewForwarder(pool, js, slog.New(slog.DiscardHandler))
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := f.Forward(cctx); err == nil {
		t.Fatal("forward with NATS down succeeded")
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil || left != 1 {
		t.Fatalf("outbox rows after a failed publish: %d %v, want 1", left, err)
	}
}
