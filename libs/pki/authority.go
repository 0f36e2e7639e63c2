package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"time"
)

// Names and lifetimes of the certificates this package makes.
const (
	// CACommonName is the subject CN of a generated fleet CA.
	CACommonName = "Flotilla fleet CA"
	// CAOrganization is the subject O of a generated fleet CA.
	CAOrganization = "Flotilla"
	// CAValidityYears is how long a generated fleet CA is valid.
	CAValidityYears = 10
	// AgentOrganization is the subject O of every agent certificate; with
	// client authentication it marks a certificate as an agent identity.
	AgentOrganization = "Flotilla agents"
	// Backdate is how far before the time of issue a certificate becomes
	// valid, so a peer whose clock is a little behind accepts it.
	Backdate = time.Minute
)

// Authority is a CA certificate and its private key: it issues leaf
// certificates. It is safe for concurrent use.
type Authority struct {
	cert   *x509.Certificate   // signs
	chain  []*x509.Certificate // what followed cert in its file: issuers up to a root
	signer crypto.Signer
	bundle []byte // cert and chain, PEM
}

// Issued is a certificate an Authority issued.
type Issued struct {
	// Certificate is the parsed leaf.
	Certificate *x509.Certificate
	// PEM is the leaf, followed by the intermediate certificates a peer
	// needs to build a path to a root (none when the Authority is a root).
	PEM []byte
}

// Profile is what a leaf certificate says, whatever its request asked for.
type Profile struct {
	Subject     pkix.Name
	DNSNames    []string
	IPAddresses []net.IP
	URIs        []*url.URL
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	NotBefore   time.Time
	NotAfter    time.Time
}

// AgentProfile is an agent's client identity: subject CN = instanceID,
// O = AgentOrganization, the VM it runs on as a URI SAN (AgentVMID),
// client authentication, valid from Backdate before now for ttl.
func AgentProfile(instanceID, vmID string, now time.Time, ttl time.Duration) Profile {
	var uris []*url.URL
	if vmID != "" {
		uris = []*url.URL{{Scheme: "urn", Opaque: vmURNPrefix + vmID}}
	}
	return Profile{
		Subject:     pkix.Name{CommonName: instanceID, Organization: []string{AgentOrganization}},
		URIs:        uris,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore:   now.Add(-Backdate),
		NotAfter:    now.Add(ttl),
	}
}

// ServerProfile is a TLS server certificate for the given DNS names and IP
// addresses, with subject CN = commonName, valid from Backdate before now for
// ttl.
func ServerProfile(commonName string, dnsNames []string, ips []net.IP, now time.Time, ttl time.Duration) Profile {
	return Profile{
		Subject:     pkix.Name{CommonName: commonName},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore:   now.Add(-Backdate),
		NotAfter:    now.Add(ttl),
	}
}

// GenerateCA makes a new self-signed fleet CA in memory: an ECDSA P-256
// key, subject CN = CACommonName, valid for CAValidityYears from now, key
// usage certificate and CRL signing. LoadOrCreate uses it at first start;
// tests use it for a throwaway CA.
func GenerateCA(now time.Time) (*Authority, error) {
	key, serial, skid, err := newCAKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: CACommonName, Organization: []string{CAOrganization}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.AddDate(CAValidityYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse generated CA certificate: %w", err)
	}
	return NewAuthority([]*x509.Certificate{cert}, key, now)
}

// newCAKey makes a CA's ECDSA P-256 key, a serial number for its
// certificate and its subject key id.
func newCAKey() (*ecdsa.PrivateKey, *big.Int, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, nil, nil, err
	}
	return key, serial, skid, nil
}

// NewAuthority makes an Authority from certs, whose first element is the
// signing certificate and the rest its issuers, and the signing
// certificate's private key. It fails when the first certificate is not a
// CA allowed to sign certificates, is not valid at now, or does not match
// key.
func NewAuthority(certs []*x509.Certificate, key crypto.Signer, now time.Time) (*Authority, error) {
	if len(certs) == 0 {
		return nil, errors.New("no CA certificate")
	}
	cert := certs[0]
	if err := checkCA(cert, now); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, errors.New("no CA private key")
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the private key does not match the CA certificate")
	}
	return &Authority{
		cert:   cert,
		chain:  slices.Clone(certs[1:]),
		signer: key,
		bundle: EncodeCertificatesPEM(certs...),
	}, nil
}

