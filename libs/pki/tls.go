package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxInstanceIDLength bounds an instance id that names a certificate
// subject (the X.509 upper bound of a common name).
const MaxInstanceIDLength = 64

// CheckInstanceID accepts an instance id fit to be an agent certificate's
// subject and a NATS subject token: 1 to MaxInstanceIDLength ASCII letters,
// digits, '-' or '_'. Its error is a rule, fit to follow a field name.
func CheckInstanceID(id string) error {
	if id == "" {
		return errors.New("is required")
	}
	ok := len(id) <= MaxInstanceIDLength
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
	}
	if !ok {
		return fmt.Errorf("%q must be 1-%d letters, digits, '-' or '_'", id, MaxInstanceIDLength)
	}
	return nil
}

// AgentInstanceID returns the instance id an agent certificate identifies:
// its subject CN, when its subject O is AgentOrganization and it allows
// client authentication. It does not verify the certificate's signature or
// validity; take cert from a verified chain (see PeerInstanceID).
func AgentInstanceID(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("no certificate")
	}
	if !slices.Contains(cert.Subject.Organization, AgentOrganization) {
		return "", fmt.Errorf("certificate %q is not an agent certificate (subject O is not %q)", cert.Subject.CommonName, AgentOrganization)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", fmt.Errorf("certificate %q does not allow client authentication", cert.Subject.CommonName)
	}
	id := cert.Subject.CommonName
	if err := CheckInstanceID(id); err != nil {
		return "", fmt.Errorf("agent certificate subject CN: %w", err)
	}
	return id, nil
}

// vmURNPrefix starts the URI SAN that binds an agent certificate to a VM:
// "urn:flotilla:vm:<vm id>".
const vmURNPrefix = "flotilla:vm:"

// AgentVMID returns the VM an agent certificate is bound to, or "" for a
// certificate issued before agent certificates named their VM.
func AgentVMID(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == "urn" && strings.HasPrefix(u.Opaque, vmURNPrefix) {
			return strings.TrimPrefix(u.Opaque, vmURNPrefix)
		}
	}
	return ""
}

// Serial is how a certificate's serial number is written in records and
// logs: lower-case hex.
func Serial(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// PeerInstanceID returns the instance id of the agent at the other end of a
// TLS connection whose client certificate was verified (a server built with
// MutualTLSServerConfig).
func PeerInstanceID(cs tls.ConnectionState) (string, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", errors.New("the peer presented no verified certificate")
	}
	return AgentInstanceID(cs.VerifiedChains[0][0])
}

// CertPool returns a pool of the PEM certificates in data (a CA bundle, such
// as Authority.CertificatePEM or the ca_pem of an issued certificate).
func CertPool(data []byte) (*x509.CertPool, error) {
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}

// MutualTLSServerConfig returns a TLS 1.3 server configuration presenting
// cert and requiring every client to present a certificate, for client
// authentication, that chains to clientCAs (the agent gateway's listener:
// read the agent with PeerInstanceID). Set GetCertificate on the result
// instead of Certificates to rotate the server certificate without a restart.
func MutualTLSServerConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}
}

// MutualTLSClientConfig returns a TLS 1.3 client configuration presenting
// cert and trusting only roots for a server named serverName (an agent
// dialling the agent gateway). Set GetClientCertificate on the result
// instead of Certificates to present a renewed certificate without a restart.
func MutualTLSClientConfig(cert tls.Certificate, roots *x509.CertPool, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   serverName,
	}
}
