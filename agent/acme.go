package agent

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/challenge/http01"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
)

// acmeSpec is the ACME order of the node software's certificate, kept in the
// state file so renewals go on after a restart.
type acmeSpec struct {
	DirectoryURL   string   `json:"directoryUrl"`
	ContactEmail   string   `json:"contactEmail"`
	Domains        []string `json:"domains"`
	HTTPPort       int      `json:"httpPort"`
	DirectoryCAPEM string   `json:"directoryCaPem,omitempty"`
	// Challenge is "http-01" (or empty) or "dns-01".
	Challenge string `json:"challenge,omitempty"`
	// DNSResolvers, with dns-01, are the only resolvers that must see the
	// TXT record before the ACME server is told to look.
	DNSResolvers []string `json:"dnsResolvers,omitempty"`
}

func acmeSpecOf(o *agentv1.AcmeOrder) *acmeSpec {
	port := int(vocab.ACMEHTTPPort(o.GetHttpPort()))
	return &acmeSpec{DirectoryURL: o.GetDirectoryUrl(), ContactEmail: o.GetContactEmail(), Domains: o.GetDomains(),
		HTTPPort: port, DirectoryCAPEM: o.GetDirectoryCaPem(), Challenge: o.GetChallenge(), DNSResolvers: o.GetDnsResolvers()}
}

// dns01 reports whether the order is answered with DNS-01.
func (s *acmeSpec) dns01() bool { return vocab.ACMEChallenge(s.Challenge) == vocab.ACMEDNS01 }

// how says how the order proves control of its domains, for the logs.
func (s *acmeSpec) how() string {
	if s.dns01() {
		return "DNS-01, the records written by the manager"
	}
	return fmt.Sprintf("HTTP-01 on port %d", s.HTTPPort)
}

// acmeAccountKeyFile is where agents kept their ACME account key before the
// secret broker kept one per network; a file left from then is removed.
const acmeAccountKeyFile = "acme-account.key"

// acmeUser is the ACME account lego acts for.
type acmeUser struct {
	email string
	key   crypto.PrivateKey
	reg   *registration.Resource
}

func (u *acmeUser) GetEmail() string                        { return u.email }
func (u *acmeUser) GetRegistration() *registration.Resource { return u.reg }
func (u *acmeUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// acmeRequest asks the gateway an ACME question (AcmeRequest, its
// request_id set here) and returns the answer, or its error.
func (a *agent) acmeRequest(ctx context.Context, r *agentv1.AcmeRequest) (*agentv1.AcmeResponse, error) {
	resp, err := a.request(ctx, func(id string) *agentv1.AgentMessage {
		r.RequestId = id
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_AcmeRequest{AcmeRequest: r}}
	})
	if err != nil {
		return nil, err
	}
	ar := resp.GetAcmeResponse()
	if ar.GetError() != "" {
		return nil, errors.New(ar.GetError())
	}
	return ar, nil
}

// acmeAccountKey is the network's ACME account key, from the manager (the
// secret broker keeps one per network, so a new VM of the instance, and
// every instance of the network, orders with the same account). It is
// held in memory only.
func (a *agent) acmeAccountKey(ctx context.Context) (crypto.Signer, error) {
	_ = os.Remove(filepath.Join(a.cfg.StateDir, acmeAccountKeyFile))
	r, err := a.acmeRequest(ctx, &agentv1.AcmeRequest{Action: &agentv1.AcmeRequest_AccountKey{AccountKey: &agentv1.AcmeAccountKeyRequest{}}})
	if err != nil {
		return nil, fmt.Errorf("ACME account key from the manager: %w", err)
	}
	keyPEM := []byte(r.GetPrivateKeyPem())
	defer clear(keyPEM)
	key, err := pki.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ACME account key from the manager: %w", err)
	}
	return key, nil
}

// dnsPropagationTimeout bounds the wait for a DNS-01 record to be seen
// (Route53 makes a change visible on its nameservers within a minute);
// dnsPollInterval is how often the resolvers are asked meanwhile.
const (
	dnsPropagationTimeout = 3 * time.Minute
	dnsPollInterval       = 2 * time.Second
)

// dnsProvider answers DNS-01 for lego through the manager: Present and
// CleanUp ask the gateway to have the TXT record _acme-challenge.<domain>
// written or deleted in the network's Route53 zone (the provisioner does
// it with the network's cloud account; the agent holds no cloud
// credentials, and the manager writes records only for the instance's own
// domains).
type dnsProvider struct {
	ctx context.Context
	a   *agent
}

func (p dnsProvider) Present(domain, _, keyAuth string) error {
	return p.a.dnsChallenge(p.ctx, domain, keyAuth, false)
}
func (p dnsProvider) CleanUp(domain, _, keyAuth string) error {
	return p.a.dnsChallenge(p.ctx, domain, keyAuth, true)
}

// Timeout is how long lego waits for the record to be seen, and how often
// it looks.
func (p dnsProvider) Timeout() (timeout, interval time.Duration) {
	return dnsPropagationTimeout, dnsPollInterval
}

// dnsChallenge has the manager write (or remove) domain's DNS-01 record:
// the key authorization's SHA-256, base64url (RFC 8555, 8.4).
func (a *agent) dnsChallenge(ctx context.Context, domain, keyAuth string, remove bool) error {
	sum := sha256.Sum256([]byte(keyAuth))
	_, err := a.acmeRequest(ctx, &agentv1.AcmeRequest{Action: &agentv1.AcmeRequest_DnsChallenge{DnsChallenge: &agentv1.AcmeDnsChallenge{
		Domain: domain, Value: base64.RawURLEncoding.EncodeToString(sum[:]), Remove: remove}}})
	if err != nil {
		return fmt.Errorf("DNS-01 record of %s through the manager: %w", domain, err)
	}
	return nil
}

