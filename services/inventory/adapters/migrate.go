// Package adapters connects the inventory to PostgreSQL: the embedded schema
// migrations (the outbox's among them), the resource store, users and tokens.
package adapters

import (
	"context"
	"embed"
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
	return pgstore.Migrate(ctx, pool, pgstore.Schema{Name: "inventory", Migrations: dir}, log)
}
