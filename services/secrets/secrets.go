package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/anypb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/events"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/rpc"
)

// Deps are what the service is built from; the caller owns and closes them.
type Deps struct {
	// Pool is the PostgreSQL pool holding the secrets table; it may be the
	// inventory's database.
	Pool *pgxpool.Pool
	// MigrationPool connects as the role that owns the schema, to migrate
	// it and grant Pool's role the use of its rows; nil means Pool.
	MigrationPool *pgxpool.Pool
	// NATS carries the endpoints, the inventory lookups and the audit records.
	NATS *nats.Conn
	// KMS wraps every secret's data key; its KeyID is stored with each
	// secret. A kms.Keyring also unwraps what previous keys wrapped.
	KMS            kms.KMS
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// Concurrency is how many requests each of its endpoints serves at
	// once (0: rpc.DefaultConcurrency).
	Concurrency int
	// StreamReplicas is the replication of the streams it declares (1 or 3).
	StreamReplicas int
}

// Service is the running secret broker.
type Service struct {
	log   *slog.Logger
	js    jetstream.JetStream
	kms   kms.KMS
	store store
	rpc   *rpc.Service
	bus   *rpc.Client
	now   func() time.Time
	// events removes the secrets of deleted instances.
	events *events.Router
}

// New migrates the broker's schema, declares the streams (the audit stream
// among them) and registers the endpoints; the service takes requests once
// New returns.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Pool == nil || d.NATS == nil || d.KMS == nil || d.Log == nil || d.TracerProvider == nil {
		return nil, errors.New("secrets: Pool, NATS, KMS, Log and TracerProvider are required")
	}
	log := d.Log.With("service", subjects.Secrets)
	owner := d.MigrationPool
	if owner == nil {
		owner = d.Pool
	}
	if err := Migrate(ctx, owner, log); err != nil {
		return nil, err
	}
	if err := pgstore.GrantService(ctx, owner, d.Pool); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("secrets: jetstream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, js, d.StreamReplicas, endpoints.StreamsOf(subjects.Secrets)...); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	s := &Service{
		log:   log,
		js:    js,
		kms:   d.KMS,
		store: store{pool: d.Pool},
		bus:   rpc.NewClient(d.NATS, subjects.Secrets, 0),
		now:   time.Now,
	}
	// Secrets go with their instance. A durable consumer, so a deletion that
	// happens while the broker is down is handled when it comes back.
	if s.events, err = events.NewRouter(js, subjects.Secrets, log, d.TracerProvider); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	err = s.events.Handle(ctx, subjects.EventsStream, subjects.EntityVerbEvents(subjects.NounInstance, string(vocab.VerbDeleted)),
		jetstream.ConsumerConfig{
			Durable:       subjects.SecretsCleanupConsumer,
			Description:   "The secret broker removes the secrets of deleted instances",
			DeliverPolicy: jetstream.DeliverNewPolicy,
		}, s.removeInstanceSecrets)
	if err != nil {
		return nil, fmt.Errorf("secrets: instance deletions consumer: %w", err)
	}
	err = s.events.Handle(ctx, subjects.EventsStream, subjects.EntityVerbEvents(subjects.NounNetwork, string(vocab.VerbDeleted)),
		jetstream.ConsumerConfig{
			Durable:       subjects.SecretsNetworkCleanupConsumer,
			Description:   "The secret broker removes the keys of deleted networks",
			DeliverPolicy: jetstream.DeliverNewPolicy,
		}, s.removeNetworkSecrets)
	if err != nil {
		return nil, fmt.Errorf("secrets: network deletions consumer: %w", err)
	}
	s.rpc, err = rpc.New(d.NATS, subjects.Secrets, d.Version, "Flotilla secret broker", log, d.TracerProvider, d.Pool.Ping, rpc.WithConcurrency(d.Concurrency))
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		rpc.Handle(s.rpc, endpoints.SecretCreate, s.create),
		rpc.Handle(s.rpc, endpoints.SecretList, s.list),
		rpc.Handle(s.rpc, endpoints.SecretDelete, s.delete),
		rpc.Handle(s.rpc, endpoints.SecretRead, s.read),
		rpc.Handle(s.rpc, endpoints.CloudKeyPut, s.putCloudKey),
		rpc.Handle(s.rpc, endpoints.CloudKeyDelete, s.deleteCloudKey),
		rpc.Handle(s.rpc, endpoints.CloudKeyRead, s.readCloudKey),
		rpc.Handle(s.rpc, endpoints.CertKeyCreate, s.createCertKey),
		rpc.Handle(s.rpc, endpoints.CertKeyRead, s.readCertKey),
		rpc.Handle(s.rpc, endpoints.ACMEAccountKeyGet, s.getACMEAccountKey),
		rpc.Handle(s.rpc, endpoints.ACMECertKeyPut, s.putACMECertificate),
		rpc.Handle(s.rpc, endpoints.ACMECertKeyRead, s.readACMECertificate),
	); err != nil {
		_ = s.rpc.Stop()
		return nil, err
	}
	attrs := []any{"kms_key_id", d.KMS.KeyID()}
	if r, ok := d.KMS.(interface{ KeyIDs() []string }); ok && len(r.KeyIDs()) > 1 {
		// Previous keys, still read until `flotilla admin rewrap-secrets`.
		attrs = append(attrs, "kms_previous_key_ids", r.KeyIDs()[1:])
	}
	log.InfoContext(ctx, "secret broker ready", attrs...)
	return s, nil
}

