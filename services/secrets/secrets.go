package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/rpc"
)

// Deps are what the service is built from; the caller owns and closes them.
type Deps struct {
	// Pool is the PostgreSQL pool holding the secrets table; it may be the
	// inventory's database.
	Pool *pgxpool.Pool
	// NATS carries the endpoints, the inventory lookups and the audit records.
	NATS *nats.Conn
	// KMS wraps every secret's data key; its KeyID is stored with each secret.
	KMS            kms.KMS
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// StreamReplicas is the replication of the streams it declares (1 or 3).
	StreamReplicas int
}

// Service is the running secret broker.
type Service struct {
	log   *slog.Logger
	nc    *nats.Conn
	js    jetstream.JetStream
	kms   kms.KMS
	store store
	rpc   *rpc.Service
	now   func() time.Time
}

// New migrates the broker's schema, declares the streams (the audit stream
// among them) and registers the endpoints; the service takes requests once
// New returns.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Pool == nil || d.NATS == nil || d.KMS == nil || d.Log == nil || d.TracerProvider == nil {
		return nil, errors.New("secrets: Pool, NATS, KMS, Log and TracerProvider are required")
	}
	log := d.Log.With("service", subjects.Secrets)
	if err := Migrate(ctx, d.Pool, log); err != nil {
		return nil, err
	}
	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("secrets: jetstream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, js, d.StreamReplicas); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	s := &Service{
		log:   log,
		nc:    d.NATS,
		js:    js,
		kms:   d.KMS,
		store: store{pool: d.Pool},
		now:   time.Now,
	}
	s.rpc, err = rpc.New(d.NATS, subjects.Secrets, d.Version, "Flotilla secret broker", log, d.TracerProvider, d.Pool.Ping)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		rpc.Handle(s.rpc, subjects.NounSecret, subjects.VerbCreate, s.create),
		rpc.Handle(s.rpc, subjects.NounSecret, subjects.VerbList, s.list),
		rpc.Handle(s.rpc, subjects.NounSecret, subjects.VerbDelete, s.delete),
		rpc.Handle(s.rpc, subjects.NounSecret, subjects.VerbRead, s.read),
	); err != nil {
		_ = s.rpc.Stop()
		return nil, err
	}
	log.InfoContext(ctx, "secret broker ready", "kms_key_id", d.KMS.KeyID())
	return s, nil
}

// Run serves until ctx ends, then stops taking requests; requests in flight
// finish.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return s.rpc.Stop()
}
