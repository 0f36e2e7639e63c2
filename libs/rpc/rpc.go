// Package rpc runs Flotilla's request/reply endpoints on the bus, both ends
// driven by their declarations in api/endpoints.
//
// A service is a nats micro service (name = the Flotilla service, queue group
// "q", so every instance of it shares the load) with the ping endpoint the
// gateway's status check calls; Handle adds a declared endpoint with a typed
// function. Call sends a declared endpoint's request from a Client and returns
// its typed reply or an *apierr.Error: the service's own error with its kind,
// reason and field, or "unavailable" when nobody answers in time. Trace
// context crosses every call; errors are mapped in exactly one place each way.
package rpc

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/msgcheck"
	"flotilla.dev/flotilla/libs/natsx"
)

// Service is one Flotilla service's endpoints on the bus.
type Service struct {
	nc          *nats.Conn
	name        string
	svc         micro.Service
	log         *slog.Logger
	tp          trace.TracerProvider
	concurrency int
	inflight    sync.WaitGroup
	// ready is the service's readiness check (New's), nil if it has none.
	ready func(context.Context) error
}

// DefaultConcurrency is how many requests each endpoint serves at once
// unless WithConcurrency says otherwise.
const DefaultConcurrency = 32

// Option tunes a Service.
type Option func(*Service)

// WithConcurrency serves up to n requests of each endpoint at once (n < 1:
// DefaultConcurrency). A request beyond that waits in its subscription's
// queue, so a burst is absorbed by NATS rather than by goroutines. A
// service that works on a database sizes its pool to match.
func WithConcurrency(n int) Option {
	return func(s *Service) {
		if n >= 1 {
			s.concurrency = n
		}
	}
}

// Func is a typed endpoint: it gets the caller's actor and decoded request.
type Func[Req, Resp proto.Message] func(ctx context.Context, actor vocab.Actor, req Req) (Resp, error)

// New adds the micro service for name, with its ping endpoint answering when
// ready reports no error (ready may be nil).
func New(nc *nats.Conn, name, version, description string, log *slog.Logger, tp trace.TracerProvider, ready func(context.Context) error, opts ...Option) (*Service, error) {
	if version == "" {
		version = "0.0.0-dev" // micro requires a semantic version
	}
	ping, ok := endpoints.Ping(name)
	if !ok {
		return nil, fmt.Errorf("rpc: %q is not a Flotilla service", name)
	}
	svc, err := micro.AddService(nc, micro.Config{Name: name, Version: version, Description: description})
	if err != nil {
		return nil, fmt.Errorf("add %s service: %w", name, err)
	}
	s := &Service{nc: nc, name: name, svc: svc, log: log, tp: tp, concurrency: DefaultConcurrency, ready: ready}
	for _, o := range opts {
		o(s)
	}
	err = Handle(s, ping, func(ctx context.Context, _ vocab.Actor, _ *systemv1.PingRequest) (*systemv1.PingResponse, error) {
		if ready != nil {
			if err := ready(ctx); err != nil {
				return nil, apierr.Unavailable("%s is not ready: %v", name, err)
			}
		}
		return &systemv1.PingResponse{Service: name, Version: version}, nil
	})
	if err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return s, nil
}

// Handle serves the declared endpoint ep with f. The endpoint must belong to
// s's service and not be per-instance (see Subscribe).
func Handle[Req, Resp proto.Message](s *Service, ep endpoints.Endpoint[Req, Resp], f Func[Req, Resp]) error {
	info := ep.Info()
	if info.Service != s.name || info.PerInstance() {
		return fmt.Errorf("rpc: %s cannot serve %s.%s (%s)", s.name, info.Service, info.Name, info.Subject)
	}
	name := strings.ReplaceAll(info.Name, ".", "_")
	if s.ready != nil {
		f = unavailableWhileNotReady(s, f)
	}
	opts := []micro.EndpointOpt{micro.WithEndpointSubject(info.ServeSubject())}
	if info.Every {
		opts = append(opts, micro.WithEndpointQueueGroupDisabled())
	}
	if err := s.svc.AddEndpoint(name, s.pooled(handler(s.tp, s.log, s.name, ep, f)), opts...); err != nil {
		return fmt.Errorf("add endpoint %s: %w", info.Subject, err)
	}
	return flush(s.nc, s.name)
}

