package agentgw

import (
	"context"
	"crypto/x509"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/pki"
)

// identity is the agent at the other end of a call, from its verified
// client certificate.
type identity struct {
	instanceID string
	cert       *x509.Certificate
	// resumed says the call came over a resumed TLS session (see
	// tickets.go).
	resumed bool
}

type identityKey struct{}

// identityFrom returns the caller's identity put in ctx by the interceptors.
func identityFrom(ctx context.Context) identity {
	id, _ := ctx.Value(identityKey{}).(identity)
	return id
}

// authenticate admits Join without a certificate and every other method
// only with a verified agent certificate from the fleet CA, whose subject CN
// becomes the caller's instance id.
func (s *Service) authenticate(ctx context.Context, method string) (context.Context, error) {
	if method == agentv1.AgentGateway_Join_FullMethodName {
		return ctx, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "an agent certificate from the fleet CA is required")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "an agent certificate from the fleet CA is required")
	}
	id, err := pki.PeerInstanceID(info.State)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "an agent certificate from the fleet CA is required: %v", err)
	}
	return context.WithValue(ctx, identityKey{}, identity{instanceID: id, cert: info.State.VerifiedChains[0][0], resumed: info.State.DidResume}), nil
}

func (s *Service) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Service) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &authedStream{ServerStream: ss, ctx: ctx})
}

// authedStream is a server stream whose context carries the identity.
type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *authedStream) Context() context.Context { return a.ctx }
