package ca_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// acmeBus plays, on a CA test's NATS, the inventory's network.get and the
// secret broker's ACME endpoints, keeping one certificate per instance.
type acmeBus struct {
	mu       sync.Mutex
	networks map[string]*inventoryv1.Network
	kept     map[string]*secretsv1.PutAcmeCertificateRequest
	accounts map[string]int // network id → reads of its account key
}

func startACMEBus(t *testing.T, e *env) *acmeBus {
	t.Helper()
	b := &acmeBus{networks: map[string]*inventoryv1.Network{}, kept: map[string]*secretsv1.PutAcmeCertificateRequest{}, accounts: map[string]int{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv, err := rpc.New(e.nc, subjects.Inventory, "1.2.3", "fake inventory", log, noop.NewTracerProvider(), nil)
	must(t, err)
	sec, err := rpc.New(e.nc, subjects.Secrets, "1.2.3", "fake secret broker", log, noop.NewTracerProvider(), nil)
	must(t, err)
	t.Cleanup(func() { _ = inv.Stop(); _ = sec.Stop() })
	must(t, rpc.Handle(inv, endpoints.NetworkGet, func(_ context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if n, ok := b.networks[r.GetId()]; ok {
			return n, nil
		}
		return nil, apierr.NotFound("network", r.GetId())
	}))
	must(t, rpc.Handle(sec, endpoints.ACMEAccountKeyGet, func(_ context.Context, _ vocab.Actor, r *secretsv1.GetAcmeAccountKeyRequest) (*secretsv1.AcmeAccountKey, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.accounts[r.GetNetworkId()]++
		return &secretsv1.AcmeAccountKey{PrivateKeyPem: "account key of " + r.GetNetworkId()}, nil
	}))
	must(t, rpc.Handle(sec, endpoints.ACMECertKeyPut, func(_ context.Context, _ vocab.Actor, r *secretsv1.PutAcmeCertificateRequest) (*emptypb.Empty, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.kept[r.GetInstanceId()] = proto.Clone(r).(*secretsv1.PutAcmeCertificateRequest)
		return &emptypb.Empty{}, nil
	}))
	must(t, rpc.Handle(sec, endpoints.ACMECertKeyRead, func(_ context.Context, _ vocab.Actor, r *secretsv1.ReadAcmeCertificateRequest) (*secretsv1.AcmeCertificate, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		k, ok := b.kept[r.GetInstanceId()]
		if !ok {
			return nil, apierr.NotFound("ACME certificate of instance", r.GetInstanceId())
		}
		return &secretsv1.AcmeCertificate{DirectoryUrl: k.GetDirectoryUrl(), CertificatePem: k.GetCertificatePem(), PrivateKeyPem: k.GetPrivateKeyPem()}, nil
	}))
	return b
}

func (b *acmeBus) putNetwork(n *inventoryv1.Network) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.networks[n.GetId()] = n
}

// acmeIssued is a chain for names (90 days from now) and its key, PEM.
func acmeIssued(t *testing.T, now time.Time, names ...string) (chain, key string) {
	t.Helper()
	issuer, err := pki.GenerateCA(now)
	must(t, err)
	k := newKey(t)
	iss, err := issuer.Issue(k.Public(), pki.ServerProfile(names[0], names, []net.IP{}, now, 90*24*time.Hour))
	must(t, err)
	kp, err := pki.EncodePrivateKeyPEM(k)
	must(t, err)
	return string(iss.PEM) + string(issuer.CertificatePEM()), string(kp)
}

// TestACMEAccountAndCertificatesAreTheInstancesOwn: the CA gives an
// instance's agent its network's account key, keeps a certificate only for
// the instance's ACME domains with its own key, and gives a kept
// certificate back only while it is good: from the network's directory,
// for the instance's domains now, not yet due for renewal. Another
// instance's agent gets nothing.
func TestACMEAccountAndCertificatesAreTheInstancesOwn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	b := startACMEBus(t, e)
	netID, plainID := instanceID(), instanceID()
	b.putNetwork(&inventoryv1.Network{Id: netID, Name: "pub", HttpsStrategy: "acme", Acme: &inventoryv1.AcmeSettings{
		ContactEmail: "ops@example.test", DirectoryUrl: "https://acme.test/dir"}, Dns: &inventoryv1.DnsSettings{HostnamePattern: "{name}.example.test"}})
	b.putNetwork(&inventoryv1.Network{Id: plainID, Name: "plain", HttpsStrategy: "self-signed"})
	web, other, plain := instanceID(), instanceID(), instanceID()
	e.instances.put(&inventoryv1.Instance{Id: web, Name: "web", NetworkId: netID})
	e.instances.put(&inventoryv1.Instance{Id: plain, Name: "plain", NetworkId: plainID})

	acct := &cav1.AcmeAccountKey{}
	must(t, call(t, e.nc, endpoints.ACMEAccountGet, &cav1.GetAcmeAccountRequest{InstanceId: web}, acct))
	if acct.GetPrivateKeyPem() != "account key of "+netID {
		t.Fatalf("account key %q, want the network's", acct.GetPrivateKeyPem())
	}
	err := call(t, e.nc, endpoints.ACMEAccountGet, &cav1.GetAcmeAccountRequest{InstanceId: plain}, &cav1.AcmeAccountKey{})
	wantError(t, err, apierr.KindInvalid, "instanceId: network \"plain\"")
	agentgw := rpc.NewClient(e.nc, subjects.AgentGW, 10*time.Second)
	_, err = rpc.Call(t.Context(), agentgw, endpoints.ACMEAccountGet, &cav1.GetAcmeAccountRequest{InstanceId: web}, rpc.As(vocab.Agent(other)))
	wantError(t, err, apierr.KindPermissionDenied, "agent:"+other)

	// Kept: a certificate for the instance's name with its key; not one
	// for another name, nor one with another key.
	now := e.clock.Now()
	chain, key := acmeIssued(t, now, "web.example.test")
	must(t, call(t, e.nc, endpoints.ACMECertPut, &cav1.PutAcmeCertificateRequest{InstanceId: web, CertificatePem: chain, PrivateKeyPem: key}, &emptypb.Empty{}))
	if k := b.kept[web]; k.GetDirectoryUrl() != "https://acme.test/dir" || k.GetNetworkId() != netID || k.GetPrivateKeyPem() != key {
		t.Fatalf("kept %v", k)
	}
	evil, evilKey := acmeIssued(t, now, "web.example.test", "mail.example.test")
	err = call(t, e.nc, endpoints.ACMECertPut, &cav1.PutAcmeCertificateRequest{InstanceId: web, CertificatePem: evil, PrivateKeyPem: evilKey}, &emptypb.Empty{})
	wantError(t, err, apierr.KindPermissionDenied, "the certificate names")
	_, otherKey := acmeIssued(t, now, "web.example.test")
	err = call(t, e.nc, endpoints.ACMECertPut, &cav1.PutAcmeCertificateRequest{InstanceId: web, CertificatePem: chain, PrivateKeyPem: otherKey}, &emptypb.Empty{})
	wantError(t, err, apierr.KindInvalid, "privateKeyPem:")
	_, err = rpc.Call(t.Context(), agentgw, endpoints.ACMECertPut, &cav1.PutAcmeCertificateRequest{InstanceId: web, CertificatePem: chain, PrivateKeyPem: key},
		rpc.As(vocab.Agent(other)))
	wantError(t, err, apierr.KindPermissionDenied, "agent:"+other)

	// Given back while good.
	got := &cav1.AcmeCertificate{}
	must(t, call(t, e.nc, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, got))
	if got.GetCertificatePem() != chain || got.GetPrivateKeyPem() != key {
		t.Fatal("the kept certificate was not given back")
	}
	_, err = rpc.Call(t.Context(), agentgw, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, rpc.As(vocab.Agent(other)))
	wantError(t, err, apierr.KindPermissionDenied, "agent:"+other)
	// Not once the instance's domains changed.
	e.instances.put(&inventoryv1.Instance{Id: web, Name: "web", NetworkId: netID, Ssl: &inventoryv1.SslSettings{Domains: []string{"www.example.test"}}})
	err = call(t, e.nc, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, &cav1.AcmeCertificate{})
	wantError(t, err, apierr.KindNotFound, "")
	e.instances.put(&inventoryv1.Instance{Id: web, Name: "web", NetworkId: netID})
	// Not from another directory.
	b.putNetwork(&inventoryv1.Network{Id: netID, Name: "pub", HttpsStrategy: "acme", Acme: &inventoryv1.AcmeSettings{ContactEmail: "ops@example.test"},
		Dns: &inventoryv1.DnsSettings{HostnamePattern: "{name}.example.test"}})
	err = call(t, e.nc, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, &cav1.AcmeCertificate{})
	wantError(t, err, apierr.KindNotFound, "")
	b.putNetwork(&inventoryv1.Network{Id: netID, Name: "pub", HttpsStrategy: "acme", Acme: &inventoryv1.AcmeSettings{
		ContactEmail: "ops@example.test", DirectoryUrl: "https://acme.test/dir"}, Dns: &inventoryv1.DnsSettings{HostnamePattern: "{name}.example.test"}})
	must(t, call(t, e.nc, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, &cav1.AcmeCertificate{}))
	// Not once due for renewal (two thirds of 90 days).
	e.clock.Advance(61 * 24 * time.Hour)
	err = call(t, e.nc, endpoints.ACMECertGet, &cav1.GetAcmeCertificateRequest{InstanceId: web}, &cav1.AcmeCertificate{})
	wantError(t, err, apierr.KindNotFound, "")
}
