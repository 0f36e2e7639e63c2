package pgstore_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Every service runs GrantService after its migrations, and in a cluster
// they start at once: concurrent grants on the same tables, while another
// service's migrations alter them, must all succeed. PostgreSQL answers a
// GRANT racing another GRANT, or an ALTER TABLE, on one catalog row with
// "tuple concurrently updated"; an inventory, then a secret broker, exited
// on it at startup.
func TestGrantServiceConcurrently(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ownerURL := testkit.NewDatabase(t)
	owner, err := pgxpool.New(ctx, ownerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)

	// Roles are cluster-wide: name this one after the test's database.
	u, err := url.Parse(ownerURL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	role := db + "_svc"
	if err := pgstore.EnsureServiceRole(ctx, owner, role, "service-password", db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP OWNED BY "`+role+`"; DROP ROLE "`+role+`"`) })
	for _, stmt := range []string{
		"CREATE TABLE a (id bigserial PRIMARY KEY, v text)",
		"CREATE TABLE b (id bigserial PRIMARY KEY, v text)",
		"CREATE TABLE c (id bigserial PRIMARY KEY, v text)",
	} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	svcURL := *u
	svcURL.User = url.UserPassword(role, "service-password")
	service, err := pgxpool.New(ctx, svcURL.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(service.Close)

	const services, rounds = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, services*rounds+1)
	// Meanwhile another service's migrations alter the tables whose
	// catalog rows the grants change.
	migrations := fstest.MapFS{}
	for i := range 30 {
		migrations[fmt.Sprintf("%05d_add_x%d.sql", i+1, i)] = &fstest.MapFile{
			Data: fmt.Appendf(nil, "-- +goose Up\nALTER TABLE b ADD COLUMN x%d int;\n", i)}
	}
	wg.Go(func() {
		if err := pgstore.Migrate(ctx, owner, pgstore.Schema{Name: "churn", Migrations: migrations, VersionTable: "churn_versions", LockID: 4242}, nil); err != nil {
			errs <- err
		}
	})
	for range services {
		wg.Go(func() {
			for range rounds {
				if err := pgstore.GrantService(ctx, owner, service); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("GrantService: %v", err)
	}

	// The grants took: the service role reads and writes rows, and may not
	// change the schema.
	if _, err := service.Exec(ctx, "INSERT INTO a (v) VALUES ('x')"); err != nil {
		t.Errorf("service role writes a row: %v", err)
	}
	if _, err := service.Exec(ctx, "DROP TABLE b"); err == nil {
		t.Error("service role dropped a table")
	}
}
