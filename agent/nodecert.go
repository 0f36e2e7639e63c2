package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
)

// The node software's certificate, where Flotilla issues it (the fleet
// CA's for "self-signed", the ACME server's for "acme"), is the agent's to
// renew: certLoop renews it at two thirds of its lifetime, or at once on
// the operator's :refresh-certificate, and writes the new pair where the
// running node reads it, which serves it from its next handshake. A
// "custom-certificate" is the operator's: it is fetched again only when
// asked (refreshCertificate).

// certRetry is how long a failed renewal waits before the next attempt;
// certIdle how often the loop looks for a certificate to renew when it
// has none.
const (
	certRetry = time.Minute
	certIdle  = 30 * time.Second
)

// renewsNodeCert says whether the agent renews spec's certificate itself.
func renewsNodeCert(spec *nodeSpec) bool {
	return spec != nil && !spec.Stopped && spec.CertFile != "" && (spec.ACME != nil || spec.FleetCA)
}

// kickCert wakes certLoop: to look at the state again, or (force) to
// renew at once (:refresh-certificate).
func (a *agent) kickCert(force bool) {
	if force {
		a.certForce.Store(true)
	}
	select {
	case a.certKick <- struct{}{}:
	default:
	}
}

// certLoop renews the node software's certificate when it is due (or when
// asked). A failure is logged, to the instance's logs, reported as the
// renewing-certificate step, and retried.
func (a *agent) certLoop(ctx context.Context) {
	var retryAt time.Time
	for {
		// With nothing to renew yet, look again soon: a bootstrap records
		// the node's spec only once the node runs.
		wait := certIdle
		spec := a.state.Get().Node
		if renewsNodeCert(spec) {
			wait = time.Until(renewalDue(spec.CertFile))
			if !retryAt.IsZero() {
				wait = max(wait, time.Until(retryAt))
			}
		}
		if a.certForce.Load() {
			wait = 0
		}
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-a.certKick:
			timer.Stop()
			if !a.certForce.Load() {
				continue
			}
		case <-timer.C:
		}
		forced := a.certForce.Swap(false)
		spec = a.state.Get().Node
		if !renewsNodeCert(spec) {
			continue
		}
		from := "ACME"
		if spec.ACME == nil {
			from = "fleet CA"
		}
		summary, err := a.renewNodeCert(ctx, spec, forced)
		cmdID := a.state.Get().CompletedCommandID
		if err != nil {
			retryAt = time.Now().Add(certRetry)
			a.logf(ctx, "renewing the node software's %s certificate failed, trying again in %s: %v", from, certRetry, err)
			a.progress(ctx, cmdID, vocab.StepRenewingCertificate, vocab.ProgressFailed, fmt.Sprintf("%s: %v (retrying in %s)", from, err, certRetry), 0)
			continue
		}
		retryAt = time.Time{}
		a.logf(ctx, "renewed the node software's %s certificate (%s)", from, summary)
		a.progress(ctx, cmdID, vocab.StepRenewingCertificate, vocab.ProgressSucceeded, from+": "+summary, 0)
	}
}

// renewNodeCert gets and installs a new certificate for spec: an ACME
// order, or the fleet CA's for the names the inventory holds for the
// instance now. It returns the new certificate's summary.
func (a *agent) renewNodeCert(ctx context.Context, spec *nodeSpec, forced bool) (string, error) {
	s := *spec
	if spec.ACME != nil {
		a.logf(ctx, "renewing the node software's ACME certificate for %v (forced: %t)", spec.ACME.Domains, forced)
		certPEM, keyPEM, err := a.acmeObtain(ctx, spec.ACME)
		if err != nil {
			return "", err
		}
		defer clear(keyPEM)
		if err := a.writeNodeTLS(&s, certPEM, keyPEM); err != nil {
			return "", err
		}
		a.keepACMECertificate(ctx, certPEM, keyPEM)
		return certSummary(certPEM), nil
	}
	a.logf(ctx, "renewing the node software's certificate from the fleet CA (forced: %t)", forced)
	if err := a.serverCertificate(ctx, &s); err != nil {
		return "", err
	}
	b, err := os.ReadFile(s.CertFile)
	return certSummary(b), err
}

// nodeCertEnd is when the certificate the running node software serves
// ends; zero when it serves none.
func (a *agent) nodeCertEnd() time.Time {
	spec := a.state.Get().Node
	if spec == nil || spec.CertFile == "" || a.node.URL() == "" {
		return time.Time{}
	}
	certs := readChain(spec.CertFile)
	if certs == nil {
		return time.Time{}
	}
	return certs[0].NotAfter
}

// adoptFleetCACert marks a node certificate the fleet CA issued as the
// agent's to renew, for a state file written before the agent renewed
// them (which has no fleetCA): one that chains to the fleet CA is.
func (a *agent) adoptFleetCACert() error {
	spec := a.state.Get().Node
	if spec == nil || spec.CertFile == "" || spec.ACME != nil || spec.FleetCA || !issuedBy(spec.CertFile, a.roots) {
		return nil
	}
	return a.state.Update(func(s *state) { s.Node.FleetCA = true })
}

// issuedBy says whether the certificate chain in file is a server
// certificate that chains to roots.
func issuedBy(file string, roots *x509.CertPool) bool {
	certs := readChain(file)
	if certs == nil {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		CurrentTime: certs[0].NotBefore.Add(time.Second)}) // an expired one is still the fleet CA's
	return err == nil
}

// certSummary names a PEM chain's leaf for the logs: serial and expiry.
func certSummary(certPEM []byte) string {
	certs, err := pki.ParseCertificatesPEM(certPEM)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("serial %s, valid until %s", pki.Serial(certs[0]), certs[0].NotAfter.UTC().Format(time.RFC3339))
}

// readChain is the PEM certificate chain in file, leaf first; nil when it
// cannot be read.
func readChain(file string) []*x509.Certificate {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	return parseChain(b)
}

// parseChain is a PEM certificate chain, leaf first; nil when it cannot be
// parsed.
func parseChain(certPEM []byte) []*x509.Certificate {
	certs, err := pki.ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil
	}
	return certs
}

// renewalDue is when the certificate in file is renewed: at two thirds of
// its lifetime; the zero time (now) when it cannot be read.
func renewalDue(file string) time.Time { return renewalAt(readChain(file)) }

// renewalDueOf is renewalDue for a PEM chain.
func renewalDueOf(certPEM []byte) time.Time { return renewalAt(parseChain(certPEM)) }

// renewalAt is two thirds into the lifetime of the chain's leaf; the zero
// time without one.
func renewalAt(certs []*x509.Certificate) time.Time {
	if certs == nil {
		return time.Time{}
	}
	c := certs[0]
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}
