package adapters

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/testkit"
)

// TestInstanceSearchFindsEachFieldThroughItsIndex: a search finds an
// instance by a piece of each searched field alone, ignoring case; text
// spanning two fields finds nothing; and the search can be answered from
// the trigram index rather than by reading every instance.
func TestInstanceSearchFindsEachFieldThroughItsIndex(t *testing.T) {
	t.Parallel()
	pool := migrated(t, 0)
	insert := instancesOf(t, pool)
	// One instance per searched field, a needle in that field only, found
	// by a piece of it in another case.
	addr := func(key string) string { return fmt.Sprintf(`{"addresses": {%q: "Needle-%s"}}`, key, key) }
	type fieldCase struct{ field, id, name, spec, search string }
	cases := []fieldCase{
		{"name", "", "Needle-name", "{}", "NEEDLE-NAM"},
		{"id::text", "5eed5eed-0000-4000-8000-00000000abcd", "by-id", "{}", "0000ABCD"},
		{"spec->>'vmId'", "", "by-vm", `{"vmId": "Needle-vm"}`, "NEEDLE-VM"},
		{"spec->'addresses'->>'privateIp'", "", "by-private-ip", addr("privateIp"), "needle-privateip"},
		{"spec->'addresses'->>'publicIp'", "", "by-public-ip", addr("publicIp"), "needle-publicip"},
		{"spec->'addresses'->>'privateDns'", "", "by-private-dns", addr("privateDns"), "needle-privatedns"},
		{"spec->'addresses'->>'publicDns'", "", "by-public-dns", addr("publicDns"), "needle-publicdns"},
		{"spec->'addresses'->>'hostname'", "", "by-hostname", addr("hostname"), "needle-hostname"},
		{"spec->'addresses'->>'url'", "", "by-url", addr("url"), "needle-url"},
	}
	for _, field := range instanceText {
		if !slices.ContainsFunc(cases, func(c fieldCase) bool { return c.field == field }) {
			t.Fatalf("searched field %s has no case here (and instance_search_text may lack it)", field)
		}
	}
	for _, r := range cases {
		if r.id == "" {
			r.id = uuid.NewString()
		}
		insert(r.id, r.name, r.spec)
	}
	search := func(text string) []string { return searchNames(t, pool, text) }
	for _, r := range cases {
		if got := search(r.search); len(got) != 1 || got[0] != r.name {
			t.Errorf("search %q (%s): %v; want %s", r.search, r.field, got, r.name)
		}
	}
	// The name's end and the id's start are neighbours in the joined
	// text, and in no field.
	if got := search("by-id\n5eed"); len(got) != 0 {
		t.Errorf("text spanning two fields: %v; want nothing", got)
	}

	// With a table this small PostgreSQL would scan it: forbid the scan
	// to see that the index answers the search's condition.
	where, args := InstanceFilter{Text: "needle"}.Query().where(nil)
	plan := explain(t, pool, "SELECT name FROM instances"+where, args)
	if !strings.Contains(plan, "instances_search") {
		t.Errorf("the search does not read the trigram index:\n%s", plan)
	}
}

// TestInstanceSearchWithoutTrigrams: a database whose owner may not create
// the pg_trgm extension still migrates, without the index, saying so, and
// its search finds what it finds with it; once an administrator installs
// the extension, the next start makes the index.
func TestInstanceSearchWithoutTrigrams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testkit.NewDatabase(t)
	admin, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	// A role that may create tables in the schema, not extensions in the
	// database.
	role := "noext_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD 'no-extensions'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			if _, err := admin.Exec(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	if _, err := admin.Exec(ctx, "GRANT USAGE, CREATE ON SCHEMA public TO "+role); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "no-extensions")
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var logs bytes.Buffer
	if err := Migrate(ctx, pool, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("migrating without pg_trgm: %v", err)
	}
	indexed := func() bool {
		t.Helper()
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'instances_search')").Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if indexed() {
		t.Fatal("the trigram index exists, yet the role may not create pg_trgm: this test tests nothing")
	}
	if !strings.Contains(logs.String(), "pg_trgm") {
		t.Errorf("the migration did not say the search has no index; its log:\n%s", logs.String())
	}
	insert := instancesOf(t, pool)
	// Ids of no hex run the searches could meet: a random one holds "db-"
	// one time in sixty.
	insert("0190c3e1-0000-7000-8000-000000000017", "web-17", `{"addresses": {"hostname": "web-17.Fleet.example"}}`)
	insert("0190c3e1-0000-7000-8000-000000000001", "db-1", "{}")
	for text, want := range map[string]string{"WEB-1": "web-17", "fleet.EX": "web-17", "db-": "db-1"} {
		if got := searchNames(t, pool, text); len(got) != 1 || got[0] != want {
			t.Errorf("search %q without the index: %v; want %s", text, got, want)
		}
	}

	// An administrator installs the extension; the next start makes the
	// index, and says nothing of its absence.
	if _, err := admin.Exec(ctx, "CREATE EXTENSION pg_trgm"); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	if err := Migrate(ctx, pool, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if !indexed() {
		t.Error("the start after pg_trgm was installed made no index")
	}
	if strings.Contains(logs.String(), "pg_trgm") {
		t.Errorf("the start with the index still warns:\n%s", logs.String())
	}
	if got := searchNames(t, pool, "WEB-1"); len(got) != 1 || got[0] != "web-17" {
		t.Errorf("search with the index made later: %v", got)
	}
}

// instancesOf makes a network and a template in pool's schema and returns
// a function that inserts an instance of them.
func instancesOf(t *testing.T, pool *pgxpool.Pool) func(id, name, spec string) {
	t.Helper()
	netID, tplID := uuid.NewString(), uuid.NewString()
	for table, id := range map[string]string{"networks": netID, "templates": tplID} {
		if _, err := pool.Exec(t.Context(), "INSERT INTO "+table+" (id, name, spec, version, created_at, updated_at) VALUES ($1, 'x', '{}', 1, now(), now())", id); err != nil {
			t.Fatal(err)
		}
	}
	return func(id, name, spec string) {
		t.Helper()
		if _, err := pool.Exec(t.Context(), `INSERT INTO instances (id, name, template_id, network_id, state, desired_state, spec, version, created_at, updated_at)
			VALUES ($1, $2, $3, $4, 'running', 'running', $5, 1, now(), now())`, id, name, tplID, netID, spec); err != nil {
			t.Fatal(err)
		}
	}
}

// searchNames are the names of the instances a search for text finds, in
// name order.
func searchNames(t *testing.T, pool *pgxpool.Pool, text string) []string {
	t.Helper()
	where, args := InstanceFilter{Text: text}.Query().where(nil)
	rows, err := pool.Query(t.Context(), "SELECT name FROM instances"+where+" ORDER BY name", args...)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}
