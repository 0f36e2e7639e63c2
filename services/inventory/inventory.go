// Package inventory is the service that owns Flotilla's PostgreSQL schema:
// networks, templates, instances, users and tokens. Every change commits its
// domain event to an outbox in the same transaction; a forwarder publishes the
// outbox to the events stream. Other services reach it only over the bus.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/events"
	"flotilla.dev/flotilla/libs/every"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/app"
	"flotilla.dev/flotilla/services/inventory/ports"
)

// Deps are what the inventory is built from; the caller owns and closes them.
type Deps struct {
	Pool *pgxpool.Pool
	// MigrationPool connects as the role that owns the schema, to migrate
	// it and grant Pool's role the use of its rows; nil means Pool.
	MigrationPool *pgxpool.Pool
	// HealthPool answers the readiness check (its ping; pgstore.HealthPool);
	// nil means Pool.
	HealthPool     *pgxpool.Pool
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// Concurrency is how many requests each of its endpoints serves at
	// once (0: rpc.DefaultConcurrency).
	Concurrency int
	// StreamReplicas is the replication of the streams it declares (1 or 3).
	StreamReplicas int
	// AppOptions are passed to app.New (tests).
	AppOptions []app.Option
	// AgentStaleAfter is how long without a heartbeat before a connected
	// agent is shown as disconnected (0: DefaultAgentStaleAfter).
	AgentStaleAfter time.Duration
}

// DefaultAgentStaleAfter shows an agent whose heartbeats stopped (its
// gateway died without a word) as disconnected within 30 s of its last
// one: it is looked for every quarter of this.
const DefaultAgentStaleAfter = 24 * time.Second

// Service is a running inventory.
type Service struct {
	deps   Deps
	app    *app.App
	fwd    *outbox.Forwarder
	svc    *rpc.Service
	events *events.Router
}

// New migrates the schema, declares the streams and registers the endpoints.
// The service takes requests once New returns; Run forwards the outbox.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Pool == nil || d.NATS == nil || d.Log == nil || d.TracerProvider == nil {
		return nil, errors.New("inventory: Pool, NATS, Log and TracerProvider are required")
	}
	log := d.Log.With("service", "inventory")
	owner := d.MigrationPool
	if owner == nil {
		owner = d.Pool
	}
	if err := adapters.Migrate(ctx, owner, log); err != nil {
		return nil, err
	}
	if err := pgstore.GrantService(ctx, owner, d.Pool); err != nil {
		return nil, err
	}
	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, js, d.StreamReplicas, endpoints.StreamsOf(subjects.Inventory)...); err != nil {
		return nil, err
	}
	fwd := outbox.NewForwarder(d.Pool, js, log, 0)
	bus := rpc.NewClient(d.NATS, subjects.Inventory, 0)
	storeKey := func(ctx context.Context, keyPEM string) (string, error) {
		k, err := rpc.Call(ctx, bus, endpoints.CertKeyCreate, &secretsv1.StoreCertificateKeyRequest{PrivateKeyPem: keyPEM})
		return k.GetId(), err
	}
	a := app.New(d.Pool, log, append([]app.Option{app.WithCommitted(fwd.Wake), app.WithCloudKeys(adapters.CloudKeys{Client: bus}),
		app.WithKeyStore(storeKey), app.WithKeyDrop(func(ctx context.Context, id string) error {
			_, err := rpc.Call(ctx, bus, endpoints.CertKeyDelete, &secretsv1.DeleteCertificateKeyRequest{Id: id})
			return err
		})}, d.AppOptions...)...)
	// The audit trail's projection: a durable consumer from the stream's
	// first record, shared by every inventory process, so each record is
	// written once (and again harmlessly, by id, if redelivered). Records
	// are handled auditInFlight at a time and their rows written together
	// (app.ProjectAudit), so the trail keeps up with the API's writes.
	router, err := events.NewRouter(js, subjects.Inventory, log, d.TracerProvider)
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	err = router.Handle(ctx, subjects.AuditStream, subjects.AuditAll(), jetstream.ConsumerConfig{
		Durable:       subjects.AuditProjectionConsumer,
		Description:   "The inventory writes every audit record into PostgreSQL for GET /api/v1/audit",
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}, projectAudit(a, log), events.InFlight(auditInFlight))
	if err != nil {
		return nil, fmt.Errorf("inventory: audit consumer: %w", err)
	}
	health := d.HealthPool
	if health == nil {
		health = d.Pool
	}
	svc, err := ports.Serve(d.NATS, a, health, log, d.TracerProvider, d.Version, rpc.WithConcurrency(d.Concurrency))
	if err != nil {
		return nil, err
	}
	return &Service{deps: d, app: a, fwd: fwd, svc: svc, events: router}, nil
}

