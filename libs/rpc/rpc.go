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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
//
// An instance with a readiness check watches it, and steps out of its
// queue groups while it fails and another instance of the service is ready:
// its requests then go to the instances that can serve them, rather than a
// share of them being answered "not ready" (one host cut off from
// PostgreSQL, say). It goes on answering pings (not ready), and steps back
// in when it is ready again. An instance with no ready peer stays in and
// answers every request it cannot serve as unavailable, as before: nobody
// else could have served it. Stepping out, it gives up the requests it has
// in hand: those stuck on what made it not ready (a database out of reach)
// are answered unavailable at once, not when their callers stop waiting.
type Service struct {
	nc          *nats.Conn
	name        string
	config      micro.Config
	log         *slog.Logger
	tp          trace.TracerProvider
	concurrency int
	// ready is the service's readiness check (New's), nil if it has none.
	ready func(context.Context) error
	// peers asks the service's ping whether another instance is ready.
	peers *Client

	mu       sync.Mutex
	svc      micro.Service // serving every endpoint, or only the pings while out
	eps      []added
	out      bool         // stepped out of the queue groups
	paused   bool         // serving nothing while the connection is made again (pause)
	notReady string       // the last readiness check's error, "" when it passed
	busy     atomic.Int64 // requests handed to the pool and not yet answered
	remake   *natsx.Quiescer
	// serving is the context the requests of queue-group endpoints are
	// worked on under: it ends, its cause a steppedOut, when the instance
	// steps out, and a new one begins when it steps back in.
	serving atomic.Pointer[serving]

	nudge   chan struct{} // a request failed while not ready: check now
	quit    chan struct{}
	stop    sync.Once
	watched sync.WaitGroup
}

// added is an endpoint Handle added, kept to add again when the service
// steps back in.
type added struct {
	name    string
	handler micro.Handler
	opts    []micro.EndpointOpt
	every   bool // not in a queue group: served while out too
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
	config := micro.Config{Name: name, Version: version, Description: description}
	svc, err := micro.AddService(nc, config)
	if err != nil {
		return nil, fmt.Errorf("add %s service: %w", name, err)
	}
	s := &Service{nc: nc, name: name, config: config, svc: svc, log: log, tp: tp, concurrency: DefaultConcurrency, ready: ready,
		peers: NewClient(nc, name, readyCheckTimeout), nudge: make(chan struct{}, 1), quit: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	s.serving.Store(newServing())
	err = Handle(s, ping, func(ctx context.Context, actor vocab.Actor, _ *systemv1.PingRequest) (*systemv1.PingResponse, error) {
		if err := s.checkReady(ctx); err != nil {
			return nil, apierr.Unavailable("%s is not ready: %v", name, err)
		}
		if _, out := s.Readiness(); out && actor == vocab.System(name) {
			// Asked by another instance whether it may step out: one that
			// serves nothing is no peer to leave the requests to.
			return nil, apierr.Unavailable("this %s instance is out of its queue groups", name)
		}
		return &systemv1.PingResponse{Service: name, Version: version}, nil
	})
	if err != nil {
		_ = svc.Stop()
		return nil, err
	}
	if ready != nil {
		registerMetrics()
		s.watched.Add(1)
		go s.watch()
	}
	s.remake = natsx.OnRemake(nc, s.pause)
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
	f = transientAsUnavailable(s, f)
	opts := []micro.EndpointOpt{micro.WithEndpointSubject(info.ServeSubject())}
	if info.Every {
		opts = append(opts, micro.WithEndpointQueueGroupDisabled())
	}
	a := added{name: name, handler: s.pooled(handler(s.tp, s.log, s.name, ep, f), info.Every), opts: opts, every: info.Every}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused && (a.every || !s.out) {
		if err := s.svc.AddEndpoint(a.name, a.handler, a.opts...); err != nil {
			return fmt.Errorf("add endpoint %s: %w", info.Subject, err)
		}
	}
	s.eps = append(s.eps, a)
	return flush(s.nc, s.name)
}

// readyCheckTimeout bounds the readiness check made after a request failed.
const readyCheckTimeout = 2 * time.Second

// transientAsUnavailable answers an internal error of f as unavailable
// when it came from something passing, and the caller may try again
// shortly, rather than take it for a fault in Flotilla: the instance
// stepping out of its queue groups (it gives up the requests in hand), the
// caller's time running out (the handler's context ended with it), a
// connection lost while f used it (to the database, a network error: a
// host cut off or coming back, a failover), or the service not ready just
// then (its readiness check fails: its database unreachable while
// PostgreSQL fails over, say; said as such, when a connection was lost
// too). A request that changes something may or may not have done so: the
// error says it. The cause is logged as a warning.
func transientAsUnavailable[Req, Resp proto.Message](s *Service, f Func[Req, Resp]) Func[Req, Resp] {
	return func(ctx context.Context, actor vocab.Actor, req Req) (Resp, error) {
		resp, err := f(ctx, actor, req)
		if err == nil || apierr.KindOf(err) != apierr.KindInternal {
			return resp, err
		}
		unavailable := func(what, logged string, attrs ...any) (Resp, error) {
			s.log.WarnContext(ctx, logged+"; answered unavailable", append([]any{"service", s.name, "error", err}, attrs...)...)
			e := apierr.Unavailable("the %s service %s: try again shortly; a change asked for may or may not have been made", s.name, what)
			e.Err = err
			return resp, e
		}
		var out steppedOut
		if errors.As(context.Cause(ctx), &out) {
			return unavailable("is not ready just now (GET /api/v1/status says why), and gave the request up",
				"a request in hand was given up as the instance stepped out", "not_ready", out.why)
		}
		if ctx.Err() != nil { // the caller stopped waiting (natsx.HeaderTimeout)
			return unavailable("did not finish the request before its caller stopped waiting",
				"a request's caller stopped waiting before it was served")
		}
		rerr := s.checkReady(context.WithoutCancel(ctx))
		if rerr == nil && lostConnection(err) {
			return unavailable("lost a connection it needed while it served the request", "a request failed on a lost connection")
		}
		if rerr == nil {
			return resp, err
		}
		select { // the watcher checks now, and may step out
		case s.nudge <- struct{}{}:
		default:
		}
		return unavailable("is not ready just now (GET /api/v1/status says why)",
			"a request failed while the service was not ready", "not_ready", rerr)
	}
}

// lostConnection says err came from a network connection failing: refused,
// reset, unreachable, timed out or cut short.
func lostConnection(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EPIPE)
}

