package telemetry_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/libs/telemetry"
)

func TestSetupWithoutEndpointRecordsToProcessors(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{
		ServiceName:    "inventory",
		ServiceVersion: "1.2.3",
		SpanProcessors: []sdktrace.SpanProcessor{rec},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	if tel.Exporting() {
		t.Error("Exporting() = true without an endpoint")
	}

	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "op")
	if !span.SpanContext().IsValid() {
		t.Error("span context is not valid with tracing off")
	}
	span.End()

	ended := rec.Ended()
	if len(ended) != 1 || ended[0].Name() != "op" {
		t.Fatalf("recorded %d spans, want one named op", len(ended))
	}
	attrs := map[attribute.Key]string{}
	for _, kv := range ended[0].Resource().Attributes() {
		attrs[kv.Key] = kv.Value.String()
	}
	if attrs["service.name"] != "inventory" || attrs["service.version"] != "1.2.3" {
		t.Errorf("resource attributes = %v, want service.name=inventory service.version=1.2.3", attrs)
	}
}

func TestSetupSetsW3CPropagator(t *testing.T) {
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{ServiceName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	fields := strings.Join(otel.GetTextMapPropagator().Fields(), ",")
	for _, want := range []string{"traceparent", "tracestate", "baggage"} {
		if !strings.Contains(fields, want) {
			t.Errorf("global propagator fields %q lack %q", fields, want)
		}
	}
}

func TestValidateNamesEverySetting(t *testing.T) {
	err := telemetry.Config{OTLPEndpoint: "collector:4317", OTLPProtocol: "http/json"}.Validate()
	if err == nil {
		t.Fatal("Validate() = nil for a bad config")
	}
	for _, want := range []string{"service name", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q, does not name %s", err, want)
		}
	}
	if _, err := telemetry.Setup(t.Context(), telemetry.Config{}); err == nil {
		t.Error("Setup accepted a config without a service name")
	}
}

// exportedSpans collects span names and service names an OTLP receiver got.
type exportedSpans struct {
	mu       sync.Mutex
	names    []string
	services []string
}

func (e *exportedSpans) add(req *collectortrace.ExportTraceServiceRequest) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				e.services = append(e.services, kv.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				e.names = append(e.names, s.GetName())
			}
		}
	}
}

func (e *exportedSpans) check(t *testing.T, name, service string) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.names) != 1 || e.names[0] != name {
		t.Errorf("collector received spans %v, want [%s]", e.names, name)
	}
	if len(e.services) != 1 || e.services[0] != service {
		t.Errorf("collector received service names %v, want [%s]", e.services, service)
	}
}

func TestExportsOverHTTPProtobuf(t *testing.T) {
	var got exportedSpans
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			t.Errorf("collector got path %q, want /v1/traces", r.URL.Path)
			http.NotFound(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
			return
		}
		var req collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			t.Errorf("decode export request: %v", err)
			return
		}
		got.add(&req)
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)

	tel, err := telemetry.Setup(t.Context(), telemetry.Config{
		ServiceName:  "gateway",
		OTLPEndpoint: srv.URL,
		OTLPProtocol: telemetry.ProtocolHTTPProtobuf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tel.Exporting() {
		t.Error("Exporting() = false with an endpoint")
	}
	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "http-op")
	span.End()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got.check(t, "http-op", "gateway")
	if err := tel.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

type traceCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	got *exportedSpans
}

func (c traceCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.got.add(req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func TestExportsOverGRPC(t *testing.T) {
	var got exportedSpans
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(gs, traceCollector{got: &got})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	tel, err := telemetry.Setup(t.Context(), telemetry.Config{
		ServiceName:  "provisioner",
		OTLPEndpoint: "http://" + lis.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "grpc-op")
	span.End()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got.check(t, "grpc-op", "provisioner")
}

// TestSpansNobodyReceivesAreNotRecorded: without an endpoint or span
// processors a span is not recorded, yet has ids for logs and audit
// records, and its children share its trace.
func TestSpansNobodyReceivesAreNotRecorded(t *testing.T) {
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{ServiceName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	ctx, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "op")
	defer span.End()
	_, child := tel.TracerProvider().Tracer("test").Start(ctx, "child")
	defer child.End()
	if span.IsRecording() || child.IsRecording() {
		t.Error("a span nobody receives is recorded")
	}
	if !span.SpanContext().IsValid() || child.SpanContext().TraceID() != span.SpanContext().TraceID() {
		t.Errorf("ids: %v, child %v", span.SpanContext(), child.SpanContext())
	}
}

func TestSpanContextReachesLogs(t *testing.T) {
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{ServiceName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	ctx, span := tel.TracerProvider().Tracer("test").Start(t.Context(), "op")
	defer span.End()
	sc := span.SpanContext()

	for _, json := range []bool{true, false} {
		var buf strings.Builder
		log := telemetry.NewLogger(&buf, slog.LevelInfo, json)
		log.InfoContext(ctx, "in span")
		log.Info("no context")
		log.DebugContext(ctx, "filtered")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("json=%v: got %d lines, want 2:\n%s", json, len(lines), buf.String())
		}
		for _, id := range []string{sc.TraceID().String(), sc.SpanID().String()} {
			if !strings.Contains(lines[0], id) {
				t.Errorf("json=%v: line %q lacks %s", json, lines[0], id)
			}
		}
		if !strings.Contains(lines[0], "trace_id") || !strings.Contains(lines[0], "span_id") {
			t.Errorf("json=%v: line %q lacks trace_id/span_id keys", json, lines[0])
		}
		if strings.Contains(lines[1], "trace_id") {
			t.Errorf("json=%v: line without a span has a trace_id: %q", json, lines[1])
		}
	}
}

func TestLogWithoutValidSpanHasNoIDs(t *testing.T) {
	var buf strings.Builder
	log := telemetry.NewLogger(&buf, slog.LevelInfo, true)
	ctx := trace.ContextWithSpanContext(t.Context(), trace.SpanContext{})
	log.InfoContext(ctx, "x")
	if strings.Contains(buf.String(), "trace_id") {
		t.Errorf("invalid span context produced ids: %s", buf.String())
	}
}
