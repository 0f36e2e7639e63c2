package allinone

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace/noop"

	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/pgmanaged"
	"flotilla.dev/flotilla/libs/pgstore"
)

// WithDatabase runs f with a pool on the data directory's database, whether
// or not `flotilla up` is running on it: a managed PostgreSQL that is not
// running is started for the duration of f and stopped again.
func WithDatabase(ctx context.Context, dataDir string, o datadir.Overrides, f func(ctx context.Context, pool *pgxpool.Pool) error) error {
	d := datadir.Dir(dataDir)
	s, err := datadir.Prepare(d, o)
	if err != nil {
		return err
	}
	if s.ManagedPostgres {
		pg, err := pgmanaged.Init(ctx, pgmanaged.Options{
			Dir: d.Postgres(), LogFile: d.Path("logs", "postgresql.log"),
			Port: s.Port(datadir.OffsetPostgres), Password: s.PostgresPassword, Database: "flotilla",
		})
		if err != nil {
			return fmt.Errorf("managed PostgreSQL: %w", err)
		}
		if !pg.Running() {
			if err := pg.Start(ctx); err != nil {
				return fmt.Errorf("managed PostgreSQL: %w", err)
			}
			defer func() { _ = pg.Stop(context.Background()) }()
		}
	}
	pool, err := pgstore.Open(ctx, s.DatabaseURL, noop.NewTracerProvider(), 30*time.Second)
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(ctx, pool)
}
