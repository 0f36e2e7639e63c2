package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// CustomChainError is a problem with an operator's certificate chain or
// key; Field says which ("certificatePem" or "privateKeyPem"), relative to
// the settings that hold them.
type CustomChainError struct {
	Field string
	Err   error
}

func (e *CustomChainError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *CustomChainError) Unwrap() error { return e.Err }

// Custom certificate fields named by CustomChainError.
const (
	FieldCertificatePEM = "certificatePem"
	FieldPrivateKeyPEM  = "privateKeyPem"
)

// CheckCustomChain parses an operator's PEM chain (leaf first) and checks
// that the leaf is valid at now and verifies through the rest of the chain
// to a root: the system's, or a self-signed one at the end of the chain.
// It returns the chain.
func CheckCustomChain(chainPEM string, now time.Time) ([]*x509.Certificate, error) {
	fail := func(format string, a ...any) error {
		return &CustomChainError{Field: FieldCertificatePEM, Err: fmt.Errorf(format, a...)}
	}
	if chainPEM == "" {
		return nil, fail("is required")
	}
	chain, err := ParseCertificatesPEM([]byte(chainPEM))
	if err != nil {
		return nil, fail("%v", err)
	}
	leaf := chain[0]
	if now.After(leaf.NotAfter) {
		return nil, fail("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fail("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if selfSigned(c) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	if len(chain) == 1 && selfSigned(leaf) {
		roots.AddCert(leaf)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fail("the chain does not verify: %v", err)
	}
	return chain, nil
}

// CheckCustomKey parses keyPEM and checks that it is the private key of
// leaf. Its errors never quote the key.
func CheckCustomKey(leaf *x509.Certificate, keyPEM string) (crypto.Signer, error) {
	if keyPEM == "" {
		return nil, &CustomChainError{Field: FieldPrivateKeyPEM, Err: errors.New("is required")}
	}
	key, err := ParsePrivateKeyPEM([]byte(keyPEM))
	if err != nil {
		return nil, &CustomChainError{Field: FieldPrivateKeyPEM, Err: err}
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, &CustomChainError{Field: FieldPrivateKeyPEM, Err: errors.New("does not match the certificate's public key")}
	}
	return key, nil
}

// CheckCustomNames checks that leaf is valid for every name (DNS names,
// wildcards honoured, or IP addresses) and returns the first it is not.
func CheckCustomNames(leaf *x509.Certificate, names []string) error {
	for _, n := range names {
		if err := leaf.VerifyHostname(n); err != nil {
			return &CustomChainError{Field: FieldCertificatePEM, Err: fmt.Errorf("does not cover the instance's name %q (it names %v)", n, append(leaf.DNSNames, ipStrings(leaf)...))}
		}
	}
	return nil
}

func ipStrings(c *x509.Certificate) []string {
	out := make([]string, len(c.IPAddresses))
	for i, ip := range c.IPAddresses {
		out[i] = ip.String()
	}
	return out
}
