// Package natsx holds the NATS helpers every Flotilla service uses: an
// embedded nats-server with JetStream for `flotilla up` and tests, a client
// connection with reconnect settings suited to long-running services, and
// OpenTelemetry tracing across request/reply. There is no contrib
// instrumentation for NATS, so trace context travels in message headers
// through [HeaderCarrier], which finds keys whatever their case (a lowercase
// traceparent from a non-Go client included). [Request] is the client side of
// a protobuf request/reply call and maps nats.go micro's error headers to
// [*ServiceError]; [TraceHandler] wraps a micro endpoint handler in a server
// span that continues the caller's trace.
package natsx
