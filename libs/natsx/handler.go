package natsx

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TraceHandler returns a micro.Handler that extracts the caller's trace
// context from the request headers and runs h inside a server span named name,
// started from tp. The context passed to h carries that span (and the caller's
// baggage), and ends when the caller stops waiting for the reply (the
// request's HeaderTimeout, which Request sets); it is not cancelled when
// the service stops. A request with a context of its own (a Context
// method, as libs/rpc's requests have) is worked on under it: it ends too
// when that ends.
//
// The span records the outcome: a reply sent with req.Error sets the span's
// status to error with the code as error.type, a failure to send a reply is
// recorded as an error, and a panic in h is recorded before it continues up
// the stack. The span ends when h returns, so h should reply before returning.
func TraceHandler(tp trace.TracerProvider, name string, h func(ctx context.Context, req micro.Request)) micro.Handler {
	tracer := tp.Tracer(tracerName)
	return micro.HandlerFunc(func(req micro.Request) {
		base := context.Background()
		if c, ok := req.(interface{ Context() context.Context }); ok {
			base = c.Context()
		}
		ctx := Extract(base, nats.Header(req.Headers()))
		if d, ok := callerTimeout(nats.Header(req.Headers())); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		ctx, span := tracer.Start(ctx, name,
			trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(
				messagingSystemNATS,
				semconv.MessagingDestinationName(req.Subject()),
				semconv.MessagingOperationTypeProcess,
				semconv.MessagingOperationName("process"),
				semconv.MessagingMessageBodySize(len(req.Data())),
			),
		)
		defer span.End()
		defer func() {
			if r := recover(); r != nil {
				err := fmt.Errorf("panic in handler %s: %v", name, r)
				span.RecordError(err, trace.WithStackTrace(true))
				span.SetStatus(codes.Error, err.Error())
				panic(r)
			}
		}()
		h(ctx, tracedRequest{Request: req, span: span})
	})
}

// tracedRequest records the replies a handler sends on its span.
type tracedRequest struct {
	micro.Request
	span trace.Span
}

func (r tracedRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.recordSend(r.Request.Respond(data, opts...))
}

func (r tracedRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	return r.recordSend(r.Request.RespondJSON(v, opts...))
}

func (r tracedRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	r.span.SetAttributes(attribute.String("error.type", code))
	r.span.SetStatus(codes.Error, code+": "+description)
	return r.recordSend(r.Request.Error(code, description, data, opts...))
}

func (r tracedRequest) recordSend(err error) error {
	if err != nil {
		r.span.RecordError(fmt.Errorf("send reply: %w", err))
		r.span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// HeaderTimeout carries, on a request, how long its caller waits for the
// reply from when it sent it, in milliseconds. The handler's context ends
// then (TraceHandler), so a request whose caller gave up is not worked on
// still: holding a database connection on a dead network path until TCP
// gives up (minutes), or making a change minutes after its caller was told
// it may not have been made.
const HeaderTimeout = "Flotilla-Timeout"

// callerTimeout is the time a request's caller waits, by its HeaderTimeout;
// false when the request has none that makes sense.
func callerTimeout(h nats.Header) (time.Duration, bool) {
	ms, err := strconv.ParseInt(h.Get(HeaderTimeout), 10, 64)
	if err != nil || ms <= 0 {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}
