package pgstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The services connect to PostgreSQL as a role that may only read and
// write rows; the role that owns the schema runs the migrations and nothing
// else. A compromised service can then neither change the schema, nor
// truncate or drop a table, nor reach another database or role.

// Querier runs statements and queries: a pool, a connection or a
// transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnsureServiceRole makes role a login role with password that is not a
// superuser and may create neither roles nor databases, allowed to connect
// to database; an existing role gets that password and those attributes
// again. It runs as a role that may create roles (the managed PostgreSQL's
// superuser).
func EnsureServiceRole(ctx context.Context, q Querier, role, password, database string) error {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return fmt.Errorf("look up role %s: %w", role, err)
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	// DDL takes no parameters: format() quotes the name and the password.
	var stmt string
	if err := q.QueryRow(ctx, "SELECT format('"+verb+" ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text)",
		role, password).Scan(&stmt); err != nil {
		return fmt.Errorf("role %s: %w", role, err)
	}
	if _, err := q.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("%s role %s: %w", verb, role, err)
	}
	if _, err := q.Exec(ctx, "GRANT CONNECT ON DATABASE "+pgx.Identifier{database}.Sanitize()+" TO "+pgx.Identifier{role}.Sanitize()); err != nil {
		return fmt.Errorf("let role %s connect to %s: %w", role, database, err)
	}
	return nil
}

// schemaLockID is the advisory lock under which the catalog changes: each
// Migrate holds it while it applies migrations, and GrantService while it
// grants. The services of a cluster start at once, and a GRANT racing
// another GRANT, or a migration's ALTER TABLE, on one catalog row fails
// with "tuple concurrently updated".
const schemaLockID = 0x666c6f74696c6c61 // "flotilla"

// GrantService lets the role service connects as read and write the rows
// of every table, and use every sequence, in the public schema, as the
// owner's migrations left them: nothing more (no DDL, no TRUNCATE). Run it
// after every migration, as the owner; concurrent calls, and migrations,
// take turns (schemaLockID). Nothing
// is done when both pools connect as the same role.
func GrantService(ctx context.Context, owner, service *pgxpool.Pool) error {
	role := service.Config().ConnConfig.User
	if role == owner.Config().ConnConfig.User {
		return nil
	}
	r := pgx.Identifier{role}.Sanitize()
	// The lock is tried, not waited for: a wait would hold one of the
	// pool's connections, which a migration in this process may need.
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		var locked bool
		err := pgx.BeginFunc(ctx, owner, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", int64(schemaLockID)).Scan(&locked); err != nil || !locked {
				return err
			}
			for _, stmt := range []string{
				"GRANT USAGE ON SCHEMA public TO " + r,
				"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + r,
				"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO " + r,
			} {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("grant role %s the use of the tables: %w", role, err)
		}
		if locked {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("grant role %s the use of the tables: waiting for a migration or another grant: %w", role, ctx.Err())
		case <-time.After(rand.N(wait) + wait/2):
		}
	}
}

// IsSuperuser reports whether the pool connects as a superuser.
func IsSuperuser(ctx context.Context, q Querier) (bool, error) {
	var super bool
	if err := q.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		return false, fmt.Errorf("look up the current role: %w", err)
	}
	return super, nil
}
