package gateway

import (
	"context"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/rpc"
)

// call sends req to an inventory endpoint over the bus and returns its reply,
// or the inventory's error as a gRPC status (which the REST gateway turns
// into the matching HTTP status).
func call[Resp proto.Message](ctx context.Context, g *Gateway, noun, verb string, req proto.Message) (Resp, error) {
	return callService[Resp](ctx, g, subjects.Inventory, noun, verb, req)
}

func callService[Resp proto.Message](ctx context.Context, g *Gateway, service, noun, verb string, req proto.Message) (Resp, error) {
	var zero Resp
	resp := zero.ProtoReflect().New().Interface().(Resp)
	hdr := nats.Header{}
	hdr.Set(bus.HeaderActor, actorFrom(ctx))
	rctx, cancel := context.WithTimeout(ctx, g.requestTimeout)
	defer cancel()
	err := natsx.Request(rctx, g.nc, subjects.Endpoint(service, noun, verb), req, resp, hdr)
	if err != nil {
		return zero, apierr.GRPCStatus(ctx, g.log, rpc.ClientError(service, err))
	}
	return resp, nil
}