// readyCheckTimeout bounds the readiness check made after a request failed.
const readyCheckTimeout = 2 * time.Second

// unavailableWhileNotReady answers an internal error of f as unavailable
// when the service is not ready just then (its readiness check fails: its
// database unreachable while PostgreSQL fails over, say): the error came
// from that, and the caller may try again shortly, rather than take it for
// a fault in Flotilla. A request that changes something may or may not have
// done so: the error says it. The cause is logged as a warning.
func unavailableWhileNotReady[Req, Resp proto.Message](s *Service, f Func[Req, Resp]) Func[Req, Resp] {
	return func(ctx context.Context, actor vocab.Actor, req Req) (Resp, error) {
		resp, err := f(ctx, actor, req)
		if err == nil || apierr.KindOf(err) != apierr.KindInternal {
			return resp, err
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readyCheckTimeout)
		defer cancel()
		rerr := s.ready(rctx)
		if rerr == nil {
			return resp, err
		}
		s.log.WarnContext(ctx, "a request failed while the service was not ready; answered unavailable",
			"service", s.name, "error", err, "not_ready", rerr)
		e := apierr.Unavailable("the %s service is not ready just now (GET /api/v1/status says why): "+
			"try again shortly; a change asked for may or may not have been made", s.name)
		e.Err = err
		return resp, e
	}
}

// Stop stops taking requests and waits for the requests in flight.
func (s *Service) Stop() error {
	err := s.svc.Stop()
	s.inflight.Wait()
	return err
}

// pooled serves an endpoint's requests on up to s.concurrency goroutines:
// the subscription's callback hands each request over and takes the next,
// and waits only while the pool is full.
func (s *Service) pooled(h micro.Handler) micro.Handler {
	slots := make(chan struct{}, s.concurrency)
	return micro.HandlerFunc(func(r micro.Request) {
		slots <- struct{}{}
		s.inflight.Add(1)
		req := &request{nc: s.nc, subject: r.Subject(), reply: r.Reply(), data: r.Data(), headers: r.Headers()}
		go func() {
			defer s.inflight.Done()
			defer func() { <-slots }()
			h.Handle(req)
		}()
	})
}

// request is a micro.Request answered after the subscription's callback has
// returned. (micro's own notes, when the callback returns, whether its reply
// failed: answered later, that would race. Its statistics therefore count
// no errors; Flotilla's logs and traces do.)
type request struct {
	nc             *nats.Conn
	subject, reply string
	data           []byte
	headers        micro.Headers
}

func (r *request) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.send(&nats.Msg{Data: data}, opts)
}

func (r *request) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

func (r *request) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	if code == "" || description == "" {
		return fmt.Errorf("%w: error code and description", micro.ErrArgRequired)
	}
	m := &nats.Msg{Header: nats.Header{micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code}}, Data: data}
	return r.send(m, opts)
}

func (r *request) send(m *nats.Msg, opts []micro.RespondOpt) error {
	if r.reply == "" {
		return nats.ErrMsgNoReply
	}
	for _, o := range opts {
		o(m)
	}
	m.Subject = r.reply
	if err := r.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("%w: %s", micro.ErrRespond, err)
	}
	return nil
}

func (r *request) Data() []byte           { return r.data }
func (r *request) Headers() micro.Headers { return r.headers }
func (r *request) Subject() string        { return r.subject }
func (r *request) Reply() string          { return r.reply }

