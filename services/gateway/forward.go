package gateway

import (
	"context"

	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
)

// call sends req to a declared endpoint on behalf of the request's user and
// returns its reply, or the service's error as a gRPC status (which the REST
// gateway turns into the matching HTTP status and JSON body).
func call[Req, Resp proto.Message](ctx context.Context, g *Gateway, ep endpoints.Endpoint[Req, Resp], req Req) (Resp, error) {
	opts := []rpc.CallOption{rpc.As(actorFrom(ctx)), rpc.ForClient(clientAddr(ctx))}
	if u := userFrom(ctx); u != nil {
		opts = append(opts, rpc.WithCredential(rpc.Credential{Role: vocab.Role(u.GetRole()), TokenID: u.GetTokenId()}))
	}
	resp, err := rpc.Call(ctx, g.bus, ep, req, opts...)
	if err != nil {
		var zero Resp
		return zero, apierr.GRPCStatus(ctx, g.log, err)
	}
	return resp, nil
}
