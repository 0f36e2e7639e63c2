package natsx_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pki"
)

const testToken = "s3cret-test-token"

// srv is the embedded server shared by the package's tests.
var srv *server.Server

func TestMain(m *testing.M) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{},
	))
	dir, err := os.MkdirTemp("", "natsx-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err = natsx.StartEmbedded(natsx.EmbeddedOptions{
		ServerName: "natsx-test",
		Port:       -1,
		StoreDir:   dir,
		Auth:       func(o *server.Options) error { o.Authorization = testToken; return nil },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	srv.Shutdown()
	srv.WaitForShutdown()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var seq atomic.Int64

// unique returns a name no other test uses.
func unique(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, seq.Add(1))
}

func connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := natsx.Connect(srv.ClientURL(), t.Name(), nats.Token(testToken))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func recordingProvider(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// endedSpans waits until rec holds n ended spans: a server span ends just
// after its handler replies, so it can finish after the client got the reply.
func endedSpans(t *testing.T, rec *tracetest.SpanRecorder, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		spans := rec.Ended()
		if len(spans) >= n || time.Now().After(deadline) {
			if len(spans) != n {
				t.Fatalf("recorded %d ended spans, want %d", len(spans), n)
			}
			return spans
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// addService serves handler on subject as a micro service.
func addService(t *testing.T, nc *nats.Conn, subject string, handler micro.Handler) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{
		Name:     unique("svc"),
		Version:  "1.0.0",
		Endpoint: &micro.EndpointConfig{Subject: subject, Handler: handler},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	// The subscription exists on the server only once it has processed the
	// SUB: without this a request from another connection can find no responders.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestTraceContextCrossesRequestReply(t *testing.T) {
	t.Parallel()
	clientTP, clientRec := recordingProvider(t)
	serverTP, serverRec := recordingProvider(t)
	subject := unique("test.echo.")

	gotBaggage := make(chan string, 1)
	addService(t, connect(t), subject, natsx.TraceHandler(serverTP, "Echo",
		func(ctx context.Context, req micro.Request) {
			gotBaggage <- baggage.FromContext(ctx).Member("tenant").Value()
			var in wrapperspb.StringValue
			if err := proto.Unmarshal(req.Data(), &in); err != nil {
				_ = req.Error("400", err.Error(), nil)
				return
			}
			out, _ := proto.Marshal(wrapperspb.String("echo: " + in.GetValue()))
			_ = req.Respond(out)
		}))

	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx := baggage.ContextWithBaggage(t.Context(), bag)
	ctx, parent := clientTP.Tracer("test").Start(ctx, "parent")
	var resp wrapperspb.StringValue
	err := natsx.Request(ctx, connect(t), subject, wrapperspb.String("hi"), &resp)
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetValue() != "echo: hi" {
		t.Errorf("reply = %q, want %q", resp.GetValue(), "echo: hi")
	}
	if b := <-gotBaggage; b != "acme" {
		t.Errorf("handler saw baggage tenant=%q, want acme", b)
	}

	var client sdktrace.ReadOnlySpan
	for _, s := range endedSpans(t, clientRec, 2) {
		if s.Name() == "nats.request "+subject {
			client = s
		}
	}
	if client == nil {
		t.Fatal("no client span named nats.request " + subject)
	}
	if client.SpanKind() != trace.SpanKindClient {
		t.Errorf("client span kind = %v", client.SpanKind())
	}
	if client.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Error("client span is not a child of the caller's span")
	}
	server := endedSpans(t, serverRec, 1)[0]
	if server.Name() != "Echo" || server.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span = %q kind %v, want Echo kind server", server.Name(), server.SpanKind())
	}
	if !server.Parent().IsRemote() {
		t.Error("server span's parent is not remote")
	}
	if server.Parent().TraceID() != parent.SpanContext().TraceID() {
		t.Error("server span is in a different trace from the caller")
	}
	if server.Parent().SpanID() != client.SpanContext().SpanID() {
		t.Error("server span's parent is not the client span")
	}
	attrs := map[string]string{}
	for _, kv := range server.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["messaging.system"] != "nats" || attrs["messaging.destination.name"] != subject {
		t.Errorf("server span attributes = %v", attrs)
	}
}

func TestLowercaseTraceparentFromNonGoClient(t *testing.T) {
	t.Parallel()
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		spanID  = "00f067aa0ba902b7"
	)
	tp := "00-" + traceID + "-" + spanID + "-01"

	// What a non-Go client sends: lowercase keys, as the W3C spec writes them.
	h := nats.Header{"traceparent": {tp}}
	if got := propagation.HeaderCarrier(http.Header(h)).Get("traceparent"); got != "" {
		t.Fatalf("propagation.HeaderCarrier found %q; this test assumes it canonicalises and misses it", got)
	}
	if got := natsx.HeaderCarrier(h).Get("traceparent"); got != tp {
		t.Errorf("HeaderCarrier.Get(traceparent) = %q, want %q", got, tp)
	}
	if got := natsx.HeaderCarrier(nats.Header{"TraceParent": {tp}}).Get("traceparent"); got != tp {
		t.Errorf("HeaderCarrier.Get on mixed case = %q, want %q", got, tp)
	}
	sc := trace.SpanContextFromContext(natsx.Extract(t.Context(), h))
	if sc.TraceID().String() != traceID || sc.SpanID().String() != spanID || !sc.IsRemote() {
		t.Errorf("Extract gave %v/%v remote=%v", sc.TraceID(), sc.SpanID(), sc.IsRemote())
	}

	// End to end: a raw request with a lowercase header reaches the handler's span.
	serverTP, serverRec := recordingProvider(t)
	subject := unique("test.lower.")
	addService(t, connect(t), subject, natsx.TraceHandler(serverTP, "Lower",
		func(_ context.Context, req micro.Request) { _ = req.Respond(nil) }))
	msg := nats.NewMsg(subject)
	msg.Header = nats.Header{"traceparent": {tp}}
	if _, err := connect(t).RequestMsg(msg, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	server := endedSpans(t, serverRec, 1)[0]
	if server.Parent().TraceID().String() != traceID || server.Parent().SpanID().String() != spanID {
		t.Errorf("server span parent = %v/%v, want %s/%s",
			server.Parent().TraceID(), server.Parent().SpanID(), traceID, spanID)
	}
}

func TestInjectWritesLowercaseKeys(t *testing.T) {
	t.Parallel()
	tp, _ := recordingProvider(t)
	ctx, span := tp.Tracer("test").Start(t.Context(), "op")
	defer span.End()
	h := nats.Header{"Traceparent": {"00-stale"}}
	natsx.Inject(ctx, h)
	if _, ok := h["traceparent"]; !ok {
		t.Errorf("Inject wrote keys %v, want lowercase traceparent", natsx.HeaderCarrier(h).Keys())
	}
	if _, ok := h["Traceparent"]; ok {
		t.Error("Inject left the stale Traceparent key next to the new one")
	}
	if !strings.Contains(h.Get("traceparent"), span.SpanContext().SpanID().String()) {
		t.Errorf("traceparent %q lacks the span id", h.Get("traceparent"))
	}
}

func TestServiceErrorHeaders(t *testing.T) {
	t.Parallel()
	clientTP, clientRec := recordingProvider(t)
	serverTP, serverRec := recordingProvider(t)
	subject := unique("test.fail.")
	addService(t, connect(t), subject, natsx.TraceHandler(serverTP, "Fail",
		func(_ context.Context, req micro.Request) {
			_ = req.Error("404", "node n-1 not found", nil)
		}))

	ctx, parent := clientTP.Tracer("test").Start(t.Context(), "parent")
	err := natsx.Request(ctx, connect(t), subject, wrapperspb.String("n-1"), &wrapperspb.StringValue{})
	parent.End()
	var se *natsx.ServiceError
	if !errors.As(err, &se) {
		t.Fatalf("Request error = %v (%T), want *natsx.ServiceError", err, err)
	}
	if se.Code != "404" || se.Message != "node n-1 not found" {
		t.Errorf("ServiceError = %+v", *se)
	}
	if err.Error() != "service error 404: node n-1 not found" {
		t.Errorf("Error() = %q", err.Error())
	}
	for _, s := range endedSpans(t, clientRec, 2) {
		if s.SpanKind() == trace.SpanKindClient && s.Status().Code != codes.Error {
			t.Errorf("client span status = %v, want error", s.Status())
		}
	}
	if st := endedSpans(t, serverRec, 1)[0].Status(); st.Code != codes.Error || !strings.Contains(st.Description, "404") {
		t.Errorf("server span status = %+v, want error with code 404", st)
	}
}

func TestNoRespondersIsDetectable(t *testing.T) {
	t.Parallel()
	err := natsx.Request(t.Context(), connect(t), unique("test.nobody."), wrapperspb.String("x"), nil)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("Request error = %v, want one wrapping nats.ErrNoResponders", err)
	}
	var se *natsx.ServiceError
	if errors.As(err, &se) {
		t.Error("no responders reported as a ServiceError")
	}
}

