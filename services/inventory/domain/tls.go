package domain

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
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
	if p := n.GetDns().GetHostnamePattern(); p != "" && (in.GetId() != "" || !strings.Contains(p, "{id}")) {
		names = append(names, strings.NewReplacer("{name}", in.GetName(), "{id}", in.GetId()).Replace(p))
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

// LetsEncryptDirectory is the ACME directory used when a network names none.
const LetsEncryptDirectory = "https://acme-v02.api.letsencrypt.org/directory"

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

// ACMEDomains are the names an instance's ACME certificate is ordered for:
// its ssl.domains, else its host name from the network's pattern.
func ACMEDomains(in *inventoryv1.Instance, n *inventoryv1.Network) []string {
	if d := in.GetSsl().GetDomains(); len(d) > 0 {
		return d
	}
	return InstanceHostNames(&inventoryv1.Instance{Id: in.GetId(), Name: in.GetName()}, n)
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
			return apierr.Invalid(fmt.Sprintf("ssl.domains[%d]", i), "%q: ACME over HTTP-01 certifies DNS names only, no address or wildcard", d)
		}
	}
	if len(ACMEDomains(in, n)) == 0 {
		return apierr.Invalid("ssl.domains", "is required: network %q has no dns.hostnamePattern to name the instance by", n.GetName())
	}
	return nil
}
