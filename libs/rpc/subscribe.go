package rpc

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
)

// Subscriber serves per-instance endpoints (Subscribe) on one connection,
// with one goroutine for all its subscriptions: a subscription of nats.go's
// with a handler keeps a goroutine of its own, and the agent gateway holds
// one for each of its thousands of agents, nearly all quiet. Each request
// is handled on a goroutine of its own while it lasts, so a slow one holds
// up no other subscription's (nor its own next request: requests sent
// without waiting for an answer are handled in any order).
type Subscriber struct {
	nc    *nats.Conn
	msgs  chan *nats.Msg
	done  chan struct{}
	close sync.Once

	mu       sync.RWMutex
	handlers map[*nats.Subscription]micro.Handler
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
	go s.dispatch()
	return s
}

// dispatch hands each request to its subscription's handler, on a goroutine
// of the request's own; a request whose subscription has ended is dropped,
// as nats.go drops those of an ended subscription with a handler.
func (s *Subscriber) dispatch() {
	for {
		select {
		case <-s.done:
			return
		case m := <-s.msgs:
			s.mu.RLock()
			h := s.handlers[m.Sub]
			s.mu.RUnlock()
			if h != nil {
				go h.Handle(msgRequest{m})
			}
		}
	}
}

// Close stops serving: requests received from then on are dropped.
// Subscriptions still held should be unsubscribed first.
func (s *Subscriber) Close() { s.close.Do(func() { close(s.done) }) }

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
