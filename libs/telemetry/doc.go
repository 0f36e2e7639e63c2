// Package telemetry builds the OpenTelemetry tracer provider and the slog logger
// every Flotilla binary uses. The caller's config struct reads the environment
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL) and passes the
// values in a [Config]; with no endpoint, tracing is "off": spans are still
// created so trace context flows across gRPC, HTTP and NATS and appears in logs,
// but nothing is exported. [Setup] also installs the W3C TraceContext and
// Baggage propagators globally; the tracer provider itself is returned, not
// installed globally, so that several services can share one process and each
// passes its own provider to the instrumentation it builds.
package telemetry
