package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/natsx"
)

// Subscriber serves per-instance endpoints (Subscribe) on one connection,
// with one goroutine for all its subscriptions: a subscription of nats.go's
// with a handler keeps a goroutine of its own, and the agent gateway holds
// one for each of its thousands of agents, nearly all quiet. Each request
// is handled on a goroutine of its own while it lasts, so a slow one holds
// up no other subscription's (nor its own next request: requests sent
// without waiting for an answer are handled in any order).
//
// Before its connection is made again on purpose (a homecoming; see
// natsx.Quiescer) a Subscriber turns new requests away, answering them on
// the connection they came by, so that their callers send them again
// (untilTaken) once the subscriptions are back; and it waits for the
// requests in hand to be answered. Each endpoint has one responder, so
// there is no other instance to leave them to, and thousands of
// subscriptions are not worth dropping and making again.
type Subscriber struct {
	nc     *nats.Conn
	msgs   chan *nats.Msg
	done   chan struct{}
	close  sync.Once
	remake *natsx.Quiescer
	busy   atomic.Int64 // requests handed to a handler and not yet answered

	mu       sync.RWMutex
	handlers map[*nats.Subscription]micro.Handler
	paused   bool // turning requests away while the connection is made again
}

// subscriberQueue bounds the requests a Subscriber has received and not yet
// handed to a goroutine; nats.go drops those beyond it as a slow consumer's
// (their senders time out). Handing one over takes microseconds.
const subscriberQueue = 4096

// NewSubscriber serves per-instance endpoints on nc until Close.
func NewSubscriber(nc *nats.Conn) *Subscriber {
	s := &Subscriber{
		nc:       nc,
		msgs:     make(chan *nats.Msg, subscriberQueue),
		done:     make(chan struct{}),
		handlers: map[*nats.Subscription]micro.Handler{},
	}
	s.remake = natsx.OnRemake(nc, s.pause)
	go s.dispatch()
	return s
}

// dispatch hands each request to its subscription's handler, on a goroutine
// of the request's own, or turns it away while paused; a request whose
// subscription has ended is dropped, as nats.go drops those of an ended
// subscription with a handler.
func (s *Subscriber) dispatch() {
	for {
		select {
		case <-s.done:
			return
		case m := <-s.msgs:
			s.mu.RLock()
			h, paused := s.handlers[m.Sub], s.paused
			if h != nil && !paused {
				s.busy.Add(1) // before pause can look
			}
			s.mu.RUnlock()
			switch {
			case h == nil:
			case paused:
				go turnAway(m)
			default:
				go func() {
					defer s.busy.Add(-1)
					h.Handle(msgRequest{m})
				}()
			}
		}
	}
}

// turnAway answers m unavailable, marked as not taken: its caller sends
// it again.
func turnAway(m *nats.Msg) {
	e := apierr.Unavailable("the responder is reconnecting to the bus; try again shortly")
	h := e.BusHeaders()
	h[headerNotTaken] = []string{"reconnecting"}
	_ = msgRequest{m}.Error(string(e.Kind), e.Message, nil, micro.WithHeaders(h))
}

// pause is the Subscriber's part in a reconnection made on purpose: from
// now on it turns requests away, and it returns once the server has sent
// it every request it had for it (a flush) and those are answered or
// turned away, or when ctx ends. resume handles requests again.
func (s *Subscriber) pause(ctx context.Context) (resume func()) {
	s.mu.Lock()
	s.paused = true
	s.mu.Unlock()
	settle(ctx, s.nc, func() bool { return s.busy.Load() == 0 && len(s.msgs) == 0 })
	return func() {
		s.mu.Lock()
		s.paused = false
		s.mu.Unlock()
	}
}

// Close stops serving: requests received from then on are dropped.
// Subscriptions still held should be unsubscribed first.
func (s *Subscriber) Close() {
	s.close.Do(func() {
		s.remake.Remove()
		close(s.done)
	})
}

// Subscription is one endpoint a Subscriber serves.
type Subscription struct {
	s   *Subscriber
	sub *nats.Subscription
}

// Unsubscribe stops serving the endpoint: requests already received and not
// yet handed over are dropped.
func (x *Subscription) Unsubscribe() error {
	x.s.mu.Lock()
	delete(x.s.handlers, x.sub)
	x.s.mu.Unlock()
	return x.sub.Unsubscribe()
}

// Subscribe serves a per-instance endpoint, bound to one instance with At,
// on s's connection alone: no queue group, so a request reaches the one
// process holding the subscription (the agent gateway node an agent is
// connected to) and no responders means nobody holds it. Unsubscribe to
// stop. Flush the connection before telling anyone the endpoint is served:
// until the server has the subscription, a request from another connection
// finds no responders.
func Subscribe[Req, Resp proto.Message](s *Subscriber, service string, ep endpoints.Endpoint[Req, Resp], log *slog.Logger, tp trace.TracerProvider, f Func[Req, Resp]) (*Subscription, error) {
	info := ep.Info()
	if info.Service != service || info.PerInstance() {
		return nil, fmt.Errorf("rpc: %s cannot subscribe to %s.%s at %s (bind it to an instance with At)", service, info.Service, info.Name, info.Subject)
	}
	h := handler(tp, log, service, ep, f)
	// The handler is known before the first request can be dispatched.
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.nc.ChanSubscribe(info.ServeSubject(), s.msgs)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", info.Subject, err)
	}
	s.handlers[sub] = h
	return &Subscription{s: s, sub: sub}, nil
}

// msgRequest is a plain NATS request seen as a micro.Request, so per-instance
// endpoints reply exactly as micro endpoints do.
type msgRequest struct{ m *nats.Msg }

func (r msgRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.respond(&nats.Msg{Data: data}, opts)
}

func (r msgRequest) RespondJSON(any, ...micro.RespondOpt) error {
	return fmt.Errorf("rpc: JSON replies are not used")
}

func (r msgRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Data: data, Header: nats.Header{micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code}}}
	return r.respond(m, opts)
}

func (r msgRequest) respond(m *nats.Msg, opts []micro.RespondOpt) error {
	for _, o := range opts {
		o(m)
	}
	if r.m.Reply == "" {
		return nil
	}
	return r.m.RespondMsg(m)
}

func (r msgRequest) Data() []byte           { return r.m.Data }
func (r msgRequest) Headers() micro.Headers { return micro.Headers(r.m.Header) }
func (r msgRequest) Subject() string        { return r.m.Subject }
func (r msgRequest) Reply() string          { return r.m.Reply }