func TestRequestHonoursContextDeadline(t *testing.T) {
	t.Parallel()
	subject := unique("test.slow.")
	release := make(chan struct{})
	defer close(release)
	addService(t, connect(t), subject, micro.HandlerFunc(func(req micro.Request) {
		<-release
		_ = req.Respond(nil)
	}))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := natsx.Request(ctx, connect(t), subject, wrapperspb.String("x"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request error = %v, want context.DeadlineExceeded", err)
	}
}

func TestHandlerPanicIsRecordedAndRethrown(t *testing.T) {
	t.Parallel()
	tp, rec := recordingProvider(t)
	h := natsx.TraceHandler(tp, "Boom", func(context.Context, micro.Request) { panic("boom") })
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		h.Handle(fakeRequest{})
	}()
	s := endedSpans(t, rec, 1)[0]
	if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "boom") {
		t.Errorf("span status = %+v, want error mentioning boom", s.Status())
	}
}

// fakeRequest is a micro.Request with no data and no headers.
type fakeRequest struct{ micro.Request }

func (fakeRequest) Headers() micro.Headers { return nil }
func (fakeRequest) Subject() string        { return "fake" }
func (fakeRequest) Data() []byte           { return nil }

func TestConnectNeedsToken(t *testing.T) {
	t.Parallel()
	if _, err := natsx.Connect(srv.ClientURL(), "no-token"); err == nil {
		t.Error("connected without the token")
	}
	if _, err := natsx.Connect(srv.ClientURL(), "bad-token", nats.Token("wrong")); err == nil {
		t.Error("connected with a wrong token")
	}
}

