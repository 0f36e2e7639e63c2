package agentgw_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/agentgw"
	"flotilla.dev/flotilla/services/ca"
)

// env is a real NATS server with the Flotilla streams, the real CA and an
// agent gateway on 127.0.0.1, with a recorder of what the gateway sends to
// the inventory's lifecycle.observe.
type env struct {
	t        testing.TB
	nc       *nats.Conn
	js       jetstream.JetStream
	ca       *ca.Service
	gw       *agentgw.Service
	addr     string
	roots    *x509.CertPool
	observed *testkit.Inventory
	// log has what the services logged.
	log   *testWriter
	bus   *testkit.Bus
	stack *stack.Stack
	// provisioner calls as the provisioner (join tokens, agent commands),
	// operator as the gateway does for an operator.
	provisioner, operator *rpc.Client
}

type envOptions struct {
	agentCertTTL time.Duration
	// retentionInterval is how often log retention is enforced (0: the default).
	retentionInterval time.Duration
	// services starts the real inventory (on a fresh PostgreSQL database)
	// and secrets services; the inventory then answers lifecycle.observe
	// and nothing is recorded.
	services bool
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, bus: testkit.SecureNATS(t)}
	// The test reads the streams as an operator's tools would, sends what
	// the provisioner sends, and calls what the gateway calls for an
	// operator, each with that identity's credentials.
	e.nc = e.bus.Conn(t, busauth.Observer)
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	e.log = newTestWriter(t)
	cfg := stacktest.OnBus(stack.Config{Services: []string{subjects.CA, subjects.AgentGW}, Log: e.log.logger(), AgentCertTTL: o.agentCertTTL,
		LogRetentionInterval: o.retentionInterval}, e.bus)
	if o.services {
		cfg.Services = append(cfg.Services, subjects.Inventory, subjects.Secrets)
	} else {
		// The inventory's part: record what the gateway reports.
		e.observed = testkit.FakeInventory(t, e.bus.Conn(t, subjects.Inventory))
	}
	st := stacktest.Start(t, cfg)
	e.stack = st
	e.ca, e.gw, e.addr = st.CA, st.AgentGW, st.AgentAddr
	e.roots = e.ca.Authority().Pool()
	e.provisioner = rpc.NewClient(e.bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 0)
	e.operator = rpc.NewClient(e.bus.Conn(t, subjects.Gateway), subjects.Gateway, 0)
	return e
}

// testLog logs to t until the test ends, then discards.
func testLog(t testing.TB) *slog.Logger { return newTestWriter(t).logger() }

// testWriter passes log lines to t until the test ends, and keeps them.
type testWriter struct {
	mu    sync.Mutex
	t     testing.TB
	done  bool
	lines []string
}

func newTestWriter(t testing.TB) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered first, so it runs last
	return w
}

func (w *testWriter) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		line := strings.TrimSuffix(string(p), "\n")
		w.t.Log(line)
		w.lines = append(w.lines, line)
	}
	return len(p), nil
}

// line returns the first line logged that holds s, or "".
func (w *testWriter) line(s string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// joinToken asks the CA for a join token for instance id.
func (e *env) joinToken(id string) string {
	e.t.Helper()
	tok, err := rpc.Call(e.t.Context(), e.provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id})
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

// connect joins as id and opens a stream with hello, naming no VM: the
// gateway takes its certificate's.
func (e *env) connect(id string) *agentStream {
	e.t.Helper()
	return e.connectAs(e.join(id), &agentv1.Hello{AgentVersion: "test"})
}

func (e *env) connectAs(cert *tls.Certificate, hello *agentv1.Hello) *agentStream {
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
	return &agentStream{AgentGateway_ConnectClient: stream}
}

// agentStream is an agent's end of a stream whose Recv passes over log
// acknowledgements, recording them.
type agentStream struct {
	agentv1.AgentGateway_ConnectClient
	mu   sync.Mutex
	acks []uint64
}

// Recv returns the next message that is not a LogAck.
func (s *agentStream) Recv() (*agentv1.GatewayMessage, error) {
	for {
		m, err := s.AgentGateway_ConnectClient.Recv()
		if err != nil || m.GetLogAck() == nil {
			return m, err
		}
		s.mu.Lock()
		s.acks = append(s.acks, m.GetLogAck().GetSeq())
		s.mu.Unlock()
	}
}

// Acks returns the LogAcks received so far.
func (s *agentStream) Acks() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.acks)
}

func newCSR(t testing.TB) (crypto.Signer, []byte) {
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

func tlsCert(t testing.TB, certPEM []byte, key crypto.Signer) *tls.Certificate {
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
