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

// schemaAt is a database of the test's own with the inventory's schema as
// migration version left it (beside the outbox's, which Migrate always
// brings up to date first).
func schemaAt(t *testing.T, version int64) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := outbox.Migrate(t.Context(), pool, nil); err != nil {
		t.Fatal(err)
	}
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
	if _, err := p.UpTo(t.Context(), version); err != nil {
		t.Fatal(err)
	}
	return pool
}

// TestUpgradeKeepsUnforwardedEvents starts from the first schema, whose
// outbox table holds a committed but not yet forwarded event, upgrades, and
// forwards: the event reaches the stream unchanged.
func TestUpgradeKeepsUnforwardedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The schema as the first release left it.
	pool := schemaAt(t, 1)
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

// TestUpgradeKeepsAdminsAndTheirSessions starts from the schema before
// roles, with an admin logged in, upgrades: the admin is an admin, still
// logged in with the same token, at version 1.
func TestUpgradeKeepsAdminsAndTheirSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := schemaAt(t, 5) // before roles
	now := time.Now().UTC().Truncate(time.Microsecond)
	id := NewID()
	if _, err := pool.Exec(ctx, "INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES ($1, 'root', 'h', true, $2)", id, now); err != nil {
		t.Fatal(err)
	}
	const token = "flt_an-old-session"
	if _, err := pool.Exec(ctx, "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
		tokenDigest(token), id, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	if err := Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	u, tok, err := UserByToken(ctx, pool, token, now)
	if err != nil {
		t.Fatal(err)
	}
	if u.ID != id || u.Role != vocab.RoleAdmin || u.Version != 1 || !u.UpdatedAt.Equal(now) || u.MustChangePassword ||
		tok.Kind != TokenSession || tok.ID == "" {
		t.Fatalf("after the upgrade: %+v %+v", u, tok)
	}
}

// TestUpgradeDropsAWSOnlyFieldsOfOtherNetworks starts from the schema
// before assignPublicIp and the Route53 zones were refused on networks
// other than aws, with a local and an aws network holding them and a
// host-name pattern, and upgrades: the local network keeps only its
// pattern, the aws network all, both at their versions.
func TestUpgradeDropsAWSOnlyFieldsOfOtherNetworks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := schemaAt(t, 9)
	now := time.Now().UTC()
	specs := map[string]string{
		"lab": `{"name":"lab","provider":"local","httpsStrategy":"none","assignPublicIp":true,"dns":{"privateZoneId":"Z1","publicZoneId":"Z2","hostnamePattern":"{name}.lab.test"}}`,
		"pub": `{"name":"pub","provider":"aws","httpsStrategy":"none","assignPublicIp":true,"dns":{"privateZoneId":"Z1","publicZoneId":"Z2","hostnamePattern":"{name}.lab.test"},"aws":{"subnetId":"subnet-0a"}}`,
	}
	for name, spec := range specs {
		if _, err := pool.Exec(ctx, "INSERT INTO networks (id, name, spec, version, created_at, updated_at) VALUES ($1, $2, $3, 3, $4, $4)",
			NewID(), name, spec, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"lab": `{"name": "lab", "provider": "local", "httpsStrategy": "none", "dns": {"hostnamePattern": "{name}.lab.test"}}`,
		"pub": `{"name": "pub", "provider": "aws", "httpsStrategy": "none", "assignPublicIp": true, "dns": {"privateZoneId": "Z1", "publicZoneId": "Z2", "hostnamePattern": "{name}.lab.test"}, "aws": {"subnetId": "subnet-0a"}}`,
	} {
		var same bool
		var version int64
		if err := pool.QueryRow(ctx, "SELECT spec = $2::jsonb, version FROM networks WHERE name = $1", name, want).Scan(&same, &version); err != nil {
			t.Fatal(err)
		}
		if !same || version != 3 {
			var got string
			_ = pool.QueryRow(ctx, "SELECT spec::text FROM networks WHERE name = $1", name).Scan(&got)
			t.Errorf("%s after the upgrade: %s at version %d; want %s at 3", name, got, version, want)
		}
	}
}