func TestEmbeddedDontListenInProcess(t *testing.T) {
	t.Parallel()
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{
		ServerName: "inproc",
		StoreDir:   t.TempDir(),
		DontListen: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := natsx.ConnectInProcess(ns, "inproc-client")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}}); err != nil {
		t.Fatalf("JetStream unusable on the embedded server: %v", err)
	}
	if _, err := js.Publish(t.Context(), "events.x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if nc.ConnectedServerName() != "inproc" {
		t.Errorf("server name = %q, want inproc", nc.ConnectedServerName())
	}
}

func TestEmbeddedReportsTakenPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	start := time.Now()
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{Port: port, StoreDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		t.Fatal("StartEmbedded succeeded on a taken port")
	}
	if !strings.Contains(err.Error(), strconv.Itoa(port)) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error = %q, want the port and the reason", err)
	}
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
}

func TestEmbeddedNeedsStoreDir(t *testing.T) {
	t.Parallel()
	if _, err := natsx.StartEmbedded(natsx.EmbeddedOptions{Port: -1}); err == nil || !strings.Contains(err.Error(), "StoreDir") {
		t.Errorf("error = %v, want one naming StoreDir", err)
	}
}

func TestClientTLSReadsTheFilesItIsGiven(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := natsx.ClientTLS(caFile, "", "")
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 0 {
		t.Fatalf("CA only: %v %v", cfg, err)
	}
	if _, err := natsx.ClientTLS(filepath.Join(dir, "none.pem"), "", ""); err == nil || !strings.Contains(err.Error(), "NATS CA file") {
		t.Errorf("missing CA file: %v", err)
	}
	if _, err := natsx.ClientTLS(caFile, caFile, filepath.Join(dir, "none.key")); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Errorf("missing key: %v", err)
	}
}
