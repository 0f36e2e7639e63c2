// Package rpc builds Flotilla's request/reply services on the bus: a nats
// micro service per Flotilla service, in the subject group
// subjects.ServiceGroup(name), with typed protobuf endpoints, errors mapped
// through apierr, trace context continued from the caller, and the ping
// endpoint the gateway's status check calls.
package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/natsx"
)

// Service is one Flotilla service's endpoints on the bus.
type Service struct {
	nc    *nats.Conn
	name  string
	svc   micro.Service
	group micro.Group
	log   *slog.Logger
	tp    trace.TracerProvider
}

// Func is a typed endpoint: it gets the caller's actor and decoded request.
type Func[Req, Resp proto.Message] func(ctx context.Context, actor string, req Req) (Resp, error)

// New adds the micro service for name, with a ping endpoint that answers
// when ready reports no error (ready may be nil).
func New(nc *nats.Conn, name, version, description string, log *slog.Logger, tp trace.TracerProvider, ready func(context.Context) error) (*Service, error) {
	if version == "" {
		version = "0.0.0-dev" // micro requires a semantic version
	}
	svc, err := micro.AddService(nc, micro.Config{Name: name, Version: version, Description: description})
	if err != nil {
		return nil, fmt.Errorf("add %s service: %w", name, err)
	}
	s := &Service{nc: nc, name: name, svc: svc, group: svc.AddGroup(subjects.ServiceGroup(name)), log: log, tp: tp}
	ping := Func[*systemv1.PingRequest, *systemv1.PingResponse](func(ctx context.Context, _ string, _ *systemv1.PingRequest) (*systemv1.PingResponse, error) {
		if ready != nil {
			if err := ready(ctx); err != nil {
				return nil, apierr.Unavailable("%s is not ready: %v", name, err)
			}
		}
		return &systemv1.PingResponse{Service: name, Version: version}, nil
	})
	if err := s.group.AddEndpoint("ping", Handler(s, ping), micro.WithEndpointSubject("ping")); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("add %s ping endpoint: %w", name, err)
	}
	return s, s.flush()
}

// Handle adds an endpoint at subjects.Endpoint(service, noun, verb).
func Handle[Req, Resp proto.Message](s *Service, noun, verb string, f Func[Req, Resp]) error {
	if err := s.group.AddEndpoint(noun+"_"+verb, Handler(s, f), micro.WithEndpointSubject(noun+"."+verb)); err != nil {
		return fmt.Errorf("add endpoint %s.%s.%s: %w", s.name, noun, verb, err)
	}
	return s.flush()
}

// Handler adapts f to a micro handler: decode, call with the actor header,
// reply with the response or the error's kind and caller-safe message.
func Handler[Req, Resp proto.Message](s *Service, f Func[Req, Resp]) micro.Handler {
	var zero Req
	desc := zero.ProtoReflect().Descriptor()
	return natsx.TraceHandler(s.tp, s.name+" "+string(desc.Name()), func(ctx context.Context, r micro.Request) {
		req := zero.ProtoReflect().New().Interface().(Req)
		var resp proto.Message
		err := proto.Unmarshal(r.Data(), req)
		if err != nil {
			err = apierr.Invalid("", "malformed %s: %v", desc.Name(), err)
		} else {
			resp, err = f(ctx, r.Headers().Get(bus.HeaderActor), req)
		}
		var data []byte
		if err == nil {
			data, err = proto.Marshal(resp)
		}
		if err != nil {
			kind, msg := apierr.Public(ctx, s.log, err)
			_ = r.Error(string(kind), msg, nil)
			return
		}
		_ = r.Respond(data)
	})
}

// Stop stops taking requests; requests in flight finish.
func (s *Service) Stop() error { return s.svc.Stop() }

// flush makes sure the server has the new subscriptions before a caller on
// another connection sends to them.
func (s *Service) flush() error {
	if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("%s: flush subscriptions: %w", s.name, err)
	}
	return nil
}