// checkCA reports why cert cannot sign certificates at now, or nil.
func checkCA(cert *x509.Certificate, now time.Time) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("certificate %q is not a CA certificate (basic constraints CA:TRUE is missing)", cert.Subject.CommonName)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("certificate %q may not sign certificates (key usage lacks certificate signing)", cert.Subject.CommonName)
	case now.After(cert.NotAfter):
		return fmt.Errorf("CA certificate %q expired at %s", cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Add(Backdate).Before(cert.NotBefore):
		return fmt.Errorf("CA certificate %q is not valid until %s (is this clock right?)", cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// Certificate returns the signing certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// CertificatePEM returns the signing certificate followed by the rest of
// its chain, PEM: what a peer adds to its trust store to verify the
// certificates a issues.
func (a *Authority) CertificatePEM() []byte { return bytes.Clone(a.bundle) }

// Pool returns a pool holding the signing certificate and its chain, to
// verify the certificates a issues with.
func (a *Authority) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.cert)
	for _, c := range a.chain {
		p.AddCert(c)
	}
	return p
}

// Fingerprint returns the SHA-256 fingerprint of the signing certificate,
// lowercase hex.
func (a *Authority) Fingerprint() string { return Fingerprint(a.cert) }

// DeriveKey derives a 32-byte secret for purpose from the authority's
// private key (HKDF-SHA256): every process holding the key derives the
// same one, and a secret says nothing of the key or of another purpose's.
// It fails for a private key it cannot read.
func (a *Authority) DeriveKey(purpose string) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(a.signer)
	if err != nil {
		return nil, fmt.Errorf("derive a key from the CA key of %q: %w", a.cert.Subject.CommonName, err)
	}
	return hkdf.Key(sha256.New, der, nil, purpose, 32)
}

// Fingerprint returns the SHA-256 digest of cert's DER encoding, lowercase hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Issue signs a certificate for pub that says what p says, with a random
// 128-bit serial number and subject and authority key identifiers. It
// refuses keys weaker than CheckPublicKey allows, and ends the certificate
// no later than the signing certificate.
func (a *Authority) Issue(pub crypto.PublicKey, p Profile) (*Issued, error) {
	if err := CheckPublicKey(pub); err != nil {
		return nil, err
	}
	if p.NotAfter.After(a.cert.NotAfter) {
		p.NotAfter = a.cert.NotAfter
	}
	if !p.NotAfter.After(p.NotBefore) {
		return nil, fmt.Errorf("certificate would not be valid at all (not before %s, not after %s)", p.NotBefore.UTC().Format(time.RFC3339), p.NotAfter.UTC().Format(time.RFC3339))
	}
	keyUsage := p.KeyUsage
	if _, isRSA := pub.(*rsa.PublicKey); isRSA && slices.Contains(p.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		keyUsage |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               p.Subject,
		DNSNames:              slices.Clone(p.DNSNames),
		IPAddresses:           slices.Clone(p.IPAddresses),
		URIs:                  slices.Clone(p.URIs),
		NotBefore:             p.NotBefore,
		NotAfter:              p.NotAfter,
		KeyUsage:              keyUsage,
		ExtKeyUsage:           slices.Clone(p.ExtKeyUsage),
		BasicConstraintsValid: true,
		SubjectKeyId:          skid,
		AuthorityKeyId:        a.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return &Issued{Certificate: cert, PEM: EncodeCertificatesPEM(append([]*x509.Certificate{cert}, a.intermediates()...)...)}, nil
}

// intermediates returns the certificates a peer needs between a leaf and a
// root: the signing certificate and its issuers, unless they are roots.
func (a *Authority) intermediates() []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range append([]*x509.Certificate{a.cert}, a.chain...) {
		if !selfSigned(c) {
			out = append(out, c)
		}
	}
	return out
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// randomSerial returns a random positive serial number of up to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID is RFC 7093 section 2 method 1: the leftmost 160 bits of the
// SHA-256 digest of the subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("decode public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}
