package adapters

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAListPageReadsItsKeysIndexInOrder: every form of a list page (oldest
// first or by name; from the start, after a page token, skipped into)
// reads the rows in its order from an index, and a skip walks the index
// alone: no page sorts the table, which at 100 000 instances took a
// quarter of a second a page.
func TestAListPageReadsItsKeysIndexInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t, 0)
	insert := instancesOf(t, pool)
	for i := range 20 {
		insert(uuid.NewString(), fmt.Sprintf("i-%02d", i), "{}")
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE instances"); err != nil {
		t.Fatal(err)
	}
	table := Table{Name: "instances"}
	byID, byName := tokenAfter(uuid.NewString(), ""), tokenAfter("i-05", ListQuery{ByName: true}.digest())
	for _, c := range []struct {
		name  string
		q     ListQuery
		token string
	}{
		{"oldest first", ListQuery{}, ""},
		{"oldest first, after a token", ListQuery{}, byID},
		{"oldest first, skipped into", ListQuery{Skip: 7}, ""},
		{"by name", ListQuery{ByName: true}, ""},
		{"by name, after a token", ListQuery{ByName: true}, byName},
		{"by name, skipped into after a token", ListQuery{ByName: true, Skip: 3}, byName},
	} {
		sql, args, err := table.listSQL(c.q, c.token, 6)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		plan := explain(t, pool, sql, args)
		if strings.Contains(plan, "Sort") {
			t.Errorf("%s sorts the table:\n%s", c.name, plan)
		}
		if c.q.Skip > 0 && !strings.Contains(plan, "Index Only Scan") {
			t.Errorf("%s reads the rows it skips:\n%s", c.name, plan)
		}
	}
}

// explain is the plan of sql with sorts and table scans made as dear as
// PostgreSQL can (a table this small it would otherwise scan and sort,
// whatever the indexes).
func explain(t *testing.T, pool *pgxpool.Pool, sql string, args []any) string {
	t.Helper()
	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, "EXPLAIN "+sql, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", sql, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "\n")
}

// TestAListIsPlannedForItsValues: a list's query and count are planned for
// their values each time, not by a statement prepared once whose cached
// generic plan would suit one search text and not another.
func TestAListIsPlannedForItsValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t, 1) // one connection, so the statements are looked for where they ran
	instancesOf(t, pool)("5eed5eed-0000-4000-8000-000000000001", "web-1", "{}")
	table := Table{Name: "instances"}
	for _, text := range []string{"web", "web", "web", "web", "web", "web", "web-1"} {
		q := InstanceFilter{Text: text, ByName: true}.Query()
		if _, _, err := table.List(ctx, pool, q, "", 10, 1<<20, func() proto.Message { return &inventoryv1.Instance{} }); err != nil {
			t.Fatal(err)
		}
		if _, err := table.Count(ctx, pool, q); err != nil {
			t.Fatal(err)
		}
	}
	var prepared []string
	rows, err := pool.Query(ctx, "SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%FROM instances%'", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		prepared = append(prepared, s)
	}
	rows.Close()
	if len(prepared) > 0 {
		t.Errorf("list statements prepared once and kept, their plans cached:\n%s", strings.Join(prepared, "\n"))
	}
}

// migrated is a pool (of at most conns connections; 0: pgxpool's default)
// on a new database the migrations made.
func migrated(t *testing.T, conns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	if conns > 0 {
		cfg.MaxConns = conns
	}
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := Migrate(t.Context(), pool, nil); err != nil {
		t.Fatal(err)
	}
	return pool
}
