package adapters

import (
	"context"
	"io/fs"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/pressly/goose/v3"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestUpgradeKeepsUnforwardedEvents starts from the first schema, whose
// outbox table holds a committed but not yet forwarded event, upgrades, and
// forwards: the event reaches the stream unchanged.
func TestUpgradeKeepsUnforwardedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	// The schema as the first release left it.
	dir, err := fs.Sub(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, dir, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	msg, err := bus.NewEvent(ctx, subjects.NounNetwork, "n-old", vocab.VerbCreated, vocab.User("ada"), 1, time.Now(), &systemv1.PingResponse{Service: "old"})
	if err != nil {
		t.Fatal(err)
	}
	hdr := map[string][]string(msg.Header)
	if _, err := pool.Exec(ctx, "INSERT INTO outbox (msg_id, subject, headers, payload) VALUES ($1, $2, $3, $4)",
		msg.ID(), msg.Subject, hdr, msg.Data); err != nil {
		t.Fatal(err)
	}

	if err := Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	var old bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('outbox') IS NOT NULL").Scan(&old); err != nil || old {
		t.Fatalf("the old outbox table is still there: %v %v", old, err)
	}

	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	f := outbox.NewForwarder(pool, js, slog.New(slog.DiscardHandler), 0)
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; n == 0; {
		if n, err = f.Forward(ctx); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the upgraded outbox row was never forwarded")
		}
	}
	s, _ := js.Stream(ctx, subjects.EventsStream)
	got, err := s.GetLastMsgForSubject(ctx, msg.Subject)
	if err != nil {
		t.Fatal(err)
	}
	for k := range msg.Header {
		if got.Header.Get(k) != msg.Header.Get(k) {
			t.Errorf("header %s = %q, want %q", k, got.Header.Get(k), msg.Header.Get(k))
		}
	}
	if string(got.Data) != string(msg.Data) {
		t.Error("payload changed in the upgrade")
	}
}
