package pki

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"slices"
	"time"

	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
)

// GatewayCACommonName is the subject CN of the agent gateway's intermediate
// CA.
const GatewayCACommonName = "Flotilla agent gateway CA"

// The agent gateway's server certificate comes from an intermediate CA of
// its own, signed by the fleet CA, that may issue only server
// certificates (extended key usage server auth, path length 0). Agents are
// bootstrapped with it and accept a gateway only if its chain passes
// through it (RequireGatewayCA), so no certificate the fleet CA issues to
// an instance, whatever its names, can pass for the gateway.

// GenerateGatewayCA makes the agent gateway's intermediate under parent:
// an ECDSA P-256 key, valid as long as parent.
func GenerateGatewayCA(parent *Authority, now time.Time) (*Authority, error) {
	key, serial, skid, err := newCAKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: GatewayCACommonName, Organization: []string{CAOrganization}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              parent.cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
		AuthorityKeyId:        parent.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.cert, key.Public(), parent.signer)
	if err != nil {
		return nil, fmt.Errorf("sign agent gateway CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse agent gateway CA certificate: %w", err)
	}
	return NewAuthority(append([]*x509.Certificate{cert, parent.cert}, parent.chain...), key, now)
}

// LoadOrCreateGatewayCA loads the agent gateway's intermediate from its
// files, or generates it under parent and writes it there, as LoadOrCreate
// does for the fleet CA. An intermediate that parent did not sign (the
// fleet CA was replaced) is an error naming the files to remove.
func LoadOrCreateGatewayCA(parent *Authority, certFile, keyFile string, now time.Time) (a *Authority, created bool, err error) {
	a, created, err = loadOrCreate(certFile, keyFile, now, func() (*Authority, error) { return GenerateGatewayCA(parent, now) })
	if err != nil {
		return nil, false, err
	}
	if !IsGatewayCA(a.cert) || a.cert.CheckSignatureFrom(parent.cert) != nil {
		return nil, false, fmt.Errorf("agent gateway CA %s is not an agent gateway CA of the fleet CA %q (was the fleet CA replaced?): remove %s and %s to have a new one made",
			certFile, parent.cert.Subject.CommonName, certFile, keyFile)
	}
	return a, created, nil
}

// IsGatewayCA reports whether cert is an agent gateway CA: a CA that may
// issue server certificates only.
func IsGatewayCA(cert *x509.Certificate) bool {
	return cert.IsCA && slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
}

// GatewayCAs returns the agent gateway CAs among certs (a bootstrap
// bundle).
func GatewayCAs(certs []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range certs {
		if IsGatewayCA(c) {
			out = append(out, c)
		}
	}
	return out
}

// RequireGatewayCA is a tls.Config.VerifyConnection for agents: the
// server's verified chain must pass through one of cas.
func RequireGatewayCA(cas []*x509.Certificate) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		for _, chain := range cs.VerifiedChains {
			for _, c := range chain {
				for _, ca := range cas {
					if bytes.Equal(c.Raw, ca.Raw) {
						return nil
					}
				}
			}
		}
		return errors.New("the server's certificate was not issued by the agent gateway CA: it is not the agent gateway")
	}
}

// AgentBundle is the CA bundle a new agent is given with its join token: the
// agent gateway's intermediate (with the fleet CA), so the agent accepts no
// other server as its gateway; from a CA without one, the fleet CA alone.
func AgentBundle(c *cav1.CACertificate) string {
	if c.GetAgentGatewayCaPem() != "" {
		return c.GetAgentGatewayCaPem()
	}
	return c.GetCertificatePem()
}
