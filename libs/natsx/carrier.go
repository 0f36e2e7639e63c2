package natsx

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts a nats.Header to propagation.TextMapCarrier. Unlike
// propagation.HeaderCarrier it does not canonicalise keys: Get matches keys
// case-insensitively (preferring an exact match), and Set writes the key as
// given, so the W3C propagator writes a lowercase "traceparent".
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, matched case-insensitively, or "".
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set replaces every value of key, in whatever case it was stored, with value
// stored under key exactly as given.
func (c HeaderCarrier) Set(key, value string) {
	for k := range c {
		if k != key && strings.EqualFold(k, key) {
			delete(c, k)
		}
	}
	c[key] = []string{value}
}

// Keys returns the header keys as stored.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Propagator is how Flotilla carries trace context on the bus: W3C trace
// context and baggage, whatever global propagator a process has set, because
// the headers are part of the wire format every service and tool relies on.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{}, propagation.Baggage{})

// Inject writes the trace context and baggage of ctx into h. A nil header is
// left alone.
func Inject(ctx context.Context, h nats.Header) {
	if h == nil {
		return
	}
	Propagator.Inject(ctx, HeaderCarrier(h))
}

// Extract returns ctx with the trace context and baggage found in h. A nil or
// empty header returns ctx unchanged.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return Propagator.Extract(ctx, HeaderCarrier(h))
}
