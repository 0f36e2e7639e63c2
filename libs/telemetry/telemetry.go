package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Protocol values accepted in [Config.OTLPProtocol]; they are the values the
// OTEL_EXPORTER_OTLP_PROTOCOL environment variable takes.
const (
	// ProtocolGRPC exports spans with OTLP over gRPC. It is the default.
	ProtocolGRPC = "grpc"
	// ProtocolHTTPProtobuf exports spans with OTLP over HTTP with protobuf bodies.
	ProtocolHTTPProtobuf = "http/protobuf"
)

// Config holds what Setup needs. It is filled by the caller (usually from the
// service's own config struct); this package never reads the environment.
type Config struct {
	// ServiceName is the service.name resource attribute, e.g. "inventory". Required.
	ServiceName string
	// ServiceVersion is the service.version resource attribute.
	ServiceVersion string
	// ServiceInstanceID is the service.instance.id resource attribute, if set.
	ServiceInstanceID string
	// Attributes are extra resource attributes.
	Attributes []attribute.KeyValue

	// OTLPEndpoint is the value of OTEL_EXPORTER_OTLP_ENDPOINT: a base URL such
	// as "http://collector:4317" (gRPC) or "https://collector:4318" (HTTP).
	// An http scheme means plain text, https means TLS. For http/protobuf the
	// traces path "/v1/traces" is appended, as the OpenTelemetry spec says for
	// the signal-independent endpoint. Empty means no exporter.
	OTLPEndpoint string
	// OTLPProtocol is the value of OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" (default
	// when empty) or "http/protobuf".
	OTLPProtocol string

	// SpanProcessors are added to the tracer provider besides the exporter
	// (tests pass a tracetest.SpanRecorder).
	SpanProcessors []sdktrace.SpanProcessor
	// Sampler overrides the default sampler: ParentBased(AlwaysSample)
	// when spans go somewhere (an OTLP endpoint or span processors), else
	// ParentBased(NeverSample): ids without recording.
	Sampler sdktrace.Sampler
}

// Validate reports every problem in the config at once, naming the setting.
func (c Config) Validate() error {
	var errs []error
	if c.ServiceName == "" {
		errs = append(errs, errors.New("telemetry: service name is required"))
	}
	switch c.OTLPProtocol {
	case "", ProtocolGRPC, ProtocolHTTPProtobuf:
	default:
		errs = append(errs, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %q is not supported: use %q or %q",
			c.OTLPProtocol, ProtocolGRPC, ProtocolHTTPProtobuf))
	}
	if c.OTLPEndpoint != "" {
		u, err := url.Parse(c.OTLPEndpoint)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_ENDPOINT %q is not a URL: %w", c.OTLPEndpoint, err))
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_ENDPOINT %q must start with http:// or https://", c.OTLPEndpoint))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_ENDPOINT %q has no host", c.OTLPEndpoint))
		}
	}
	return errors.Join(errs...)
}

// Telemetry owns the tracer provider built by Setup.
type Telemetry struct {
	tp        *sdktrace.TracerProvider
	exporting bool
}

// Setup validates cfg, builds a tracer provider with the service's resource
// attributes, an OTLP batch exporter when cfg.OTLPEndpoint is set, and
// cfg.SpanProcessors, and sets the global text-map propagator to W3C
// TraceContext + Baggage. It does not set the global tracer provider.
// The exporter connects lazily: an unreachable collector does not fail Setup.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}

	attrs := []attribute.KeyValue{semconv.ServiceName(cfg.ServiceName)}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(cfg.ServiceVersion))
	}
	if cfg.ServiceInstanceID != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(cfg.ServiceInstanceID))
	}
	attrs = append(attrs, cfg.Attributes...)
	// resource.New with explicit detectors: resource.Default would read
	// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from the environment.
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(attrs...),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: build resource: %w", err)
	}

	sampler := cfg.Sampler
	if sampler == nil {
		// Spans nobody receives are not recorded: they still carry trace
		// and span ids (to logs, audit records and other processes), at
		// no more cost than making the ids.
		sampler = sdktrace.ParentBased(sdktrace.NeverSample())
		if cfg.OTLPEndpoint != "" || len(cfg.SpanProcessors) > 0 {
			sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
		}
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
	}

	t := &Telemetry{}
	if cfg.OTLPEndpoint != "" {
		exp, err := newExporter(ctx, cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
		t.exporting = true
	}
	for _, sp := range cfg.SpanProcessors {
		opts = append(opts, sdktrace.WithSpanProcessor(sp))
	}
	t.tp = sdktrace.NewTracerProvider(opts...)

	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{},
	))
	return t, nil
}

func newExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	if cfg.OTLPProtocol == ProtocolHTTPProtobuf {
		u, _ := url.Parse(cfg.OTLPEndpoint) // checked by Validate
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.String()))
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP http/protobuf exporter for %s: %w", u, err)
		}
		return exp, nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(cfg.OTLPEndpoint))
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP gRPC exporter for %s: %w", cfg.OTLPEndpoint, err)
	}
	return exp, nil
}

// TracerProvider returns the tracer provider. Pass it to instrumentation
// explicitly (otelgrpc.WithTracerProvider, otelhttp.WithTracerProvider,
// otelpgx.WithTracerProvider, natsx.TraceHandler).
func (t *Telemetry) TracerProvider() *sdktrace.TracerProvider {
	return t.tp
}

// Exporting reports whether spans are sent to an OTLP collector.
func (t *Telemetry) Exporting() bool {
	return t.exporting
}

// Shutdown flushes spans still queued in the exporter and span processors and
// stops them. Call it last, with a context that bounds how long to wait.
// Calling it again is harmless.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if err := t.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}
