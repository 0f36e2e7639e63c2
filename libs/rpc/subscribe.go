package rpc

import (
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
)

// Subscribe serves a per-instance endpoint, bound to one instance with At,
// on nc alone: no queue group, so a request reaches the one process holding
// the subscription (the agent gateway node an agent is connected to) and no
// responders means nobody holds it. Unsubscribe to stop. Flush nc before
// telling anyone the endpoint is served: until the server has the
// subscription, a request from another connection finds no responders.
func Subscribe[Req, Resp proto.Message](nc *nats.Conn, service string, ep endpoints.Endpoint[Req, Resp], log *slog.Logger, tp trace.TracerProvider, f Func[Req, Resp]) (*nats.Subscription, error) {
	info := ep.Info()
	if info.Service != service || info.PerInstance() {
		return nil, fmt.Errorf("rpc: %s cannot subscribe to %s.%s at %s (bind it to an instance with At)", service, info.Service, info.Name, info.Subject)
	}
	h := handler(tp, log, service, ep, f)
	sub, err := nc.Subscribe(info.ServeSubject(), func(m *nats.Msg) { h.Handle(msgRequest{m}) })
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", info.Subject, err)
	}
	return sub, nil
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