// handler adapts f to a micro handler: continue the caller's trace, check
// who calls (the last subject token, which NATS permissions vouch for) and
// on whose behalf (the actor header), decode, call, and reply with the
// response or the error's kind, message, reason and field.
func handler[Req, Resp proto.Message](tp trace.TracerProvider, log *slog.Logger, service string, ep endpoints.Endpoint[Req, Resp], f Func[Req, Resp]) micro.Handler {
	desc := ep.NewRequest().ProtoReflect().Descriptor()
	return natsx.TraceHandler(tp, service+" "+string(desc.Name()), func(ctx context.Context, r micro.Request) {
		req := ep.NewRequest()
		var resp proto.Message
		actor, err := authorize(ep.Info(), r.Subject(), vocab.Actor(r.Headers().Get(bus.HeaderActor)))
		if err == nil {
			if err = proto.Unmarshal(r.Data(), req); err != nil {
				err = apierr.Malformed("malformed %s: %v", desc.Name(), err)
			} else if field, found := msgcheck.NUL(req); found {
				err = apierr.Invalid(field, "must not contain a NUL byte")
			}
		}
		if err == nil {
			if callerOf(r.Subject()) == subjects.Gateway { // only the gateway has API clients
				if src := r.Headers().Get(bus.HeaderSource); src != "" {
					ctx = context.WithValue(ctx, sourceKey{}, src)
				}
				if role := r.Headers().Get(bus.HeaderRole); role != "" {
					ctx = context.WithValue(ctx, credentialKey{}, Credential{Role: vocab.Role(role), TokenID: r.Headers().Get(bus.HeaderTokenID)})
				}
			}
			resp, err = f(ctx, actor, req)
		}
		var data []byte
		if err == nil {
			data, err = proto.Marshal(resp)
		}
		if err == nil {
			if err = r.Respond(data); err == nil {
				return
			}
			// The caller must hear of it now, not time out: a reply larger
			// than the bus's message limit is the usual cause.
			err = fmt.Errorf("send the %d-byte reply to %s: %w", len(data), desc.Name(), err)
		}
		e := apierr.Public(ctx, log, err)
		if rerr := r.Error(string(e.Kind), e.Message, nil, micro.WithHeaders(e.BusHeaders())); rerr != nil {
			log.ErrorContext(ctx, "cannot reply", "endpoint", desc.Name(), "error", rerr)
		}
	})
}

// callerOf is the caller a request subject names: its last token.
func callerOf(subject string) string { return subject[strings.LastIndexByte(subject, '.')+1:] }

type sourceKey struct{}

// Source is the address of the API client a request was made for, as the
// gateway named it (ForClient); "" for requests that are not a client's.
func Source(ctx context.Context) string {
	s, _ := ctx.Value(sourceKey{}).(string)
	return s
}

type credentialKey struct{}

// Credential is the API credential a request was made with, as the
// gateway verified it: its effective role and the token's id.
type Credential struct {
	Role    vocab.Role
	TokenID string
}

// CredentialOf is the credential of the API client a request was made
// for, as the gateway named it (WithCredential); zero for requests that
// are not a client's.
func CredentialOf(ctx context.Context) Credential {
	c, _ := ctx.Value(credentialKey{}).(Credential)
	return c
}

// authorize checks a request to the endpoint: the caller named by the last
// subject token must be one of the endpoint's declared callers, and the
// actor it acts for must be one that caller may speak for — an operator
// (user:) only through the gateway, an agent only through the agent
// gateway, and every service for itself. An empty actor is the caller
// itself.
func authorize(ep endpoints.Info, subject string, actor vocab.Actor) (vocab.Actor, error) {
	caller := callerOf(subject)
	if !ep.CalledBy(caller) {
		return "", apierr.PermissionDenied("%s.%s may not be called by %q", ep.Service, ep.Name, caller)
	}
	if actor == "" {
		return vocab.System(caller), nil
	}
	ok := false
	switch actor.Kind() {
	case vocab.ActorSystem:
		ok = actor.Name() == caller
	case vocab.ActorUser:
		ok = caller == subjects.Gateway && actor.Name() != ""
	case vocab.ActorAgent:
		ok = caller == subjects.AgentGW && actor.Name() != ""
	}
	if !ok {
		return "", apierr.PermissionDenied("%s may not act as %q", caller, actor)
	}
	return actor, nil
}

// flush makes sure the server has the new subscriptions before a caller on
// another connection sends to them.
func flush(nc *nats.Conn, who string) error {
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("%s: flush subscriptions: %w", who, err)
	}
	return nil
}