// acmeObtain orders a certificate for the spec's domains: it registers the
// network's account (or finds it again by its key), answers HTTP-01 on the
// spec's port for the time of the order or has the manager write the
// DNS-01 records, and returns the chain and a fresh key, PEM.
func (a *agent) acmeObtain(ctx context.Context, spec *acmeSpec) (certPEM, keyPEM []byte, err error) {
	key, err := a.acmeAccountKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	user := &acmeUser{email: spec.ContactEmail, key: key}
	cfg := lego.NewConfig(user)
	cfg.CADirURL = spec.DirectoryURL
	cfg.Certificate.KeyType = certcrypto.EC256
	if spec.DirectoryCAPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(spec.DirectoryCAPEM)) {
			return nil, nil, errors.New("acme.directoryCaPem holds no certificate")
		}
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	client, err := lego.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("ACME directory %s: %w", spec.DirectoryURL, err)
	}
	if spec.dns01() {
		// lego keeps the resolvers in a package variable: one agent, one
		// order at a time.
		var opts []dns01.ChallengeOption
		if len(spec.DNSResolvers) > 0 {
			opts = append(opts, dns01.AddRecursiveNameservers(spec.DNSResolvers),
				dns01.DisableAuthoritativeNssPropagationRequirement(), dns01.RecursiveNSsPropagationRequirement())
		}
		err = client.Challenge.SetDNS01Provider(dnsProvider{ctx: ctx, a: a}, opts...)
	} else {
		err = client.Challenge.SetHTTP01Provider(http01.NewProviderServer("", strconv.Itoa(spec.HTTPPort)))
	}
	if err != nil {
		return nil, nil, err
	}
	if user.reg, err = client.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
		return nil, nil, fmt.Errorf("ACME account for %s: %w", spec.ContactEmail, err)
	}
	res, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: spec.Domains, Bundle: true})
	if err != nil {
		return nil, nil, fmt.Errorf("ACME order for %v: %w", spec.Domains, err)
	}
	return res.Certificate, res.PrivateKey, nil
}

// keptACMECertificate is the certificate the manager kept for the instance
// (a previous VM's order), when it is still good for the spec's domains and
// not yet due for renewal; ok false means order one.
func (a *agent) keptACMECertificate(ctx context.Context, spec *acmeSpec) (certPEM, keyPEM []byte, ok bool) {
	r, err := a.acmeRequest(ctx, &agentv1.AcmeRequest{Action: &agentv1.AcmeRequest_StoredCertificate{StoredCertificate: &agentv1.AcmeStoredCertificateRequest{}}})
	if err != nil {
		a.logf(ctx, "asking the manager for a kept ACME certificate failed: %v", err)
		return nil, nil, false
	}
	if r.GetCertificatePem() == "" {
		return nil, nil, false
	}
	certPEM, keyPEM = []byte(r.GetCertificatePem()), []byte(r.GetPrivateKeyPem())
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil {
		for _, d := range spec.Domains {
			if err = pair.Leaf.VerifyHostname(d); err != nil {
				break
			}
		}
	}
	if err == nil && !time.Now().Before(renewalDueOf(certPEM)) {
		err = errors.New("it is due for renewal")
	}
	if err != nil {
		clear(keyPEM)
		a.logf(ctx, "not using the ACME certificate the manager kept: %v", err)
		return nil, nil, false
	}
	return certPEM, keyPEM, true
}

// keepACMECertificate hands a newly issued certificate and its key to the
// manager, which keeps it (the key sealed by the secret broker) for a new
// VM of the instance. A failure is logged only: the node serves it anyway.
func (a *agent) keepACMECertificate(ctx context.Context, certPEM, keyPEM []byte) {
	_, err := a.acmeRequest(ctx, &agentv1.AcmeRequest{Action: &agentv1.AcmeRequest_StoreCertificate{StoreCertificate: &agentv1.AcmeCertificate{
		CertificatePem: string(certPEM), PrivateKeyPem: string(keyPEM)}}})
	if err != nil {
		a.logf(ctx, "the manager did not keep the ACME certificate (a new VM of this instance will order again): %v", err)
	}
}

// acmeCertificate installs the node software's first certificate: the one
// the manager kept for the instance if still good, else a new order (the
// bootstrap fails, naming why, when it cannot be had), handed to the
// manager to keep. certLoop renews it from then on.
func (a *agent) acmeCertificate(ctx context.Context, spec *nodeSpec, o *agentv1.AcmeOrder) error {
	if o == nil || len(o.GetDomains()) == 0 || o.GetDirectoryUrl() == "" {
		return errors.New("acme: the command carries no ACME order (directory and domains)")
	}
	spec.ACME = acmeSpecOf(o)
	if certPEM, keyPEM, ok := a.keptACMECertificate(ctx, spec.ACME); ok {
		defer clear(keyPEM)
		if err := a.writeNodeTLS(spec, certPEM, keyPEM); err != nil {
			return err
		}
		a.logf(ctx, "installed the ACME certificate the manager kept for this instance (%s): no new order", certSummary(certPEM))
		return nil
	}
	a.logf(ctx, "ordering the node software's certificate for %v from %s (%s)", spec.ACME.Domains, spec.ACME.DirectoryURL, spec.ACME.how())
	certPEM, keyPEM, err := a.acmeObtain(ctx, spec.ACME)
	if err != nil {
		return err
	}
	defer clear(keyPEM)
	if err := a.writeNodeTLS(spec, certPEM, keyPEM); err != nil {
		return err
	}
	a.logf(ctx, "installed the node software's ACME certificate (%s)", certSummary(certPEM))
	a.keepACMECertificate(ctx, certPEM, keyPEM)
	return nil
}