// Stop stops taking requests and waits for the requests in flight.
func (s *Service) Stop() error {
	s.stop.Do(func() { close(s.quit) })
	s.remake.Remove()
	s.watched.Wait()
	s.mu.Lock()
	err := s.svc.Stop()
	if s.out {
		metrics.steppedOut.WithLabelValues(s.name).Dec()
		s.out = false
	}
	s.mu.Unlock()
	s.settle(context.Background())
	return err
}

// checkReady runs the readiness check within readyCheckTimeout (nil without
// one), and keeps its result for Readiness.
func (s *Service) checkReady(ctx context.Context) error {
	if s.ready == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyCheckTimeout)
	defer cancel()
	err := s.ready(ctx)
	why := ""
	if err != nil {
		why = err.Error()
	}
	s.mu.Lock()
	s.notReady = why
	s.mu.Unlock()
	return err
}

// Readiness is why the service's last readiness check failed ("" when it
// passed, and for a service without one), and whether the instance is out
// of its queue groups for it.
func (s *Service) Readiness() (notReady string, out bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notReady, s.out
}

// How the readiness watcher paces itself: a check every readyEvery while
// the instance serves (and at once when a request failed for it), every
// outReadyEvery while it is out, so it is back within a fraction of a
// second of being ready. One failed check steps it out when another
// instance is ready: a check failed only by a slow moment costs little,
// the other instance serving until the next check.
const (
	readyEvery    = time.Second
	outReadyEvery = 250 * time.Millisecond
)

// watch checks readiness until Stop, and steps the instance out of its
// queue groups or back in (see Service).
func (s *Service) watch() {
	defer s.watched.Done()
	for {
		s.mu.Lock()
		out := s.out
		s.mu.Unlock()
		wait := readyEvery
		if out {
			wait = outReadyEvery
		}
		select {
		case <-s.quit:
			return
		case <-time.After(wait):
		case <-s.nudge:
		}
		err := s.checkReady(context.Background())
		switch {
		case out && err == nil:
			s.step(true, nil)
		case !out && err != nil && s.peerReady():
			s.step(false, err)
		}
	}
}

// peerReady reports whether another instance of the service answers its
// ping ready and serving: this one's own answer is "not ready" while its
// check fails, and one that is out answers its peers no.
func (s *Service) peerReady() bool {
	ping, _ := endpoints.Ping(s.name)
	_, err := Call(context.Background(), s.peers, ping, &systemv1.PingRequest{})
	return err == nil
}

// step puts the instance in its queue groups (in) or takes it out, serving
// its pings alone: a new micro service with the endpoints it serves, then
// the old one stopped, its requests received being answered as they come
// (drained). A failure leaves the instance as it was, to try at the next
// check. While paused, only the state changes: resume serves by it.
func (s *Service) step(in bool, why error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out != in {
		return
	}
	if !s.paused {
		svc, err := s.serve(in)
		if err == nil {
			err = flush(s.nc, s.name)
		}
		if err != nil {
			if svc != nil {
				_ = svc.Stop()
			}
			s.log.Warn("cannot change the service's endpoints; trying again at the next readiness check",
				"service", s.name, "serve", in, "error", err)
			return
		}
		if err := s.svc.Stop(); err != nil {
			s.log.Warn("cannot stop the service's old endpoints", "service", s.name, "error", err)
		}
		s.svc = svc
	}
	s.out = !in
	if in {
		s.serving.Store(newServing())
		metrics.steppedOut.WithLabelValues(s.name).Dec()
		s.log.Info("ready again: serving requests", "service", s.name)
		return
	}
	s.serving.Load().end(steppedOut{why})
	metrics.steppedOut.WithLabelValues(s.name).Inc()
	metrics.stepOuts.WithLabelValues(s.name).Inc()
	s.log.Warn("not ready while another instance is: stepped out of the queue groups until ready",
		"service", s.name, "not_ready", why)
}

