package secrets_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// env is a secret broker and a real inventory on a real NATS and PostgreSQL,
// with two instances, a and b.
type env struct {
	t     *testing.T
	dbURL string
	pool  *pgxpool.Pool
	bus   *testkit.Bus
	js    jetstream.JetStream
	// clients call the broker as the gateway and the agent gateway do.
	mu      sync.Mutex
	clients map[string]*rpc.Client
	kms     *kms.Local
	// keyFile is the master key every broker of the test shares.
	keyFile string
	// broker is the secret broker newEnv started.
	broker *stack.Stack
	logs   *testkit.Buffer
	spans  *tracetest.SpanRecorder
	a, b   string // instance ids
	// template is the template a and b are made from; network their
	// network.
	template, network string
	log               *slog.Logger
	tp                trace.TracerProvider
	// inventory is the real inventory's application layer.
	inventory interface {
		CreateNetwork(ctx context.Context, actor vocab.Actor, n *inventoryv1.Network) (*inventoryv1.Network, error)
		UpdateNetwork(ctx context.Context, actor vocab.Actor, n *inventoryv1.Network, mask []string) (*inventoryv1.Network, error)
		DeleteNetwork(ctx context.Context, actor vocab.Actor, id string, version int64) error
		UpdateInstance(ctx context.Context, actor vocab.Actor, in *inventoryv1.Instance, mask []string) (*inventoryv1.Instance, error)
		CreateInstance(ctx context.Context, actor vocab.Actor, in *inventoryv1.Instance) (*inventoryv1.Instance, error)
		CreateTemplate(ctx context.Context, actor vocab.Actor, t *inventoryv1.Template) (*inventoryv1.Template, error)
		DeleteTemplate(ctx context.Context, actor vocab.Actor, id string, version int64) error
		DeleteInstance(ctx context.Context, actor vocab.Actor, id string, version int64, force bool) (*inventoryv1.Instance, error)
	}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, dbURL: testkit.NewDatabase(t), logs: &testkit.Buffer{}, spans: tracetest.NewSpanRecorder()}
	var err error
	if e.pool, err = pgxpool.New(ctx, e.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	e.bus = testkit.SecureNATS(t)
	e.clients = map[string]*rpc.Client{}
	// The test inspects (and, to break it, deletes) streams as an
	// administrator of the bus would.
	if e.js, err = jetstream.New(e.bus.Unrestricted(t)); err != nil {
		t.Fatal(err)
	}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	e.keyFile = filepath.Join(t.TempDir(), "kms", "master.key")
	if e.kms, err = kms.OpenLocal(e.keyFile); err != nil {
		t.Fatal(err)
	}
	// Two stacks, so that a test can stop the broker as one manager's
	// would be stopped in a rolling restart, and the inventory go on.
	st := stacktest.Start(t, e.config(subjects.Inventory))
	e.broker = stacktest.Start(t, e.config(subjects.Secrets))

	app := st.Inventory.App()
	e.inventory = app
	network, err := app.CreateNetwork(ctx, "user:test", &inventoryv1.Network{Name: "net", Provider: "local", HttpsStrategy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := app.CreateTemplate(ctx, "user:test", &inventoryv1.Template{Name: "tpl", Provider: "local", DataDiskGb: 10})
	if err != nil {
		t.Fatal(err)
	}
	e.template, e.network = tpl.GetId(), network.GetId()
	for _, in := range []struct {
		name string
		id   *string
	}{{"a", &e.a}, {"b", &e.b}} {
		got, err := app.CreateInstance(ctx, "user:test", &inventoryv1.Instance{Name: in.name, Kind: "design", TemplateId: tpl.GetId(), NetworkId: network.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		*in.id = got.GetId()
	}
	return e
}

// config is a stack of services on e's NATS, database and master key.
func (e *env) config(services ...string) stack.Config {
	return stacktest.OnBus(stack.Config{Services: services, Version: "0.0.1", Log: e.log, TracerProvider: e.tp,
		DatabaseURL: e.dbURL, KMSKeyFile: e.keyFile}, e.bus)
}

// startBroker starts another secret broker: they share the load as
// managers of a cluster would.
func (e *env) startBroker() {
	e.t.Helper()
	stacktest.Start(e.t, e.config(subjects.Secrets))
}

// call sends req to a secrets endpoint as its first declared caller (the
// gateway, or the agent gateway for reads) would, returning the broker's
// error as an *apierr.Error.
func call[Req, Resp proto.Message](e *env, ep endpoints.Endpoint[Req, Resp], req Req) (Resp, error) {
	e.t.Helper()
	caller := ep.Info().Callers[0]
	actor := vocab.User("test")
	if r, ok := any(req).(*secretsv1.ReadSecretRequest); ok {
		actor = vocab.Agent(r.GetRequesterInstanceId()) // the agent gateway reads for an agent
	}
	e.mu.Lock()
	c, ok := e.clients[caller]
	if !ok {
		c = rpc.NewClient(e.bus.Conn(e.t, caller), caller, 10*time.Second)
		e.clients[caller] = c
	}
	e.mu.Unlock()
	return rpc.Call(context.Background(), c, ep, req, rpc.As(actor))
}

func (e *env) create(instanceID, name, value string) (*secretsv1.Secret, error) {
	return call(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: instanceID, Name: name, Value: value})
}

func (e *env) mustCreate(instanceID, name, value string) *secretsv1.Secret {
	e.t.Helper()
	s, err := e.create(instanceID, name, value)
	if err != nil {
		e.t.Fatalf("create %s/%s: %v", instanceID, name, err)
	}
	return s
}

func (e *env) list(instanceID string) ([]*secretsv1.Secret, error) {
	resp, err := call(e, endpoints.SecretList, &secretsv1.ListSecretsRequest{InstanceId: instanceID})
	return resp.GetSecrets(), err
}

// setFleet is the gateway setting the fleet secret name for templates.
func (e *env) setFleet(name, value string, templates ...string) (*secretsv1.FleetSecret, error) {
	return call(e, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: name, Value: value, TemplateIds: templates})
}

// read is the agent gateway reading name for the agent of requester.
func (e *env) read(requester, name string) (*secretsv1.ReadSecretResponse, error) {
	return call(e, endpoints.SecretRead, &secretsv1.ReadSecretRequest{RequesterInstanceId: requester, Name: name})
}

// streamMessages returns every message stored on a stream, in order.
func (e *env) streamMessages(stream string) []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatalf("stream %s message %d: %v", stream, seq, err)
		}
		out = append(out, m)
	}
	return out
}

