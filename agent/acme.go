package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
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
}

func acmeSpecOf(o *agentv1.AcmeOrder) *acmeSpec {
	port := int(o.GetHttpPort())
	if port == 0 {
		port = 80
	}
	return &acmeSpec{DirectoryURL: o.GetDirectoryUrl(), ContactEmail: o.GetContactEmail(), Domains: o.GetDomains(),
		HTTPPort: port, DirectoryCAPEM: o.GetDirectoryCaPem()}
}

// acmeAccountKeyFile is the ACME account key, in the state directory.
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

// acmeAccountKey loads the agent's ACME account key, or makes one (0600).
func (a *agent) acmeAccountKey() (crypto.Signer, error) {
	path := filepath.Join(a.cfg.StateDir, acmeAccountKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		return pki.ParsePrivateKeyPEM(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	pemKey, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, pemKey, 0o600); err != nil {
		return nil, fmt.Errorf("save ACME account key: %w", err)
	}
	return key, nil
}

// acmeObtain orders a certificate for the spec's domains: it registers the
// account (or finds it again by its key), answers HTTP-01 on the spec's port
// for the time of the order, and returns the chain and a fresh key, PEM.
func (a *agent) acmeObtain(spec *acmeSpec) (certPEM, keyPEM []byte, err error) {
	key, err := a.acmeAccountKey()
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
	if err := client.Challenge.SetHTTP01Provider(http01.NewProviderServer("", strconv.Itoa(spec.HTTPPort))); err != nil {
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

// acmeCertificate orders the node software's first certificate (the
// bootstrap fails, naming why, when it cannot be had) and writes it where
// the node reads it; acmeLoop renews it from then on.
func (a *agent) acmeCertificate(ctx context.Context, spec *nodeSpec, o *agentv1.AcmeOrder) error {
	if o == nil || len(o.GetDomains()) == 0 || o.GetDirectoryUrl() == "" {
		return errors.New("acme: the command carries no ACME order (directory and domains)")
	}
	spec.ACME = acmeSpecOf(o)
	a.logf(ctx, "ordering the node software's certificate for %v from %s (HTTP-01 on port %d)", spec.ACME.Domains, spec.ACME.DirectoryURL, spec.ACME.HTTPPort)
	certPEM, keyPEM, err := a.acmeObtain(spec.ACME)
	if err != nil {
		return err
	}
	defer clear(keyPEM)
	if err := a.writeNodeTLS(spec, certPEM, keyPEM); err != nil {
		return err
	}
	a.logf(ctx, "installed the node software's ACME certificate (%s)", certSummary(certPEM))
	a.kickACME(false)
	return nil
}

// certSummary names a PEM chain's leaf for the logs: serial and expiry.
func certSummary(certPEM []byte) string {
	certs, err := pki.ParseCertificatesPEM(certPEM)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("serial %s, valid until %s", pki.Serial(certs[0]), certs[0].NotAfter.UTC().Format(time.RFC3339))
}

// renewalDue is when the certificate in file is renewed: at two thirds of
// its lifetime; now when it cannot be read.
func renewalDue(file string) time.Time {
	b, err := os.ReadFile(file)
	if err != nil {
		return time.Time{}
	}
	certs, err := pki.ParseCertificatesPEM(b)
	if err != nil {
		return time.Time{}
	}
	c := certs[0]
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// kickACME wakes acmeLoop: to look at the state again, or (force) to
// renew at once (:refresh-certificate).
func (a *agent) kickACME(force bool) {
	if force {
		a.acmeForce.Store(true)
	}
	select {
	case a.acmeKick <- struct{}{}:
	default:
	}
}

// acmeRetry is how long a failed renewal waits before the next attempt;
// acmeIdle how often the loop looks for an order when it has none.
const (
	acmeRetry = time.Minute
	acmeIdle  = 30 * time.Second
)

// acmeLoop renews the node software's ACME certificate at two thirds of its
// lifetime (or when asked), writing the new pair where the running node
// reads it: the node serves it from its next handshake. A failure is
// logged, to the instance's logs, and retried.
func (a *agent) acmeLoop(ctx context.Context) {
	var retryAt time.Time
	for {
		// With no order yet, look again soon: a bootstrap records the node's
		// spec only once the node runs.
		wait := acmeIdle
		spec := a.state.Get().Node
		if spec != nil && spec.ACME != nil && !spec.Stopped {
			wait = time.Until(renewalDue(spec.CertFile))
			if !retryAt.IsZero() {
				wait = max(wait, time.Until(retryAt))
			}
		}
		if a.acmeForce.Load() {
			wait = 0
		}
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-a.acmeKick:
			timer.Stop()
			if !a.acmeForce.Load() {
				continue
			}
		case <-timer.C:
		}
		forced := a.acmeForce.Swap(false)
		spec = a.state.Get().Node
		if spec == nil || spec.ACME == nil || spec.Stopped {
			continue
		}
		a.logf(ctx, "renewing the node software's ACME certificate for %v (forced: %t)", spec.ACME.Domains, forced)
		certPEM, keyPEM, err := a.acmeObtain(spec.ACME)
		if err == nil {
			s := *spec
			err = a.writeNodeTLS(&s, certPEM, keyPEM)
			clear(keyPEM)
		}
		cmdID := a.state.Get().CompletedCommandID
		if err != nil {
			retryAt = time.Now().Add(acmeRetry)
			a.logf(ctx, "renewing the ACME certificate failed, trying again in %s: %v", acmeRetry, err)
			a.progress(ctx, cmdID, vocab.StepRenewingCertificate, vocab.ProgressFailed, fmt.Sprintf("ACME: %v (retrying in %s)", err, acmeRetry), 0)
			continue
		}
		retryAt = time.Time{}
		a.logf(ctx, "renewed the node software's ACME certificate (%s)", certSummary(certPEM))
		a.progress(ctx, cmdID, vocab.StepRenewingCertificate, vocab.ProgressSucceeded, "ACME: "+certSummary(certPEM), 0)
	}
}
