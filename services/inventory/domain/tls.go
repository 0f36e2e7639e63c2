package domain

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
)

// secretRefRE is what an AWS Secrets Manager secret id may look like: a
// name (letters, digits, /_+=.@-) or an ARN.
var secretRefRE = regexp.MustCompile(`^([A-Za-z0-9/_+=.@-]{1,512}|arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512})$`)

// CustomCertificate is the custom-certificate settings of a network or an
// instance, as one shape: field is where they are ("customCertificate" or
// "ssl").
type CustomCertificate struct {
	Field                                        string
	CertificatePEM, PrivateKeyPEM, PrivateKeyRef string
	PrivateKeyID                                 string
}

// NetworkCertificate returns the network's custom certificate settings.
func NetworkCertificate(n *inventoryv1.Network) CustomCertificate {
	c := n.GetCustomCertificate()
	return CustomCertificate{Field: "customCertificate", CertificatePEM: c.GetCertificatePem(), PrivateKeyPEM: c.GetPrivateKeyPem(),
		PrivateKeyRef: c.GetPrivateKeyRef(), PrivateKeyID: c.GetPrivateKeyId()}
}

// InstanceCertificate returns the instance's own custom certificate settings.
func InstanceCertificate(in *inventoryv1.Instance) CustomCertificate {
	s := in.GetSsl()
	return CustomCertificate{Field: "ssl", CertificatePEM: s.GetCertificatePem(), PrivateKeyPEM: s.GetPrivateKeyPem(),
		PrivateKeyRef: s.GetPrivateKeyRef(), PrivateKeyID: s.GetPrivateKeyId()}
}

// Empty says whether no field is set.
func (c CustomCertificate) Empty() bool {
	return c.CertificatePEM == "" && c.PrivateKeyPEM == "" && c.PrivateKeyRef == "" && c.PrivateKeyID == ""
}

// Validate checks the settings: the chain parses, is valid now and
// verifies; exactly one source of the key; an uploaded key matches the
// certificate; a Secrets Manager reference looks like one; the certificate
// covers names. Errors name the field, e.g. "ssl.privateKeyPem".
func (c CustomCertificate) Validate(names []string, now time.Time) error {
	sources := 0
	for _, s := range []string{c.PrivateKeyPEM, c.PrivateKeyRef, c.PrivateKeyID} {
		if s != "" {
			sources++
		}
	}
	switch {
	case c.CertificatePEM == "":
		return apierr.Invalid(c.Field+".certificatePem", "is required with a private key")
	case sources == 0:
		return apierr.Invalid(c.Field+".privateKeyPem", "is required: upload the key (privateKeyPem) or name an AWS Secrets Manager secret (privateKeyRef)")
	case c.PrivateKeyPEM != "" && c.PrivateKeyRef != "":
		return apierr.Invalid(c.Field+".privateKeyRef", "give privateKeyPem or privateKeyRef, not both")
	case c.PrivateKeyRef != "" && !secretRefRE.MatchString(c.PrivateKeyRef):
		return apierr.Invalid(c.Field+".privateKeyRef", "must be an AWS Secrets Manager secret name or ARN")
	}
	chain, err := pki.CheckCustomChain(c.CertificatePEM, now)
	if err != nil {
		return c.invalid(err)
	}
	if c.PrivateKeyPEM != "" {
		if _, err := pki.CheckCustomKey(chain[0], c.PrivateKeyPEM); err != nil {
			return c.invalid(err)
		}
	}
	if err := pki.CheckCustomNames(chain[0], names); err != nil {
		return c.invalid(err)
	}
	return nil
}

func (c CustomCertificate) invalid(err error) error {
	var ce *pki.CustomChainError
	if errors.As(err, &ce) {
		return apierr.Invalid(c.Field+"."+ce.Field, "%v", ce.Err)
	}
	return apierr.Invalid(c.Field, "%v", err)
}

// InstanceHostNames are the names an instance is reached by, which its
// custom certificate must cover: its ssl.sans and the network's host-name
// pattern filled in (a pattern with {id} only once the id is known).
func InstanceHostNames(in *inventoryv1.Instance, n *inventoryv1.Network) []string {
	names := append([]string(nil), in.GetSsl().GetSans()...)
	if h := pki.InstanceHostName(in, n); h != "" {
		names = append(names, h)
	}
	return names
}

// validateInstanceCertificate checks an instance's custom certificate
// settings on a "custom-certificate" network: its own certificate, or the
// network's, must exist and cover the instance's names.
func validateInstanceCertificate(in *inventoryv1.Instance, n *inventoryv1.Network, now time.Time) error {
	if len(in.GetSsl().GetDomains()) > 0 {
		return apierr.Invalid("ssl.domains", "network %q uses httpsStrategy %q: ssl.domains applies to %q only", n.GetName(), vocab.HTTPSCustomCertificate, vocab.HTTPSACME)
	}
	names := InstanceHostNames(in, n)
	own := InstanceCertificate(in)
	if !own.Empty() {
		return own.Validate(names, now)
	}
	nc := NetworkCertificate(n)
	if nc.CertificatePEM == "" {
		return apierr.Invalid("ssl.certificatePem", "is required: network %q has no customCertificate", n.GetName())
	}
	chain, err := pki.ParseCertificatesPEM([]byte(nc.CertificatePEM))
	if err != nil {
		return apierr.Invalid("networkId", "network %q's certificate cannot be read: %v", n.GetName(), err)
	}
	if err := pki.CheckCustomNames(chain[0], names); err != nil {
		return apierr.Invalid("ssl.sans", "network %q's certificate %v; give the instance its own certificate (ssl.certificatePem)", n.GetName(), errors.Unwrap(err))
	}
	return nil
}