// auditRecords returns the secret-read audit records on the audit stream.
func (e *env) auditRecords() []*secretsv1.SecretAccess {
	e.t.Helper()
	var out []*secretsv1.SecretAccess
	for _, m := range e.streamMessages(subjects.AuditStream) {
		a := &secretsv1.SecretAccess{}
		if err := proto.Unmarshal(m.Data, a); err != nil {
			e.t.Fatalf("audit record %d: %v", m.Sequence, err)
		}
		if m.Subject != subjects.Audit(subjects.NounSecret, a.GetRequesterInstanceId(), subjects.VerbRead) {
			e.t.Errorf("audit record %d on subject %s for requester %s", m.Sequence, m.Subject, a.GetRequesterInstanceId())
		}
		for h, want := range map[string]string{bus.HeaderActor: "agent:" + a.GetRequesterInstanceId(), bus.HeaderType: "secret.read"} {
			if got := m.Header.Get(h); got != want {
				e.t.Errorf("audit record %d header %s = %q, want %q", m.Sequence, h, got, want)
			}
		}
		for _, h := range []string{bus.HeaderMsgID, bus.HeaderTime, bus.HeaderSchemaVersion, "traceparent"} {
			if m.Header.Get(h) == "" {
				e.t.Errorf("audit record %d has no %s header", m.Sequence, h)
			}
		}
		out = append(out, a)
	}
	return out
}
