package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// instanceOn reads the instance id and its network for the instance's own
// agent (actor), and checks the network uses strategy.
func (s *Service) instanceOn(ctx context.Context, actor vocab.Actor, id string, strategy vocab.HTTPSStrategy) (*inventoryv1.Instance, *inventoryv1.Network, error) {
	if err := pki.CheckInstanceID(id); err != nil {
		return nil, nil, apierr.Invalid("instanceId", "%s", err)
	}
	if err := actsFor(actor, id); err != nil {
		return nil, nil, err
	}
	inst, err := s.instance(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	netw, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: inst.GetNetworkId()})
	if err != nil {
		return nil, nil, fmt.Errorf("network of instance %s: %w", id, err)
	}
	if vocab.HTTPSStrategy(netw.GetHttpsStrategy()) != strategy {
		return nil, nil, apierr.Invalid("instanceId", "network %q uses httpsStrategy %q, not %q", netw.GetName(), netw.GetHttpsStrategy(), strategy)
	}
	return inst, netw, nil
}

// getACMEAccount gives an instance's agent the ACME account key of its
// network: one account per network, its key made and sealed by the secret
// broker the first time it is asked for (the read audited for the
// instance), so every agent of the network, and every new VM of an
// instance, orders with the same account. The key is not logged.
func (s *Service) getACMEAccount(ctx context.Context, actor vocab.Actor, req *cav1.GetAcmeAccountRequest) (*cav1.AcmeAccountKey, error) {
	inst, netw, err := s.instanceOn(ctx, actor, req.GetInstanceId(), vocab.HTTPSACME)
	if err != nil {
		return nil, err
	}
	k, err := rpc.Call(ctx, s.bus, endpoints.ACMEAccountKeyGet, &secretsv1.GetAcmeAccountKeyRequest{NetworkId: netw.GetId(), InstanceId: inst.GetId()})
	if err != nil {
		return nil, fmt.Errorf("ACME account key of network %s: %w", netw.GetId(), err)
	}
	s.log.InfoContext(ctx, "ACME account key released to an instance's agent", "instance_id", inst.GetId(), "network_id", netw.GetId())
	return &cav1.AcmeAccountKey{PrivateKeyPem: k.GetPrivateKeyPem()}, nil
}

// acmeNames are the names an instance's ACME certificate is for,
// normalised (pki.ParseServerName).
func acmeNames(in *inventoryv1.Instance, n *inventoryv1.Network) []string {
	var names []string
	for _, d := range pki.ACMEDomains(in, n) {
		if name, _, err := pki.ParseServerName(d); err == nil && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// certNames are a certificate's DNS names, normalised, and whether it
// names an address too.
func certNames(c *x509.Certificate) (names []string, addresses bool) {
	for _, d := range c.DNSNames {
		if name, _, err := pki.ParseServerName(d); err == nil && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, len(c.IPAddresses) > 0 || len(c.URIs) > 0 || len(c.EmailAddresses) > 0
}

// getACMECertificate gives an instance's agent the ACME certificate kept
// for the instance (from the secret broker, the read audited), so a new VM
// of the instance serves it instead of ordering again (ACME servers limit
// orders). Not found unless it is still good: issued by the network's
// directory, for exactly the instance's domains now, and not yet due for
// renewal (two thirds of its lifetime, the agent's rule).
func (s *Service) getACMECertificate(ctx context.Context, actor vocab.Actor, req *cav1.GetAcmeCertificateRequest) (*cav1.AcmeCertificate, error) {
	inst, netw, err := s.instanceOn(ctx, actor, req.GetInstanceId(), vocab.HTTPSACME)
	if err != nil {
		return nil, err
	}
	id := inst.GetId()
	kept, err := rpc.Call(ctx, s.bus, endpoints.ACMECertKeyRead, &secretsv1.ReadAcmeCertificateRequest{InstanceId: id})
	if err != nil {
		return nil, err
	}
	unusable := func(why string) error {
		s.log.InfoContext(ctx, "the kept ACME certificate is not handed out", "instance_id", id, "reason", why)
		return apierr.NotFound("usable ACME certificate of instance", id)
	}
	if kept.GetDirectoryUrl() != pki.ACMEDirectory(netw) {
		return nil, unusable(fmt.Sprintf("issued by %s, the network now orders from %s", kept.GetDirectoryUrl(), pki.ACMEDirectory(netw)))
	}
	chain, err := pki.ParseCertificatesPEM([]byte(kept.GetCertificatePem()))
	if err != nil {
		return nil, unusable(err.Error())
	}
	leaf, now := chain[0], s.now()
	if due := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3); now.Before(leaf.NotBefore) || !now.Before(due) {
		return nil, unusable(fmt.Sprintf("valid %s to %s: due for renewal since %s", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339), due.Format(time.RFC3339)))
	}
	names, _ := certNames(leaf)
	want := acmeNames(inst, netw)
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		return nil, unusable(fmt.Sprintf("for %v, the instance's domains are now %v", names, want))
	}
	if _, err := pki.CheckCustomKey(leaf, kept.GetPrivateKeyPem()); err != nil {
		return nil, unusable(err.Error())
	}
	s.log.InfoContext(ctx, "kept ACME certificate released to the instance's agent", "instance_id", id,
		"serial", pki.Serial(leaf), "not_after", leaf.NotAfter)
	return &cav1.AcmeCertificate{CertificatePem: kept.GetCertificatePem(), PrivateKeyPem: kept.GetPrivateKeyPem(), NotAfter: timestamppb.New(leaf.NotAfter)}, nil
}

// putACMECertificate takes an instance's newly issued ACME certificate
// from its agent and has the secret broker keep it (the key sealed),
// replacing the one kept: only a certificate valid now, for the
// instance's ACME domains (no other name, no address), with the key that
// matches it.
func (s *Service) putACMECertificate(ctx context.Context, actor vocab.Actor, req *cav1.PutAcmeCertificateRequest) (*emptypb.Empty, error) {
	inst, netw, err := s.instanceOn(ctx, actor, req.GetInstanceId(), vocab.HTTPSACME)
	if err != nil {
		return nil, err
	}
	chain, err := pki.ParseCertificatesPEM([]byte(req.GetCertificatePem()))
	if err != nil {
		return nil, apierr.Invalid("certificatePem", "%v", err)
	}
	leaf, now := chain[0], s.now()
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, apierr.Invalid("certificatePem", "is valid from %s to %s, not now", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	names, others := certNames(leaf)
	want := acmeNames(inst, netw)
	if len(names) == 0 || others || slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(want, n) }) {
		return nil, apierr.PermissionDenied("the certificate names %v (and %d addresses): instance %q's ACME domains are %v", names, len(leaf.IPAddresses), inst.GetName(), want)
	}
	if _, err := pki.CheckCustomKey(leaf, req.GetPrivateKeyPem()); err != nil {
		return nil, apierr.Invalid("privateKeyPem", "%v", errors.Unwrap(err))
	}
	if _, err := rpc.Call(ctx, s.bus, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: inst.GetId(), NetworkId: netw.GetId(),
		DirectoryUrl: pki.ACMEDirectory(netw), CertificatePem: req.GetCertificatePem(), PrivateKeyPem: req.GetPrivateKeyPem()}); err != nil {
		return nil, fmt.Errorf("keep the ACME certificate of instance %s: %w", inst.GetId(), err)
	}
	s.log.InfoContext(ctx, "ACME certificate of an instance kept", "instance_id", inst.GetId(), "serial", pki.Serial(leaf), "not_after", leaf.NotAfter, "names", names)
	return &emptypb.Empty{}, nil
}
