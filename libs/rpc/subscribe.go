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
// natsx.Quiescer) a Subscriber drains its subscriptions: the server stops
// sending it requests, those it sent before are answered on the connection
// they came by, and callers meanwhile find no responders and send again
// (untilTaken). Once the connection is back it subscribes again. A
// request the server had sent down a connection about to be closed would
// be lost, and an answer sent on the new connection refused (NATS response
// permissions): the caller would wait out its timeout.
type Subscriber struct {
	nc     *nats.Conn
	msgs   chan *nats.Msg
	done   chan struct{}
	close  sync.Once
	remake *natsx.Quiescer
	busy   atomic.Int64 // requests handed to a handler and not yet answered

	mu sync.RWMutex
	// served holds every endpoint served; bySub finds one by the
	// subscription a request came by (while paused, also by the drained
	// one, for the requests the server sent before it had the drain).
	served map[*served]struct{}
	bySub  map[*nats.Subscription]*served
	paused bool // drained: subscribing again once the connection is back
}

// served is one endpoint a Subscriber serves: its subject, its handler, and
// its subscription (nil while paused; drained then).
type served struct {
	subject      string
	h            micro.Handler
	sub, drained *nats.Subscription
}

// subscriberQueue bounds the requests a Subscriber has received and not yet
// handed to a goroutine; nats.go drops those beyond it as a slow consumer's
// (their senders time out). Handing one over takes microseconds.
const subscriberQueue = 4096

// NewSubscriber serves per-instance endpoints on nc until Close.
func NewSubscriber(nc *nats.Conn) *Subscriber {
	s := &Subscriber{
		nc:     nc,
		msgs:   make(chan *nats.Msg, subscriberQueue),
		done:   make(chan struct{}),
		served: map[*served]struct{}{},
		bySub:  map[*nats.Subscription]*served{},
	}
	s.remake = natsx.OnRemake(nc, s.pause)
	go s.dispatch()
	return s
}

// dispatch hands each request to its endpoint's handler, on a goroutine of
// the request's own; a request whose endpoint is no longer served is
// dropped, as nats.go drops those of an ended subscription with a handler.
func (s *Subscriber) dispatch() {
	for {
		select {
		case <-s.done:
			return
		case m := <-s.msgs:
			s.mu.RLock()
			e := s.bySub[m.Sub]
			if e != nil {
				s.busy.Add(1) // before pause can look
			}
			s.mu.RUnlock()
			if e != nil {
				go func() {
					defer s.busy.Add(-1)
					e.h.Handle(msgRequest{m})
				}()
			}
		}
	}
}

// pause is the Subscriber's part in a reconnection made on purpose: it
// drains every subscription, and returns once the server has the drains
// (a flush), nats.go has let the subscriptions go, and the requests sent
// before are answered; or when ctx ends. resume subscribes again.
func (s *Subscriber) pause(ctx context.Context) (resume func()) {
	s.mu.Lock()
	s.paused = true
	drained := make([]*nats.Subscription, 0, len(s.served))
	for e := range s.served {
		if e.sub != nil {
			_ = e.sub.Drain() // fails only on a closed connection
			drained = append(drained, e.sub)
			e.sub, e.drained = nil, e.sub
		}
	}
	s.mu.Unlock()
	settle(ctx, s.nc, func() bool {
		for len(drained) > 0 && !drained[len(drained)-1].IsValid() {
			drained = drained[:len(drained)-1]
		}
		return len(drained) == 0 && s.busy.Load() == 0 && len(s.msgs) == 0
	})
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.paused = false
		for e := range s.served {
			if e.drained != nil {
				delete(s.bySub, e.drained)
				e.drained = nil
			}
			_ = s.subscribe(e) // fails only on a closed connection
		}
	}
}

// subscribe subscribes e, unless it is or s is paused; s.mu is held.
func (s *Subscriber) subscribe(e *served) error {
	if s.paused || e.sub != nil {
		return nil
	}
	sub, err := s.nc.ChanSubscribe(e.subject, s.msgs)
	if err != nil {
		return err
	}
	e.sub = sub
	s.bySub[sub] = e
	return nil
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
	s *Subscriber
	e *served
}

// Unsubscribe stops serving the endpoint: requests already received and not
// yet handed over are dropped.
func (x *Subscription) Unsubscribe() error {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	delete(x.s.served, x.e)
	delete(x.s.bySub, x.e.drained)
	sub := x.e.sub
	x.e.sub, x.e.drained = nil, nil
	if sub == nil {
		return nil // paused: it will not be subscribed again
	}
	delete(x.s.bySub, sub)
	return sub.Unsubscribe()
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
	e := &served{subject: info.ServeSubject(), h: handler(tp, log, service, ep, f)}
	// The handler is known before the first request can be dispatched.
	// While s is paused, the endpoint is subscribed with the others once
	// the connection is back.
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.subscribe(e); err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", info.Subject, err)
	}
	s.served[e] = struct{}{}
	return &Subscription{s: s, e: e}, nil
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