// serving is one spell of an instance in its queue groups (Service.serving).
type serving struct {
	ctx context.Context
	end context.CancelCauseFunc
}

func newServing() *serving {
	ctx, end := context.WithCancelCause(context.Background())
	return &serving{ctx: ctx, end: end}
}

// steppedOut ends a serving: the instance stepped out, not ready for why.
type steppedOut struct{ why error }

func (e steppedOut) Error() string {
	return fmt.Sprintf("the instance stepped out of its queue groups: %v", e.why)
}

// serve adds a micro service with the endpoints the instance serves: every
// one (in), or the pings alone.
func (s *Service) serve(in bool) (micro.Service, error) {
	svc, err := micro.AddService(s.nc, s.config)
	if err != nil {
		return nil, err
	}
	for _, a := range s.eps {
		if in || a.every {
			if err := svc.AddEndpoint(a.name, a.handler, a.opts...); err != nil {
				_ = svc.Stop()
				return nil, err
			}
		}
	}
	return svc, nil
}

// quietFor is how long the requests in hand must have stayed at none
// before settle counts the instance quiet: the last requests the server
// sent before it had the unsubscriptions may still be on their way to a
// handler.
const quietFor = 20 * time.Millisecond

// settle returns once the server has the unsubscriptions just sent (or
// readyCheckTimeout passed, the connection being down) and no request has
// been in hand for quietFor, or when ctx ends.
func (s *Service) settle(ctx context.Context) {
	settle(ctx, s.nc, func() bool { return s.busy.Load() == 0 })
}

// settle returns once the server has answered a flush of nc (so it has
// what nc sent, and nc has every message the server sent it before; or
// readyCheckTimeout passed, the connection being down) and idle has held
// for quietFor, or when ctx ends.
func settle(ctx context.Context, nc *nats.Conn, idle func() bool) {
	fctx, cancel := context.WithTimeout(ctx, readyCheckTimeout)
	_ = nc.FlushWithContext(fctx)
	cancel()
	const step = 5 * time.Millisecond
	for quiet := time.Duration(0); quiet < quietFor && ctx.Err() == nil; {
		time.Sleep(step)
		if idle() {
			quiet += step
		} else {
			quiet = 0
		}
	}
}

// pause is the instance's part in a reconnection made on purpose (see
// natsx.Quiescer): it stops serving, every endpoint drained, and returns
// once the server has the unsubscriptions and no request is in flight, or
// when ctx ends. Other instances take the requests meanwhile. resume
// serves again as before.
func (s *Service) pause(ctx context.Context) (resume func()) {
	s.mu.Lock()
	if s.paused {
		s.mu.Unlock()
		return nil
	}
	s.paused = true
	err := s.svc.Stop()
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("cannot stop the service's endpoints for a reconnection", "service", s.name, "error", err)
	}
	s.settle(ctx)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-s.quit: // stopped meanwhile
			return
		default:
		}
		if !s.paused {
			return
		}
		svc, err := s.serve(!s.out)
		if err != nil {
			// Not expected: the same endpoints were served before. The
			// service cannot answer until it is restarted, so it says so.
			s.log.Error("cannot serve the service's endpoints again after a reconnection; restart it", "service", s.name, "error", err)
			return
		}
		s.svc, s.paused = svc, false
	}
}

// pooled serves an endpoint's requests on up to s.concurrency goroutines:
// the subscription's callback hands each request over and takes the next,
// and waits only while the pool is full. The requests of a queue-group
// endpoint (not every) are worked on under s.serving.
func (s *Service) pooled(h micro.Handler, every bool) micro.Handler {
	slots := make(chan struct{}, s.concurrency)
	return micro.HandlerFunc(func(r micro.Request) {
		s.busy.Add(1)
		slots <- struct{}{}
		req := &request{ctx: context.Background(), nc: s.nc, subject: r.Subject(), reply: r.Reply(), data: r.Data(), headers: r.Headers()}
		if !every {
			req.ctx = s.serving.Load().ctx
		}
		go func() {
			defer s.busy.Add(-1)
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
	ctx            context.Context // what it is worked on under (natsx.TraceHandler)
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

func (r *request) Context() context.Context { return r.ctx }
func (r *request) Data() []byte             { return r.data }
func (r *request) Headers() micro.Headers   { return r.headers }
func (r *request) Subject() string          { return r.subject }
func (r *request) Reply() string            { return r.reply }

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
