package agentgw

import (
	"context"
	"fmt"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
)

// acme answers an agent's ACME request, as the instance its certificate
// names: the network's account key and the certificate kept for the
// instance from the CA (which has the secret broker keep them), DNS-01
// records from the provisioner (which writes them with the network's cloud
// account, so the agent never holds cloud credentials). A refusal says why
// and carries no key; keys are never logged.
func (s *Service) acme(ctx context.Context, id string, req *agentv1.AcmeRequest) *agentv1.GatewayMessage {
	resp := &agentv1.AcmeResponse{RequestId: req.GetRequestId()}
	as := rpc.As(vocab.Agent(id))
	var (
		err  error
		what string
	)
	switch a := req.GetAction().(type) {
	case *agentv1.AcmeRequest_AccountKey:
		what = "account key"
		var k *cav1.AcmeAccountKey
		if k, err = rpc.Call(ctx, s.bus, endpoints.ACMEAccountGet, &cav1.GetAcmeAccountRequest{InstanceId: id}, as); err == nil {
			resp.PrivateKeyPem = k.GetPrivateKeyPem()
		}
	case *agentv1.AcmeRequest_StoredCertificate:
		what = "kept certificate"
		var c *cav1.AcmeCertificate
		c, err = rpc.Call(ctx, s.bus, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: id}, as)
		switch {
		case apierr.Is(err, apierr.KindNotFound):
			err = nil // none kept (or none good any more): an empty answer
		case err == nil:
			resp.CertificatePem, resp.PrivateKeyPem = c.GetCertificatePem(), c.GetPrivateKeyPem()
		}
	case *agentv1.AcmeRequest_StoreCertificate:
		what = "certificate to keep"
		_, err = rpc.Call(ctx, s.bus, endpoints.ACMECertPut, &cav1.PutAcmeCertificateRequest{InstanceId: id,
			CertificatePem: a.StoreCertificate.GetCertificatePem(), PrivateKeyPem: a.StoreCertificate.GetPrivateKeyPem()}, as)
	case *agentv1.AcmeRequest_DnsChallenge:
		ch := a.DnsChallenge
		what = fmt.Sprintf("DNS-01 record of %q (remove: %t)", ch.GetDomain(), ch.GetRemove())
		ep := endpoints.DNSChallengePut
		if ch.GetRemove() {
			ep = endpoints.DNSChallengeDelete
		}
		_, err = rpc.Call(ctx, s.bus, ep, &inventoryv1.DnsChallengeRequest{InstanceId: id, Domain: ch.GetDomain(), Value: ch.GetValue()}, as)
	default:
		what, err = "nothing", apierr.Invalid("action", "is required")
	}
	if err != nil {
		resp.Error, resp.PrivateKeyPem, resp.CertificatePem = apierr.Public(ctx, s.log, err).Message, "", ""
		s.log.InfoContext(ctx, "agent ACME request refused", "instance_id", id, "asked", what, "error", resp.Error)
	}
	return &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_AcmeResponse{AcmeResponse: resp}}
}