// Readiness is why the service's last readiness check failed ("" when it
// passed) and whether this instance stepped out of its queue groups for it,
// for the cluster's list of managers.
func (s *Service) Readiness() (notReady string, out bool) { return s.svc.Readiness() }

// auditInFlight is how many audit records the projection handles at once.
const auditInFlight = 256

// projectAudit handles one record of the audit stream; one that can never
// be decoded goes to the poison stream.
func projectAudit(a *app.App, log *slog.Logger) events.Handler {
	return func(msg *message.Message) error {
		err := a.ProjectAudit(msg.Context(), app.AuditMessage{ID: msg.UUID, Subject: msg.Metadata.Get(bus.HeaderSubject),
			Header: msg.Metadata.Get, Data: msg.Payload})
		if errors.Is(err, app.ErrMalformedAudit) {
			log.ErrorContext(msg.Context(), "a malformed audit record goes to the poison stream", "message_id", msg.UUID, "error", err)
			return events.Permanent(err)
		}
		return err
	}
}

// App returns the application layer (for the CLI and tests).
func (s *Service) App() *app.App { return s.app }

// Run forwards the outbox, projects the audit stream into PostgreSQL,
// marks agents whose heartbeats stopped as disconnected, writes held
// heartbeats and API tokens' last uses, and purges expired tokens and
// audit records until ctx ends, then stops taking requests.
func (s *Service) Run(ctx context.Context) error {
	defer func() { _ = s.svc.Stop() }()
	// Whichever of the forwarder and the audit projection stops first
	// stops everything.
	eg, ctx := errgroup.WithContext(ctx)
	stale := s.deps.AgentStaleAfter
	if stale <= 0 {
		stale = DefaultAgentStaleAfter
	}
	log := s.deps.Log
	go every.Run(ctx, stale/4, log, "mark stale agents", func(ctx context.Context) error {
		_, err := s.app.MarkStaleAgents(ctx, stale)
		return err
	})
	go every.Run(ctx, time.Hour, log, "purge expired tokens", func(ctx context.Context) error {
		_, err := s.app.PurgeExpiredTokens(ctx)
		return err
	})
	go every.Run(ctx, time.Hour, log, "purge old audit records", func(ctx context.Context) error {
		_, err := s.app.PurgeAudit(ctx)
		return err
	})
	defer flushing(ctx, log, app.TokenUseFlushInterval, "write API tokens' last use", s.app.FlushTokenUse)()
	go every.Run(ctx, time.Hour, log, "sweep heartbeats", func(ctx context.Context) error {
		_, err := s.app.SweepHeartbeats(ctx)
		return err
	})
	// What is held is written before the process ends.
	defer flushing(ctx, log, app.HeartbeatFlushInterval, "write heartbeats", s.app.FlushHeartbeats)()
	eg.Go(func() error { return s.fwd.Run(ctx) })
	eg.Go(func() error { return s.events.Run(ctx) })
	return eg.Wait()
}

// flushing runs flush every interval until ctx ends, and once more then;
// the function it returns waits for that last one.
func flushing(ctx context.Context, log *slog.Logger, interval time.Duration, what string, flush func(context.Context) error) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		every.Run(ctx, interval, log, what, flush)
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := flush(fctx); err != nil {
			log.WarnContext(ctx, what, "error", err)
		}
	}()
	return func() { <-done }
}

// InitialSetup migrates the schema if needed and creates the first admin
// user; it refuses when an admin exists. It needs no running service.
func InitialSetup(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, username, password string) error {
	if err := adapters.Migrate(ctx, pool, log); err != nil {
		return err
	}
	return app.New(pool, log).InitialSetup(ctx, username, password)
}
