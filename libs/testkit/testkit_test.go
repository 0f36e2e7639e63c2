package testkit_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Two parallel tests create the same table and rows in their own databases;
// each must see only its own.
func TestNewDatabaseIsolatesParallelTests(t *testing.T) {
	for _, ship := range []string{"argo", "nautilus"} {
		t.Run(ship, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			url := testkit.NewDatabase(t)
			pool, err := pgxpool.New(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()

			if _, err := pool.Exec(ctx, "CREATE TABLE ships (name text PRIMARY KEY)"); err != nil {
				t.Fatalf("create table: %v", err)
			}
			if _, err := pool.Exec(ctx, "INSERT INTO ships VALUES ($1)", ship); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // let the other test write too
			rows, err := pool.Query(ctx, "SELECT name FROM ships")
			if err != nil {
				t.Fatal(err)
			}
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if len(names) != 1 || names[0] != ship {
				t.Fatalf("ships = %v; want only %s", names, ship)
			}
		})
	}
}

func TestNewDatabaseDropsItAfterTheTest(t *testing.T) {
	var url string
	parent := t
	t.Run("user", func(t *testing.T) {
		url = testkit.NewDatabase(t)
		conn, err := pgx.Connect(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		// Left open until the parent ends: the drop must not wait for it.
		parent.Cleanup(func() { conn.Close(context.Background()) })
	})
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cfg.Database, "t_testnewdatabasedropsitafterthetest_user_") {
		t.Errorf("database name %q is not derived from the test name", cfg.Database)
	}
	if _, err := pgx.Connect(t.Context(), url); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("connect after the test ended: %v; want database does not exist", err)
	}
}

func TestNATSJetStream(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nc := testkit.NATSConn(t, testkit.NATS(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SHIPS", Subjects: []string{"ships.>"}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "ships.launched", []byte("argo")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	if string(msg.Data()) != "argo" {
		t.Fatalf("got %q; want argo", msg.Data())
	}
}

func TestNATSServersAreSeparate(t *testing.T) {
	t.Parallel()
	a, b := testkit.NATS(t), testkit.NATS(t)
	if a.ClientURL() == b.ClientURL() {
		t.Fatalf("two servers share %s", a.ClientURL())
	}
	if !strings.HasPrefix(a.ClientURL(), "nats://127.0.0.1:") {
		t.Errorf("ClientURL = %s; want loopback", a.ClientURL())
	}
}

func TestFreePorts(t *testing.T) {
	t.Parallel()
	ports := testkit.FreePorts(t, 5)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d returned twice in %v", p, ports)
		}
		seen[p] = true
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		ln.Close()
	}
	if p := testkit.FreePort(t); p <= 0 {
		t.Fatalf("FreePort = %d", p)
	}
}

// TestFreePortsAreBelowTheEphemeralRange: the ports handed out are
// distinct, bindable and below the range outgoing connections take their
// source ports from, so none is taken that way before its test binds it.
func TestFreePortsAreBelowTheEphemeralRange(t *testing.T) {
	t.Parallel()
	ports := testkit.FreePorts(t, 20)
	seen := map[int]bool{}
	for _, p := range ports {
		if p < 10000 || p >= testkit.EphemeralLow() || seen[p] {
			t.Errorf("port %d: want distinct ports in [10000, %d)", p, testkit.EphemeralLow())
		}
		seen[p] = true
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("port %d: %v", p, err)
			continue
		}
		ln.Close()
	}
}
