package domain

import (
	"net"
	"strings"
	"testing"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
)

func issue(t *testing.T, ca *pki.Authority, now time.Time, names ...string) (chain, key string) {
	t.Helper()
	k, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(k.Public(), pki.ServerProfile(names[0], names, []net.IP{net.ParseIP("10.0.0.1")}, now, 24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.EncodePrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(iss.PEM) + string(ca.CertificatePEM()), string(kp)
}

// TestCustomCertificateRulesNameTheField: every rule of a custom
// certificate refuses with the field that breaks it.
func TestCustomCertificateRulesNameTheField(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	chain, key := issue(t, ca, now, "web.example.test")
	_, otherKey := issue(t, ca, now, "web.example.test")
	for _, tc := range []struct {
		name  string
		c     CustomCertificate
		names []string
		field string
	}{
		{"fine", CustomCertificate{CertificatePEM: chain, PrivateKeyPEM: key}, []string{"web.example.test", "10.0.0.1"}, ""},
		{"fine by reference", CustomCertificate{CertificatePEM: chain, PrivateKeyRef: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tls/web-AbCdEf"}, nil, ""},
		{"no certificate", CustomCertificate{PrivateKeyPEM: key}, nil, "ssl.certificatePem"},
		{"no key", CustomCertificate{CertificatePEM: chain}, nil, "ssl.privateKeyPem"},
		{"two keys", CustomCertificate{CertificatePEM: chain, PrivateKeyPEM: key, PrivateKeyRef: "tls/web"}, nil, "ssl.privateKeyRef"},
		{"bad reference", CustomCertificate{CertificatePEM: chain, PrivateKeyRef: "tls web!"}, nil, "ssl.privateKeyRef"},
		{"another key", CustomCertificate{CertificatePEM: chain, PrivateKeyPEM: otherKey}, nil, "ssl.privateKeyPem"},
		{"key not PEM", CustomCertificate{CertificatePEM: chain, PrivateKeyPEM: "secret"}, nil, "ssl.privateKeyPem"},
		{"leaf alone, private root", CustomCertificate{CertificatePEM: chain[:strings.Index(chain, "-----END CERTIFICATE-----")+26], PrivateKeyPEM: key}, nil, "ssl.certificatePem"},
		{"name not covered", CustomCertificate{CertificatePEM: chain, PrivateKeyPEM: key}, []string{"db.example.test"}, "ssl.certificatePem"},
	} {
		tc.c.Field = "ssl"
		err := tc.c.Validate(tc.names, now)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") || !apierr.Is(err, apierr.KindInvalid) {
			t.Errorf("%s: %v; want invalid %s", tc.name, err, tc.field)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY-----\n") {
			t.Errorf("%s: the error quotes the key", tc.name)
		}
	}
	// Expired, checked at a later time.
	c := CustomCertificate{Field: "customCertificate", CertificatePEM: chain, PrivateKeyPEM: key}
	if err := c.Validate(nil, now.Add(48*time.Hour)); err == nil || !strings.Contains(err.Error(), "customCertificate.certificatePem: the certificate expired") {
		t.Errorf("expired: %v", err)
	}
}

// TestACMEDomains: ssl.domains, else the host name from the pattern; no
// address or wildcard.
func TestACMEDomains(t *testing.T) {
	t.Parallel()
	n := &inventoryv1.Network{Name: "pub", HttpsStrategy: "acme", Dns: &inventoryv1.DnsSettings{HostnamePattern: "{name}.example.test"}}
	in := &inventoryv1.Instance{Name: "web"}
	if d := pki.ACMEDomains(in, n); len(d) != 1 || d[0] != "web.example.test" {
		t.Fatalf("domains from the pattern: %v", d)
	}
	for raw, field := range map[string]string{"10.0.0.1": "ssl.domains[0]", "*.example.test": "ssl.domains[0]", "bad name!": "ssl.domains[0]"} {
		in := &inventoryv1.Instance{Name: "web", Ssl: &inventoryv1.SslSettings{Domains: []string{raw}}}
		if err := validateACMEDomains(in, n); err == nil || !strings.HasPrefix(err.Error(), field+":") {
			t.Errorf("%q: %v", raw, err)
		}
	}
	if err := validateACMEDomains(in, &inventoryv1.Network{Name: "bare"}); err == nil || !strings.HasPrefix(err.Error(), "ssl.domains:") {
		t.Errorf("no domain at all: %v", err)
	}
}

// TestACMEChallengeRulesNameTheField: dns-01 needs an aws network with a
// cloud account and a Route53 zone; resolvers are DNS servers, with dns-01
// only; http-01 on an aws network cannot use its nodes' port; each refusal
// names the field and the rule.
func TestACMEChallengeRulesNameTheField(t *testing.T) {
	t.Parallel()
	acme := func(challenge string, resolvers ...string) *inventoryv1.AcmeSettings {
		return &inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", Challenge: challenge, DnsResolvers: resolvers}
	}
	aws := func(a *inventoryv1.AcmeSettings, zone string) *inventoryv1.Network {
		return &inventoryv1.Network{Name: "pub", Provider: "aws", HttpsStrategy: "acme", Acme: a, CloudAccountId: "0f9d4a7e-8d2f-4b8e-9d51-2b7c1c1e0a01",
			Aws: &inventoryv1.AwsNetworkSettings{SubnetId: "subnet-0123456789abcdef0"}, Dns: &inventoryv1.DnsSettings{PublicZoneId: zone, HostnamePattern: "{name}.example.test"}}
	}
	for _, tc := range []struct {
		name  string
		n     *inventoryv1.Network
		field string // "" when valid
	}{
		{"dns-01 on aws with a zone", aws(acme("dns-01"), "Z1"), ""},
		{"dns-01 with resolvers", aws(acme("dns-01", "127.0.0.1:5353", "ns.example.test"), "Z1"), ""},
		{"http-01 named", aws(acme("http-01"), ""), ""},
		{"unknown challenge", aws(acme("tls-alpn-01"), "Z1"), "acme.challenge"},
		{"dns-01 without a zone", aws(acme("dns-01"), ""), "dns.publicZoneId"},
		{"dns-01 on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "acme", Acme: acme("dns-01")}, "acme.challenge"},
		{"resolvers with http-01", aws(acme("", "127.0.0.1"), "Z1"), "acme.dnsResolvers"},
		{"a bad resolver", aws(acme("dns-01", "not a host!"), "Z1"), "acme.dnsResolvers[0]"},
		{"a bad port", aws(acme("dns-01", "127.0.0.1:99999"), "Z1"), "acme.dnsResolvers[0]"},
		{"challenge without acme", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none", Acme: &inventoryv1.AcmeSettings{Challenge: "dns-01"}}, "acme"},
		// An aws VM's node serves on 443: HTTP-01 cannot be answered there.
		{"http-01 on the node's port", aws(&inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", HttpPort: 443}, ""), "acme.httpPort"},
		{"http-01 on another port", aws(&inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", HttpPort: 8080}, ""), ""},
		{"dns-01 with port 443 named", aws(&inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", Challenge: "dns-01", HttpPort: 443}, "Z1"), ""},
		{"443 on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "acme", Acme: &inventoryv1.AcmeSettings{ContactEmail: "ops@example.test", HttpPort: 443}}, ""},
	} {
		wantNetworkRule(t, tc.name, tc.n, tc.field)
	}
}

// TestOnlyAWSNetworksTakePublicAddressesAndZones: assignPublicIp and the
// Route53 zones do something only on aws networks; elsewhere they are
// refused, naming the field, rather than accepted and ignored. A host-name
// pattern names instances on any network.
func TestOnlyAWSNetworksTakePublicAddressesAndZones(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		n     *inventoryv1.Network
		field string // "" when valid
	}{
		{"public addresses on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none", AssignPublicIp: true}, "assignPublicIp"},
		{"public addresses on external", &inventoryv1.Network{Name: "lab", Provider: "external", HttpsStrategy: "none", AssignPublicIp: true}, "assignPublicIp"},
		{"a host-name pattern on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none",
			Dns: &inventoryv1.DnsSettings{HostnamePattern: "{name}.lab.test"}}, ""},
		{"a public zone on external", &inventoryv1.Network{Name: "lab", Provider: "external", HttpsStrategy: "none", Dns: &inventoryv1.DnsSettings{PublicZoneId: "Z1"}}, "dns.publicZoneId"},
		{"a private zone on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none",
			Dns: &inventoryv1.DnsSettings{PrivateZoneId: "Z1", HostnamePattern: "{name}.lab.test"}}, "dns.privateZoneId"},
		{"an empty dns on local", &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none", Dns: &inventoryv1.DnsSettings{}}, ""},
		{"both on aws", &inventoryv1.Network{Name: "pub", Provider: "aws", HttpsStrategy: "none", AssignPublicIp: true, CloudAccountId: "0f9d4a7e-8d2f-4b8e-9d51-2b7c1c1e0a01",
			Aws: &inventoryv1.AwsNetworkSettings{SubnetId: "subnet-0123456789abcdef0"}, Dns: &inventoryv1.DnsSettings{PrivateZoneId: "Z1", HostnamePattern: "{name}.example.test"}}, ""},
	} {
		wantNetworkRule(t, tc.name, tc.n, tc.field)
	}
}

// wantNetworkRule checks that ValidateNetwork accepts n (field "") or
// refuses it naming field.
func wantNetworkRule(t *testing.T, name string, n *inventoryv1.Network, field string) {
	t.Helper()
	err := ValidateNetwork(n)
	switch {
	case field == "" && err != nil:
		t.Errorf("%s: %v", name, err)
	case field != "" && (err == nil || !strings.HasPrefix(err.Error(), field+":")):
		t.Errorf("%s: %v, want an error naming %s", name, err, field)
	}
}
