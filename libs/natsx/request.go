package natsx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// tracerName is the instrumentation scope of the spans this package starts.
const tracerName = "flotilla.dev/flotilla/libs/natsx"

// messagingSystemNATS is the messaging.system value for NATS; semconv has no
// constant for it.
var messagingSystemNATS = semconv.MessagingSystemKey.String("nats")

// DefaultTimeout bounds a Request whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// ServiceError is the error a service returned through nats.go micro's error
// headers (Nats-Service-Error-Code and Nats-Service-Error), as sent by
// micro.Request.Error.
type ServiceError struct {
	// Code is the Nats-Service-Error-Code header, e.g. "404".
	Code string
	// Message is the Nats-Service-Error header.
	Message string
	// Header holds every header of the reply (a service may say more there).
	Header nats.Header
}

// Error returns "service error <code>: <message>".
func (e *ServiceError) Error() string {
	return fmt.Sprintf("service error %s: %s", e.Code, e.Message)
}

// Request sends req, marshalled as protobuf, to subject and waits for one
// reply (Flotilla's services call each other through libs/rpc, which uses
// this with the subjects and types of api/endpoints), which it unmarshals into resp (resp may be nil when the reply has no
// body worth reading). Extra headers in hdr are merged into the request.
//
// Request runs in a client span named "nats.request <subject>" and injects its
// trace context into the request headers. The span comes from the tracer
// provider of the recording span in ctx (so a call made inside a
// TraceHandler continues with that service's provider), else from the global
// tracer provider. If ctx has no deadline, DefaultTimeout applies; the
// request carries the time left (HeaderTimeout), after which the handler's
// context ends.
//
// A reply carrying micro's error headers returns a *ServiceError. When no
// service subscribes to subject the error wraps nats.ErrNoResponders
// (errors.Is(err, nats.ErrNoResponders)); a timeout wraps ctx's error. On a
// connection made by Connect or ConnectInProcess, a request that was
// waiting for its reply when the connection was lost, and has none
// LostReplyGrace after it is back, wraps ErrConnectionLost instead of
// waiting out its timeout; so does one that nats.go gave up when its
// connection was made again on purpose (ForceReconnect, as homing does).
func Request(ctx context.Context, nc *nats.Conn, subject string, req, resp proto.Message, hdr ...nats.Header) error {
	return request(ctx, nc, subject, req, resp, hdr, nc.RequestMsgWithContext)
}

// RequestFirst is Request to every subscriber of subject at once (a subject
// served without a queue group): the first reply that is not an error wins.
// An error reply is returned only when no good one follows within grace,
// or before ctx ends; no reply at all is a timeout, as for Request. It
// suits a question any member of a service can answer for all of them, such
// as whether the service is ready: a member that is cut off and silent, or
// not ready, does not decide the answer while another is ready.
func RequestFirst(ctx context.Context, nc *nats.Conn, subject string, grace time.Duration, req, resp proto.Message, hdr ...nats.Header) error {
	return request(ctx, nc, subject, req, resp, hdr, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		return firstGoodReply(ctx, nc, msg, grace)
	})
}

// request marshals req, sends it with exchange and decodes the reply (see
// Request).
func request(ctx context.Context, nc *nats.Conn, subject string, req, resp proto.Message, hdr []nats.Header,
	exchange func(context.Context, *nats.Msg) (*nats.Msg, error)) (err error) {
	ctx, span := tracerFrom(ctx).Start(ctx, "nats.request "+subject,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			messagingSystemNATS,
			semconv.MessagingDestinationName(subject),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("request"),
		),
	)
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()

	data, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("nats request %s: marshal %T: %w", subject, req, err)
	}
	span.SetAttributes(semconv.MessagingMessageBodySize(len(data)))

	msg := nats.NewMsg(subject)
	msg.Data = data
	for _, h := range hdr {
		for k, v := range h {
			msg.Header[k] = append([]string(nil), v...)
		}
	}
	Inject(ctx, msg.Header)

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	var reply *nats.Msg
	err = Bounded(ctx, nc, func(ctx context.Context) (err error) {
		if deadline, ok := ctx.Deadline(); ok { // sent now: the time left now
			msg.Header.Set(HeaderTimeout, strconv.FormatInt(max(time.Until(deadline).Milliseconds(), 1), 10))
		}
		reply, err = exchange(ctx, msg)
		return err
	})
	if errors.Is(err, ErrConnectionLost) {
		return fmt.Errorf("nats request %s: %w", subject, err)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("nats request %s: no service is listening: %w", subject, err)
	}
	if err != nil {
		return fmt.Errorf("nats request %s: %w", subject, err)
	}

	if se := serviceError(reply.Header); se != nil {
		span.SetAttributes(attribute.String("error.type", se.Code))
		return se
	}
	if resp == nil {
		return nil
	}
	if err := proto.Unmarshal(reply.Data, resp); err != nil {
		return fmt.Errorf("nats request %s: unmarshal reply into %T: %w", subject, resp, err)
	}
	return nil
}

// firstGoodReply publishes msg with an inbox of its own for the replies and
// returns the first that carries no service error; the first error reply
// when none better came within grace of it, or by the time ctx ended.
func firstGoodReply(ctx context.Context, nc *nats.Conn, msg *nats.Msg, grace time.Duration) (*nats.Msg, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg.Reply = inbox
	if err := nc.PublishMsg(msg); err != nil {
		return nil, err
	}
	var bad *nats.Msg
	wait := ctx
	for {
		reply, err := sub.NextMsgWithContext(wait)
		switch {
		case err != nil && bad != nil:
			return bad, nil // grace is over, or ctx ended
		case err != nil:
			return nil, err
		case noResponders(reply):
			if bad != nil {
				return bad, nil
			}
			return nil, nats.ErrNoResponders
		case serviceError(reply.Header) == nil:
			return reply, nil
		case bad == nil:
			bad = reply
			var cancel context.CancelFunc
			wait, cancel = context.WithTimeout(ctx, grace)
			defer cancel()
		}
	}
}

// noResponders reports whether reply is the server's answer that nobody
// subscribes to the request's subject (status 503, no body).
func noResponders(reply *nats.Msg) bool {
	return len(reply.Data) == 0 && reply.Header.Get("Status") == "503"
}

// serviceError returns the error micro's headers in h describe, or nil.
func serviceError(h nats.Header) *ServiceError {
	if len(h) == 0 {
		return nil
	}
	c := HeaderCarrier(h)
	code, desc := c.Get(micro.ErrorCodeHeader), c.Get(micro.ErrorHeader)
	if code == "" && desc == "" {
		return nil
	}
	return &ServiceError{Code: code, Message: desc, Header: h}
}

// tracerFrom returns a tracer from the provider of the recording span in ctx,
// or from the global provider.
func tracerFrom(ctx context.Context) trace.Tracer {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		return span.TracerProvider().Tracer(tracerName)
	}
	return otel.GetTracerProvider().Tracer(tracerName)
}
