package pgstore

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Schema names one service's migrations. Each service that owns tables has
// its own version table and advisory lock, so services sharing a database
// migrate independently and managers starting at once are serialised.
type Schema struct {
	// Name is used in errors, e.g. "inventory".
	Name string
	// Migrations holds the ordered goose SQL files at its root.
	Migrations fs.FS
	// VersionTable is goose's bookkeeping table; empty means goose's default.
	VersionTable string
	// LockID is the PostgreSQL advisory lock id; 0 means goose's default.
	LockID int64
}

// Migrate applies every pending migration of the schema, in order.
// Migrations are embedded in the binaries and never edited once released.
// It holds the schema lock (schemaLockID) throughout, on a connection of
// its own, so no GrantService runs while the catalog changes.
func Migrate(ctx context.Context, pool *pgxpool.Pool, s Schema, log *slog.Logger) error {
	held, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("%s migration: connect: %w", s.Name, err)
	}
	defer held.Close(context.WithoutCancel(ctx)) // ends the session, and with it the lock
	if _, err := held.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(schemaLockID)); err != nil {
		return fmt.Errorf("%s migration: take the schema lock: %w", s.Name, err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	var lockOpts []lock.SessionLockerOption
	if s.LockID != 0 {
		lockOpts = append(lockOpts, lock.WithLockID(s.LockID))
	}
	locker, err := lock.NewPostgresSessionLocker(lockOpts...)
	if err != nil {
		return fmt.Errorf("%s migration lock: %w", s.Name, err)
	}
	opts := []goose.ProviderOption{goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true)}
	if s.VersionTable != "" {
		opts = append(opts, goose.WithTableName(s.VersionTable))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, s.Migrations, opts...)
	if err != nil {
		return fmt.Errorf("load %s migrations: %w", s.Name, err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply %s migrations: %w", s.Name, err)
	}
	for _, r := range results {
		if log != nil {
			log.InfoContext(ctx, "applied migration", "schema", s.Name, "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
		}
	}
	return nil
}
