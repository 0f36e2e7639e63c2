package agentgw

import (
	"context"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// server implements agent.v1.AgentGateway.
type server struct {
	agentv1.UnimplementedAgentGatewayServer
	s *Service
}

// Join exchanges a join token and a CSR for the agent's certificate: the CA
// checks and consumes the token and names the instance.
func (g *server) Join(ctx context.Context, req *agentv1.JoinRequest) (*agentv1.JoinResponse, error) {
	s := g.s
	if req.GetToken() == "" {
		return nil, apierr.GRPCStatus(ctx, s.log, apierr.Invalid("token", "is required"))
	}
	if len(req.GetCsrDer()) == 0 {
		return nil, apierr.GRPCStatus(ctx, s.log, apierr.Invalid("csr_der", "is required"))
	}
	cert, err := rpc.Call(ctx, s.bus, endpoints.AgentJoin, &cav1.JoinRequest{Token: req.GetToken(), CsrDer: req.GetCsrDer()})
	if err != nil {
		s.log.InfoContext(ctx, "agent join refused", "error", err, "agent_version", req.GetAgentVersion())
		return nil, apierr.GRPCStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "agent joined", "instance_id", cert.GetInstanceId(), "agent_version", req.GetAgentVersion(),
		"not_after", cert.GetNotAfter().AsTime())
	return &agentv1.JoinResponse{
		InstanceId:     cert.GetInstanceId(),
		CertificatePem: cert.GetCertificatePem(),
		CaPem:          cert.GetCaPem(),
		NotAfter:       cert.GetNotAfter(),
	}, nil
}

// Renew certifies a new CSR for the caller's instance, taken from its
// current certificate.
func (g *server) Renew(ctx context.Context, req *agentv1.RenewRequest) (*agentv1.RenewResponse, error) {
	s := g.s
	id := identityFrom(ctx).instanceID
	if len(req.GetCsrDer()) == 0 {
		return nil, apierr.GRPCStatus(ctx, s.log, apierr.Invalid("csr_der", "is required"))
	}
	who := identityFrom(ctx)
	cert, err := rpc.Call(ctx, s.bus, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: id, CsrDer: req.GetCsrDer(),
		VmId: pki.AgentVMID(who.cert), Serial: pki.Serial(who.cert)}, rpc.As(vocab.Agent(id)))
	if err != nil {
		return nil, apierr.GRPCStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "agent certificate renewed", "instance_id", id, "not_after", cert.GetNotAfter().AsTime())
	return &agentv1.RenewResponse{CertificatePem: cert.GetCertificatePem(), NotAfter: cert.GetNotAfter()}, nil
}

// Connect serves an agent's stream (see connect.go).
func (g *server) Connect(stream agentv1.AgentGateway_ConnectServer) error {
	return g.s.connect(stream)
}
