// Package pgstore opens Flotilla's PostgreSQL connection pools: traced with
// OpenTelemetry (statements, never their parameters, which may hold secrets)
// and checked with a ping before they are handed out. Its Tx is a
// transaction that sends its writes in as few round trips as it can.
package pgstore

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"
)

// Open connects a pool of at most conns connections to url (conns < 1:
// pgx's default, the larger of 4 and the CPU count; a pool_max_conns in the
// URL wins) and pings it, retrying for up to wait while the server is
// starting.
func Open(ctx context.Context, url string, tp trace.TracerProvider, wait time.Duration, conns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if conns > 0 && !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = int32(min(conns, math.MaxInt32))
	}
	cfg.ConnConfig.Tracer = otelpgx.NewTracer(otelpgx.WithTracerProvider(tp))
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "flotilla"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = pool.Ping(pctx)
		cancel()
		if err == nil {
			return pool, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			pool.Close()
			return nil, fmt.Errorf("connect to database %s@%s:%d/%s: %w",
				cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// HealthPool opens a pool of one connection with pool's settings, for a
// service's readiness check: a ping through it tells whether PostgreSQL
// answers even while every connection of pool is taken — commits waiting
// for a synchronous standby that was cut off, a burst of slow requests —
// when the service is busy, not down, and a load balancer should not take
// every gateway out for it. The caller closes it.
func HealthPool(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Pool, error) {
	cfg := pool.Config()
	cfg.MaxConns, cfg.MinConns = 1, 0
	cfg.ConnConfig.RuntimeParams["application_name"] = "flotilla-health"
	health, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database health pool: %w", err)
	}
	return health, nil
}
