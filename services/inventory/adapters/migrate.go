// Package adapters connects the inventory to PostgreSQL: the embedded schema
// migrations (the outbox's among them), the resource store, users and tokens.
package adapters

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate applies every pending migration of the outbox (libs/outbox, its
// own version table) and then of the inventory's schema, in order (goose's
// default version table and lock).
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	if err := outbox.Migrate(ctx, pool, log); err != nil {
		return err
	}
	dir, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	if err := pgstore.Migrate(ctx, pool, pgstore.Schema{Name: "inventory", Migrations: dir}, log); err != nil {
		return err
	}
	// The instance search's trigram index (instance_search_index, migration
	// 8): made at the first start that can have pg_trgm, kept after.
	var indexed bool
	if err := pool.QueryRow(ctx, "SELECT instance_search_index()").Scan(&indexed); err != nil {
		return fmt.Errorf("instance search index: %w", err)
	}
	if !indexed && log != nil {
		log.WarnContext(ctx, "instance search reads the whole instances table: PostgreSQL's pg_trgm extension could not be created "+
			"(it is in PostgreSQL's contrib modules; the database's owner needs the CREATE privilege on the database, or an administrator runs "+
			"CREATE EXTENSION pg_trgm in it); the search's index is made at the next start once it can be")
	}
	return nil
}
