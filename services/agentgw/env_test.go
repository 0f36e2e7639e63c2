package agentgw_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/agentgw"
	"flotilla.dev/flotilla/services/ca"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/secrets"
)

// env is a real NATS server with the Flotilla streams, the real CA and an
// agent gateway on 127.0.0.1, with a recorder of what the gateway sends to
// the inventory's lifecycle.observe.
type env struct {
	t        *testing.T
	ns       *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	ca       *ca.Service
	addr     string
	roots    *x509.CertPool
	observed *recorder
}

type envOptions struct {
	agentCertTTL time.Duration
	// services starts the real inventory (on a fresh PostgreSQL database)
	// and secrets services; the inventory then answers lifecycle.observe
	// and nothing is recorded.
	services bool
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx := t.Context()
	log := testLog(t)
	e := &env{t: t, ns: testkit.NATS(t)}
	e.nc = testkit.NATSConn(t, e.ns)
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, e.js, 1); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.ca, err = ca.New(ctx, ca.Deps{
		NATS: testkit.NATSConn(t, e.ns), Log: log, TracerProvider: noop.NewTracerProvider(),
		CertFile: filepath.Join(dir, "ca.crt"), KeyFile: filepath.Join(dir, "ca.key"),
		AgentCertTTL: o.agentCertTTL,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.roots = e.ca.Authority().Pool()
	if o.services {
		e.startServices(log)
	} else {
		e.observed = recordObserve(t, testkit.NATSConn(t, e.ns))
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	gw, err := agentgw.New(ctx, agentgw.Deps{
		NATS: testkit.NATSConn(t, e.ns), Log: log, TracerProvider: noop.NewTracerProvider(), Listener: l,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agentgw.Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("agentgw.Run did not return")
		}
	})
	return e
}

// startServices runs the real inventory and secrets services.
func (e *env) startServices(log *slog.Logger) {
	t := e.t
	t.Helper()
	ctx := t.Context()
	pool, err := pgxpool.New(ctx, testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	inv, err := inventory.New(ctx, inventory.Deps{
		Pool: pool, NATS: testkit.NATSConn(t, e.ns), Log: log, TracerProvider: noop.NewTracerProvider(), StreamReplicas: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	keyDir := filepath.Join(t.TempDir(), "kms")
	if err := os.Mkdir(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := kms.OpenLocal(filepath.Join(keyDir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	sec, err := secrets.New(ctx, secrets.Deps{
		Pool: pool, NATS: testkit.NATSConn(t, e.ns), KMS: key, Log: log, TracerProvider: noop.NewTracerProvider(), StreamReplicas: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []func(context.Context) error{inv.Run, sec.Run} {
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = run(runCtx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
}

// testLog logs to t until the test ends, then discards.
func testLog(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered first, so it runs last
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// recorder keeps the agent events the gateway sends to lifecycle.observe.
type recorder struct {
	mu     sync.Mutex
	events []*agentv1.AgentEvent
}

// recordObserve answers lifecycle.observe with an empty reply and records
// each event. It observes the gateway's output; the inventory is not
// involved in these tests.
func recordObserve(t *testing.T, nc *nats.Conn) *recorder {
	t.Helper()
	r := &recorder{}
	sub, err := nc.Subscribe(subjects.Endpoint(subjects.Inventory, subjects.NounLifecycle, subjects.VerbObserve), func(m *nats.Msg) {
		ev := &agentv1.AgentEvent{}
		if err := proto.Unmarshal(m.Data, ev); err != nil {
			t.Errorf("lifecycle.observe got a malformed AgentEvent: %v", err)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
		_ = m.Respond(nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// all returns the events recorded so far.
func (r *recorder) all() []*agentv1.AgentEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*agentv1.AgentEvent(nil), r.events...)
}

// waitFor waits until an event satisfies ok and returns it.
func (r *recorder) waitFor(t *testing.T, what string, ok func(*agentv1.AgentEvent) bool) *agentv1.AgentEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range r.all() {
			if ok(ev) {
				return ev
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s event observed; got %v", what, r.all())
	return nil
}

// joinToken asks the CA for a join token for instance id.
func (e *env) joinToken(id string) string {
	e.t.Helper()
	var tok cav1.JoinToken
	err := natsx.Request(e.t.Context(), e.nc, subjects.Endpoint(subjects.CA, subjects.NounJoinToken, subjects.VerbCreate),
		&cav1.CreateJoinTokenRequest{InstanceId: id}, &tok)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok.GetToken()
}

// client dials the gateway presenting cert (nil: none).
func (e *env) client(cert *tls.Certificate) agentv1.AgentGatewayClient {
	e.t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: e.roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return agentv1.NewAgentGatewayClient(conn)
}

// join makes a key, joins as instance id with a fresh token and returns
// the certificate.
func (e *env) join(id string) *tls.Certificate {
	e.t.Helper()
	key, csr := newCSR(e.t)
	resp, err := e.client(nil).Join(e.t.Context(), &agentv1.JoinRequest{Token: e.joinToken(id), CsrDer: csr, AgentVersion: "test"})
	if err != nil {
		e.t.Fatalf("join as %s: %v", id, err)
	}
	if resp.GetInstanceId() != id {
		e.t.Fatalf("joined as %q, want %q", resp.GetInstanceId(), id)
	}
	return tlsCert(e.t, []byte(resp.GetCertificatePem()), key)
}

// connect joins as id and opens a stream with hello.
func (e *env) connect(id string) agentv1.AgentGateway_ConnectClient {
	e.t.Helper()
	return e.connectAs(e.join(id), &agentv1.Hello{AgentVersion: "test", VmId: "vm-" + id})
}

func (e *env) connectAs(cert *tls.Certificate, hello *agentv1.Hello) agentv1.AgentGateway_ConnectClient {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.t.Context())
	e.t.Cleanup(cancel)
	stream, err := e.client(cert).Connect(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		e.t.Fatal(err)
	}
	return stream
}

func newCSR(t *testing.T) (crypto.Signer, []byte) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, "test-agent")
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

func tlsCert(t *testing.T, certPEM []byte, key crypto.Signer) *tls.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificatesPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}