// Run serves until ctx ends, then stops taking requests; requests in flight
// finish. It also removes the secrets of every instance that is deleted.
func (s *Service) Run(ctx context.Context) error {
	err := s.events.Run(ctx)
	return errors.Join(err, s.rpc.Stop())
}

// removeInstanceSecrets handles an instance.deleted event: what the broker
// keeps for the instance goes with it: its secrets, the ACME certificate
// kept for it and the uploaded key of its own custom certificate (named in
// the event, which carries the instance as it was). A malformed event can
// never be handled and goes to the poison stream; a database failure is
// retried.
func (s *Service) removeInstanceSecrets(msg *message.Message) error {
	ctx := msg.Context()
	id, data, err := s.deleted(msg)
	if err != nil {
		return err
	}
	in := &inventoryv1.Instance{}
	if data != nil && data.UnmarshalTo(in) != nil {
		in = &inventoryv1.Instance{}
	}
	n, err := s.store.deleteInstance(ctx, id)
	if err != nil {
		return fmt.Errorf("remove the secrets of deleted instance %s: %w", id, err)
	}
	certs, err := s.deleteRows(ctx, `DELETE FROM acme_certificates WHERE instance_id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove the ACME certificate of deleted instance %s: %w", id, err)
	}
	keys, err := s.deleteCertKey(ctx, in.GetSsl().GetPrivateKeyId())
	if err != nil {
		return fmt.Errorf("remove the certificate key of deleted instance %s: %w", id, err)
	}
	if n+certs+keys > 0 {
		s.log.InfoContext(ctx, "removed what was kept for a deleted instance", "instance_id", id, "secrets", n,
			"acme_certificates", certs, "certificate_keys", keys)
	}
	return nil
}

// removeNetworkSecrets handles a network.deleted event: the network's ACME
// account key and the uploaded key of its custom certificate go with it.
func (s *Service) removeNetworkSecrets(msg *message.Message) error {
	ctx := msg.Context()
	id, data, err := s.deleted(msg)
	if err != nil {
		return err
	}
	nw := &inventoryv1.Network{}
	if data != nil && data.UnmarshalTo(nw) != nil {
		nw = &inventoryv1.Network{}
	}
	accounts, err := s.deleteRows(ctx, `DELETE FROM acme_accounts WHERE network_id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove the ACME account of deleted network %s: %w", id, err)
	}
	// A network is deleted once no instance uses it: none should be left.
	certs, err := s.deleteRows(ctx, `DELETE FROM acme_certificates WHERE network_id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove the ACME certificates of deleted network %s: %w", id, err)
	}
	keys, err := s.deleteCertKey(ctx, nw.GetCustomCertificate().GetPrivateKeyId())
	if err != nil {
		return fmt.Errorf("remove the certificate key of deleted network %s: %w", id, err)
	}
	if accounts+certs+keys > 0 {
		s.log.InfoContext(ctx, "removed what was kept for a deleted network", "network_id", id, "acme_accounts", accounts,
			"acme_certificates", certs, "certificate_keys", keys)
	}
	return nil
}

// deleted decodes an entity deletion: the entity's id and the entity as it
// was (nil when the event carries none). A malformed event is permanent.
func (s *Service) deleted(msg *message.Message) (string, *anypb.Any, error) {
	ev, err := bus.DecodeEvent(msg.Payload)
	if err == nil && ev.GetEntityId() == "" {
		err = errors.New("the event names no entity")
	}
	var id string
	if err == nil {
		id, err = parseID("entityId", "an id", ev.GetEntityId())
	}
	if err != nil {
		s.log.ErrorContext(msg.Context(), "a malformed deletion goes to the poison stream", "message_id", msg.UUID, "error", err)
		return "", nil, events.Permanent(err)
	}
	return id, ev.GetData(), nil
}

// deleteRows runs a DELETE of one id and reports how many rows went.
func (s *Service) deleteRows(ctx context.Context, query, id string) (int64, error) {
	tag, err := s.store.pool.Exec(ctx, query, id)
	return tag.RowsAffected(), err
}

// deleteCertKey deletes an uploaded certificate key by its id ("" or not
// an id: none).
func (s *Service) deleteCertKey(ctx context.Context, id string) (int64, error) {
	if _, err := uuid.Parse(id); err != nil {
		return 0, nil
	}
	return s.deleteRows(ctx, `DELETE FROM certificate_keys WHERE id = $1`, id)
}
