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
	"google.golang.org/protobuf/proto"

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

// Features are what this release's broker does that an earlier one's may
// not, listed in its managers' heartbeat.
var Features = []string{string(vocab.ManagerFeatureFleetSecretNetworks), string(vocab.ManagerFeatureFleetSecretIfUpdateTime)}

// Deps are what the service is built from; the caller owns and closes them.
type Deps struct {
	// Pool is the PostgreSQL pool holding the secrets table; it may be the
	// inventory's database.
	Pool *pgxpool.Pool
	// MigrationPool connects as the role that owns the schema, to migrate
	// it and grant Pool's role the use of its rows; nil means Pool.
	MigrationPool *pgxpool.Pool
	// HealthPool answers the readiness check (its ping; pgstore.HealthPool);
	// nil means Pool.
	HealthPool *pgxpool.Pool
	// NATS carries the endpoints, the inventory lookups and the audit records.
	NATS *nats.Conn
	// KMS wraps every secret's data key; its KeyID is stored with each
	// secret. A kms.Keyring also unwraps what previous keys wrapped.
	KMS kms.KMS
	// KMSCloudAccountID is the cloud account KMS is reached through
	// (kms.cloudAccountId), if any: the broker refuses to forget it, so
	// the inventory does not delete it.
	KMSCloudAccountID string
	Log               *slog.Logger
	TracerProvider    trace.TracerProvider
	Version           string
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
	// kmsAccount is Deps.KMSCloudAccountID.
	kmsAccount string
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
		kmsAccount: d.KMSCloudAccountID,
		log:        log,
		js:         js,
		kms:        d.KMS,
		store:      store{pool: d.Pool},
		bus:        rpc.NewClient(d.NATS, subjects.Secrets, 0),
		now:        time.Now,
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
	err = s.events.Handle(ctx, subjects.EventsStream, subjects.EntityVerbEvents(subjects.NounTemplate, string(vocab.VerbDeleted)),
		jetstream.ConsumerConfig{
			Durable:       subjects.SecretsTemplateCleanupConsumer,
			Description:   "The secret broker removes deleted templates from its fleet secrets",
			DeliverPolicy: jetstream.DeliverNewPolicy,
		}, s.removeDeletedTemplate)
	if err != nil {
		return nil, fmt.Errorf("secrets: template deletions consumer: %w", err)
	}
	health := d.HealthPool
	if health == nil {
		health = d.Pool
	}
	s.rpc, err = rpc.New(d.NATS, subjects.Secrets, d.Version, "Flotilla secret broker", log, d.TracerProvider, health.Ping, rpc.WithConcurrency(d.Concurrency))
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		rpc.Handle(s.rpc, endpoints.SecretCreate, s.create),
		rpc.Handle(s.rpc, endpoints.SecretList, s.list),
		rpc.Handle(s.rpc, endpoints.SecretDelete, s.delete),
		rpc.Handle(s.rpc, endpoints.SecretRead, s.read),
		rpc.Handle(s.rpc, endpoints.FleetSecretPut, s.setFleetSecret),
		rpc.Handle(s.rpc, endpoints.FleetSecretList, s.listFleetSecrets),
		rpc.Handle(s.rpc, endpoints.FleetSecretGet, s.getFleetSecret),
		rpc.Handle(s.rpc, endpoints.FleetSecretDelete, s.deleteFleetSecret),
		rpc.Handle(s.rpc, endpoints.CloudKeyPut, s.putCloudKey),
		rpc.Handle(s.rpc, endpoints.CloudKeyDelete, s.deleteCloudKey),
		rpc.Handle(s.rpc, endpoints.CloudKeyCheckChange, s.checkCloudAccountChange),
		rpc.Handle(s.rpc, endpoints.CloudKeyRead, s.readCloudKey),
		rpc.Handle(s.rpc, endpoints.CertKeyCreate, s.createCertKey),
		rpc.Handle(s.rpc, endpoints.CertKeyRead, s.readCertKey),
		rpc.Handle(s.rpc, endpoints.CertKeyDelete, s.deleteCertKey),
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

// Readiness is why the service's last readiness check failed ("" when it
// passed) and whether this instance stepped out of its queue groups for it,
// for the cluster's list of managers.
func (s *Service) Readiness() (notReady string, out bool) { return s.rpc.Readiness() }

// Run serves until ctx ends, then stops taking requests; requests in flight
// finish. It also removes what it keeps for every instance and network that
// is deleted.
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
	in := &inventoryv1.Instance{}
	id, err := s.deleted(msg, in)
	if err != nil {
		return err
	}
	return s.removeKept(msg.Context(), "instance", id, in.GetSsl().GetPrivateKeyId(),
		keptBy{"secrets", "instance_id"}, keptBy{"acme_certificates", "instance_id"})
}

// removeNetworkSecrets handles a network.deleted event: the network's ACME
// account key and the uploaded key of its custom certificate go with it
// (and ACME certificates of its instances, though a network is deleted
// only once no instance uses it).
func (s *Service) removeNetworkSecrets(msg *message.Message) error {
	nw := &inventoryv1.Network{}
	id, err := s.deleted(msg, nw)
	if err != nil {
		return err
	}
	return s.removeKept(msg.Context(), "network", id, nw.GetCustomCertificate().GetPrivateKeyId(),
		keptBy{"acme_accounts", "network_id"}, keptBy{"acme_certificates", "network_id"})
}

// keptBy names rows the broker keeps for an entity: a table and the
// column holding the entity's id.
type keptBy struct{ table, column string }

// removeKept deletes what the broker keeps for the deleted entity kind id:
// its rows in each table, and the uploaded certificate key keyID (none
// when ""), and logs what went.
func (s *Service) removeKept(ctx context.Context, kind, id, keyID string, tables ...keptBy) error {
	attrs, total := []any{kind + "_id", id}, int64(0)
	for _, t := range tables {
		tag, err := s.store.pool.Exec(ctx, "DELETE FROM "+t.table+" WHERE "+t.column+" = $1", id)
		if err != nil {
			return fmt.Errorf("remove the %s rows of deleted %s %s: %w", t.table, kind, id, err)
		}
		attrs, total = append(attrs, t.table, tag.RowsAffected()), total+tag.RowsAffected()
	}
	if _, err := uuid.Parse(keyID); err == nil {
		tag, err := s.store.pool.Exec(ctx, `DELETE FROM certificate_keys WHERE id = $1`, keyID)
		if err != nil {
			return fmt.Errorf("remove the certificate key of deleted %s %s: %w", kind, id, err)
		}
		attrs, total = append(attrs, "certificate_keys", tag.RowsAffected()), total+tag.RowsAffected()
	}
	if total > 0 {
		s.log.InfoContext(ctx, "removed what was kept for a deleted "+kind, attrs...)
	}
	return nil
}

// deleted decodes an entity deletion: it returns the entity's id and
// fills entity with the entity as it was (left empty when the event
// carries another type or none). A malformed event is permanent.
func (s *Service) deleted(msg *message.Message, entity proto.Message) (string, error) {
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
		return "", events.Permanent(err)
	}
	if d := ev.GetData(); d != nil && d.UnmarshalTo(entity) != nil {
		proto.Reset(entity)
	}
	return id, nil
}
