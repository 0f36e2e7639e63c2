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

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
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
	bus   *rpc.Client
	now   func() time.Time
	// deleted consumes instance deletions, to remove their secrets.
	deleted jetstream.Consumer
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
		bus:   rpc.NewClient(d.NATS, subjects.Secrets, 0),
		now:   time.Now,
	}
	// Secrets go with their instance. A durable consumer, so a deletion that
	// happens while the broker is down is handled when it comes back.
	s.deleted, err = js.CreateOrUpdateConsumer(ctx, subjects.EventsStream, jetstream.ConsumerConfig{
		Durable:       subjects.SecretsCleanupConsumer,
		Description:   "The secret broker removes the secrets of deleted instances",
		FilterSubject: subjects.EntityVerbEvents(subjects.NounInstance, string(vocab.VerbDeleted)),
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
	})
	if err != nil {
		return nil, fmt.Errorf("secrets: instance deletions consumer: %w", err)
	}
	s.rpc, err = rpc.New(d.NATS, subjects.Secrets, d.Version, "Flotilla secret broker", log, d.TracerProvider, d.Pool.Ping)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		rpc.Handle(s.rpc, endpoints.SecretCreate, s.create),
		rpc.Handle(s.rpc, endpoints.SecretList, s.list),
		rpc.Handle(s.rpc, endpoints.SecretDelete, s.delete),
		rpc.Handle(s.rpc, endpoints.SecretRead, s.read),
	); err != nil {
		_ = s.rpc.Stop()
		return nil, err
	}
	log.InfoContext(ctx, "secret broker ready", "kms_key_id", d.KMS.KeyID())
	return s, nil
}

// Run serves until ctx ends, then stops taking requests; requests in flight
// finish. It also removes the secrets of every instance that is deleted.
func (s *Service) Run(ctx context.Context) error {
	cc, err := s.deleted.Consume(func(m jetstream.Msg) {
		ev, err := bus.DecodeEvent(m.Data())
		if err != nil || ev.GetEntityId() == "" {
			s.log.ErrorContext(ctx, "dropping a malformed instance deletion", "subject", m.Subject(), "error", err)
			_ = m.Term()
			return
		}
		n, err := s.store.deleteInstance(ctx, ev.GetEntityId())
		if err != nil {
			s.log.WarnContext(ctx, "remove the secrets of a deleted instance; will retry", "instance_id", ev.GetEntityId(), "error", err)
			_ = m.NakWithDelay(5 * time.Second)
			return
		}
		if n > 0 {
			s.log.InfoContext(ctx, "removed the secrets of a deleted instance", "instance_id", ev.GetEntityId(), "secrets", n)
		}
		_ = m.Ack()
	})
	if err != nil {
		return fmt.Errorf("secrets: consume instance deletions: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return s.rpc.Stop()
}
