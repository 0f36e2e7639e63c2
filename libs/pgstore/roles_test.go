package pgstore_test

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Every service runs GrantService after its migrations, and in a cluster
// they start at once: concurrent grants on the same tables must all
// succeed. PostgreSQL answers two GRANTs racing on one catalog row with
// "tuple concurrently updated"; an inventory exited on it at startup.
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
	errs := make(chan error, services*rounds)
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
