package secrets

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// SchemaVersionTable is the table in which goose records the secret broker's
// applied migrations. It is the broker's own, apart from the inventory's
// goose_db_version, so both can migrate the same database independently.
const SchemaVersionTable = "secrets_schema_version"

// migrationLockID is the PostgreSQL advisory lock that serialises managers
// migrating the secret broker's schema at once; it differs from goose's
// default (the inventory's) so the two services do not wait for each other.
const migrationLockID int64 = 0x666c74_736563 // "flt" "sec"

// Migrate applies every pending migration of the secret broker's schema, in
// order. Migrations are embedded in the binary and never edited once
// released; New calls it.
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	dir, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	return pgstore.Migrate(ctx, pool, pgstore.Schema{Name: "secrets", Migrations: dir,
		VersionTable: SchemaVersionTable, LockID: migrationLockID}, log)
}
