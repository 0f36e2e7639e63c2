// Package events runs Flotilla's event consumers on a watermill Router: each
// handler is fed by a durable JetStream consumer declared in code, runs
// inside an OpenTelemetry span that continues the trace of the change that
// caused the event, is retried in process on failure, and sends a message it
// can never handle (Permanent) to the poison stream instead of blocking its
// consumer. A transient failure that outlasts the retries is negatively
// acknowledged and redelivered later, so nothing is dropped because a
// database was briefly away.
//
// The Subscriber and Publisher here implement watermill's interfaces over
// nats.go's jetstream API. watermill-nats's own JetStream subscriber is not
// used: it drains the shared NATS connection when it closes (the service's
// request/reply endpoints live on it) and creates consumers from topic
// names, while Flotilla's consumers are declared with the streams.
package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/natsx"
)

// Retry bounds: a failing handler is tried again after 100 ms, 200 ms, ...
// up to MaxRetries times within a message's delivery.
const (
	MaxRetries   = 4
	firstRetry   = 100 * time.Millisecond
	maxRetryWait = 2 * time.Second
)

// permanentError marks a failure retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure no retry can fix (a malformed message):
// the message goes to the poison stream and is acknowledged.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// Handler handles one message; the message's context carries its span.
type Handler func(msg *message.Message) error

// Router runs one service's event handlers.
type Router struct {
	service string
	js      jetstream.JetStream
	log     *slog.Logger
	router  *message.Router
	redelay time.Duration
}

// Option changes a Router.
type Option func(*Router)

// WithRedeliveryDelay sets how long a message whose handling failed every
// retry waits before it is delivered again (default 5 s).
func WithRedeliveryDelay(d time.Duration) Option { return func(r *Router) { r.redelay = d } }

// NewRouter returns a router for service's handlers, with tracing, poison
// queue, retry and panic recovery middleware, in that order (the span covers
// every attempt; a permanent failure skips the retries).
func NewRouter(js jetstream.JetStream, service string, log *slog.Logger, tp trace.TracerProvider, opts ...Option) (*Router, error) {
	wlog := watermill.NewSlogLoggerWithLevelMapping(log.With("component", "events"), map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug, // one line per handler start and stop is plenty
	})
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, wlog)
	if err != nil {
		return nil, err
	}
	poison, err := middleware.PoisonQueueWithFilter(&Publisher{js: js}, subjects.Poison(service), IsPermanent)
	if err != nil {
		return nil, err
	}
	r.AddMiddleware(
		tracing(tp),
		poison,
		middleware.Retry{
			MaxRetries: MaxRetries, InitialInterval: firstRetry, MaxInterval: maxRetryWait, Multiplier: 2,
			ShouldRetry: func(p middleware.RetryParams) bool { return !IsPermanent(p.Err) },
		}.Middleware,
		middleware.Recoverer,
	)
	rt := &Router{service: service, js: js, log: log, router: r, redelay: defaultRedeliveryDelay}
	for _, o := range opts {
		o(rt)
	}
	return rt, nil
}

// HandlerOption changes how one handler is fed.
type HandlerOption func(*Subscriber)

// InFlight lets up to n of the consumer's messages be handled at once, in
// no particular order: for handlers whose effects commute, such as a
// projection that writes each record by its id. Without it a handler gets
// the next message once the last one is settled, in stream order.
func InFlight(n int) HandlerOption { return func(s *Subscriber) { s.inFlight = n } }

// Handle declares a durable consumer on stream for the subjects filter
// matches (cfg gives its name and delivery policy) and routes its messages
// to h. The consumer exists when Handle returns, so events published from
// then on wait for the handler even before Run.
func (r *Router) Handle(ctx context.Context, stream, filter string, cfg jetstream.ConsumerConfig, h Handler, opts ...HandlerOption) error {
	cfg.FilterSubject = filter
	if cfg.AckPolicy == jetstream.AckNonePolicy {
		cfg.AckPolicy = jetstream.AckExplicitPolicy
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	cfg.MaxDeliver = -1
	cons, err := r.js.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("%s: declare consumer %s on %s: %w", r.service, cfg.Durable, stream, err)
	}
	sub := &Subscriber{cons: cons, log: r.log, redelay: r.redelay, closing: make(chan struct{})}
	for _, o := range opts {
		o(sub)
	}
	r.router.AddConsumerHandler(cfg.Durable, filter, sub, message.NoPublishHandlerFunc(h))
	return nil
}

// Run routes messages until ctx ends, then stops taking messages and waits
// (up to 15 s) for handlers in flight.
func (r *Router) Run(ctx context.Context) error {
	if err := r.router.Run(ctx); err != nil {
		return fmt.Errorf("%s: event router: %w", r.service, err)
	}
	return nil
}

// Running is closed once every handler is subscribed.
func (r *Router) Running() <-chan struct{} { return r.router.Running() }

// tracing runs each message's handling in a consumer span whose parent is
// the trace context the message carries (the request that caused it).
func tracing(tp trace.TracerProvider) message.HandlerMiddleware {
	tracer := tp.Tracer("flotilla.dev/flotilla/libs/events")
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			subject := msg.Metadata.Get(bus.HeaderSubject)
			ctx := natsx.Propagator.Extract(msg.Context(), propagation.MapCarrier(msg.Metadata))
			ctx, span := tracer.Start(ctx, message.HandlerNameFromCtx(msg.Context())+" process "+subject,
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(
					semconv.MessagingSystemKey.String("nats"),
					semconv.MessagingDestinationName(subject),
					semconv.MessagingOperationTypeProcess,
					semconv.MessagingMessageID(msg.UUID),
					attribute.String("flotilla.event.type", msg.Metadata.Get(bus.HeaderType)),
				))
			defer span.End()
			msg.SetContext(ctx)
			out, err := h(msg)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			return out, err
		}
	}
}