// validateACME checks a network's ACME settings beyond the contact e-mail.
func validateACME(a *inventoryv1.AcmeSettings) error {
	if u := a.GetDirectoryUrl(); u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return apierr.Invalid("acme.directoryUrl", "%q is not an http or https URL", u)
		}
	}
	if p := a.GetHttpPort(); p < 0 || p > 65535 {
		return apierr.Invalid("acme.httpPort", "%d is out of range: must be between 1 and 65535 (0 means 80)", p)
	}
	if c := a.GetDirectoryCaPem(); c != "" {
		if _, err := pki.ParseCertificatesPEM([]byte(c)); err != nil {
			return apierr.Invalid("acme.directoryCaPem", "%v", err)
		}
	}
	return nil
}

// MaxDNSResolvers bounds a network's acme.dnsResolvers.
const MaxDNSResolvers = 10

// acmeChallenges are the values of acme.challenge (empty means http-01).
var acmeChallenges = []vocab.ACMEChallenge{vocab.ACMEHTTP01, vocab.ACMEDNS01}

// validateACMEChallenge checks an "acme" network's challenge: DNS-01 has
// the manager write the TXT records in the network's Route53 zone with its
// cloud account, so it needs provider aws (which needs the account) and a
// zone; its resolvers are DNS servers to ask.
func validateACMEChallenge(n *inventoryv1.Network) error {
	a := n.GetAcme()
	if a.GetChallenge() != "" {
		if err := oneOf("acme.challenge", a.GetChallenge(), acmeChallenges); err != nil {
			return err
		}
	}
	if vocab.ACMEChallenge(a.GetChallenge()) != vocab.ACMEDNS01 {
		if len(a.GetDnsResolvers()) > 0 {
			return apierr.Invalid("acme.dnsResolvers", "is only allowed with acme.challenge %q", vocab.ACMEDNS01)
		}
		if p := vocab.ACMEHTTPPort(a.GetHttpPort()); vocab.Provider(n.GetProvider()) == vocab.ProviderAWS && p == vocab.AWSNodePort {
			return apierr.Invalid("acme.httpPort", "%d is the port the node of an %q network's VM serves on: HTTP-01 needs another (0 means %d)",
				p, vocab.ProviderAWS, vocab.DefaultACMEHTTPPort)
		}
		return nil
	}
	if vocab.Provider(n.GetProvider()) != vocab.ProviderAWS {
		return apierr.Invalid("acme.challenge", "%q needs provider %q: the manager writes the TXT records in the network's Route53 zone, with its cloud account",
			vocab.ACMEDNS01, vocab.ProviderAWS)
	}
	if n.GetCloudAccountId() == "" {
		return apierr.Invalid("cloudAccountId", "is required with acme.challenge %q: the account the TXT records are written with", vocab.ACMEDNS01)
	}
	if n.GetDns().GetPublicZoneId() == "" && n.GetDns().GetPrivateZoneId() == "" {
		return apierr.Invalid("dns.publicZoneId", "is required with acme.challenge %q (or dns.privateZoneId): the Route53 zone the TXT records are written to", vocab.ACMEDNS01)
	}
	if len(a.GetDnsResolvers()) > MaxDNSResolvers {
		return apierr.Invalid("acme.dnsResolvers", "at most %d are allowed", MaxDNSResolvers)
	}
	for i, r := range a.GetDnsResolvers() {
		if err := checkResolver(r); err != nil {
			return apierr.Invalid(fmt.Sprintf("acme.dnsResolvers[%d]", i), "%q %v", r, err)
		}
	}
	return nil
}

// checkResolver checks a DNS resolver's address: "host" or "host:port",
// the host an IP address or a DNS name, the port 1-65535.
func checkResolver(r string) error {
	host, port := r, ""
	if h, p, err := net.SplitHostPort(r); err == nil {
		host, port = h, p
	}
	if _, _, err := pki.ParseServerName(host); err != nil || strings.HasPrefix(host, "*") {
		return errors.New(`must be "host" or "host:port", the host an IP address or a DNS name`)
	}
	if port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return errors.New("has a port out of range: must be between 1 and 65535")
		}
	}
	return nil
}

// validateACMEDomains checks an ACME instance's domains: at least one, DNS
// names only (HTTP-01 validates no IP address and no wildcard).
func validateACMEDomains(in *inventoryv1.Instance, n *inventoryv1.Network) error {
	if len(in.GetSsl().GetDomains()) > MaxSANs {
		return apierr.Invalid("ssl.domains", "at most %d are allowed", MaxSANs)
	}
	for i, d := range in.GetSsl().GetDomains() {
		name, ip, err := pki.ParseServerName(d)
		switch {
		case err != nil:
			return apierr.Invalid(fmt.Sprintf("ssl.domains[%d]", i), "%q %v", d, err)
		case ip != nil || strings.HasPrefix(name, "*."):
			return apierr.Invalid(fmt.Sprintf("ssl.domains[%d]", i), "%q: an ACME certificate here is for DNS names only, no address or wildcard", d)
		}
	}
	if len(pki.ACMEDomains(in, n)) == 0 {
		return apierr.Invalid("ssl.domains", "is required: network %q has no dns.hostnamePattern to name the instance by", n.GetName())
	}
	return nil
}
