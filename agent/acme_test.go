package agent

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestACMEIssuesAndRenewsWithoutARestart: with the "acme" strategy the
// agent orders the node software's certificate from an ACME server
// (Pebble), answering HTTP-01 itself; a client trusting Pebble's root
// verifies the node; a forced renewal (:refresh-certificate) swaps the
// certificate for new connections while one opened before keeps working.
func TestACMEIssuesAndRenewsWithoutARestart(t *testing.T) {
	t.Parallel()
	port := testkit.FreePort(t)
	p := testkit.StartPebble(t, port)
	ta := newTestAgent(t)
	go ta.certLoop(t.Context())
	b := &agentv1.Bootstrap{InstanceName: "acme-1", NodeVersion: "1.2.3", HttpsStrategy: "acme", Acme: &agentv1.AcmeOrder{
		DirectoryUrl: p.DirectoryURL, ContactEmail: "ops@fleet.test", Domains: []string{"node.test"},
		HttpPort: int32(port), DirectoryCaPem: p.DirectoryCAPEM}}
	ta.bootstrap(t.Context(), "cmd-acme", b)
	want := []string{"installing started", "installing succeeded", "starting started", "starting succeeded", "done succeeded"}
	if got := ta.steps(t); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("progress %q, want %q (last: %v)\n%s", got, want, ta.lastProgress(), ta.logText(SourceAgent))
	}
	url := ta.node.URL()
	if page := get(t, url, p.Roots, "node.test"); !strings.Contains(page, "Flotilla instance acme-1") {
		t.Fatalf("page = %q", page)
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "https://"), "/")
	first := leafAt(t, addr, p.Roots)
	if st := ta.state.Get(); st.Node == nil || st.Node.ACME == nil || st.Node.ACME.HTTPPort != port {
		t.Fatalf("the order is not kept for renewals: %+v", st.Node)
	}

	// A connection opened before the renewal.
	keep, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.Roots, ServerName: "node.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	kr := bufio.NewReader(keep)
	roundTrip(t, keep, kr)

	ta.refreshCertificate(t.Context(), "cmd-renew", &agentv1.RefreshCertificate{Acme: b.GetAcme()})
	deadline := time.Now().Add(60 * time.Second)
	var renewed *x509.Certificate
	for renewed = leafAt(t, addr, p.Roots); renewed.Equal(first); renewed = leafAt(t, addr, p.Roots) {
		if time.Now().After(deadline) {
			t.Fatalf("the node still serves serial %v after a forced renewal\n%s", first.SerialNumber, ta.logText(SourceAgent))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if renewed.VerifyHostname("node.test") != nil {
		t.Fatalf("the renewed certificate is not for node.test: %v", renewed.DNSNames)
	}
	roundTrip(t, keep, kr)
	if !keep.ConnectionState().PeerCertificates[0].Equal(first) {
		t.Error("the open connection changed certificates")
	}
	if !strings.Contains(ta.logText(SourceAgent), "renewed the node software's ACME certificate") {
		t.Errorf("no renewal in the logs:\n%s", ta.logText(SourceAgent))
	}
	// The account key came from the manager and stays off the disk; the
	// renewed certificate went to the manager to keep.
	if _, err := os.Stat(filepath.Join(ta.cfg.StateDir, acmeAccountKeyFile)); !os.IsNotExist(err) {
		t.Errorf("an ACME account key file in the state directory: %v", err)
	}
	if kept := ta.acme.kept(t); !kept.Equal(renewed) {
		t.Errorf("the manager keeps serial %v, the node serves %v", kept.SerialNumber, renewed.SerialNumber)
	}

	// A refresh with a new order (another domain, another contact): the
	// agent orders as it says, now and at every renewal after.
	more := proto.Clone(b.GetAcme()).(*agentv1.AcmeOrder)
	more.Domains, more.ContactEmail = []string{"node.test", "www.node.test"}, "web@fleet.test"
	ta.refreshCertificate(t.Context(), "cmd-more", &agentv1.RefreshCertificate{Acme: more})
	deadline = time.Now().Add(60 * time.Second)
	for c := leafAt(t, addr, p.Roots); c.VerifyHostname("www.node.test") != nil; c = leafAt(t, addr, p.Roots) {
		if time.Now().After(deadline) {
			t.Fatalf("the node serves %v after a refresh for www.node.test too\n%s", c.DNSNames, ta.logText(SourceAgent))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := ta.state.Get(); st.Node.ACME.ContactEmail != "web@fleet.test" || len(st.Node.ACME.Domains) != 2 {
		t.Errorf("the order kept for renewals: %+v", st.Node.ACME)
	}
}

// TestACMEDNS01ThroughTheManager: with acme.challenge dns-01 the agent has
// the manager write the TXT record (here a stand-in that a DNS server
// answers from, as the manager writes Route53 and Pebble asks DNS); Pebble
// validates it, the node serves the certificate, the record is removed
// afterwards and the manager keeps the certificate. A new VM of the
// instance gets that certificate back and orders nothing, even with the
// ACME server gone.
func TestACMEDNS01ThroughTheManager(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	dns := testkit.StartDNS(t, ta.acme.TXT)
	p := testkit.StartPebbleWith(t, testkit.PebbleOptions{DNSAddr: dns.Addr})
	order := &agentv1.AcmeOrder{DirectoryUrl: p.DirectoryURL, ContactEmail: "ops@fleet.test", Domains: []string{"node.test"},
		DirectoryCaPem: p.DirectoryCAPEM, Challenge: "dns-01", DnsResolvers: []string{dns.Addr}}
	b := &agentv1.Bootstrap{InstanceName: "dns-1", NodeVersion: "1.2.3", HttpsStrategy: "acme", Acme: order}
	ta.bootstrap(t.Context(), "cmd-acme", b)
	want := []string{"installing started", "installing succeeded", "starting started", "starting succeeded", "done succeeded"}
	if got := ta.steps(t); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("progress %q, want %q (last: %v)\n%s", got, want, ta.lastProgress(), ta.logText(SourceAgent))
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(ta.node.URL(), "https://"), "/")
	served := leafAt(t, addr, p.Roots)
	if got := ta.acme.asked(); got["dns-01 put _acme-challenge.node.test"] != 1 || got["dns-01 remove _acme-challenge.node.test"] != 1 {
		t.Errorf("DNS-01 records asked of the manager: %v; want one written and removed", got)
	}
	if v, _ := ta.acme.TXT("_acme-challenge.node.test"); len(v) != 0 {
		t.Errorf("the TXT record is left after the order: %v", v)
	}
	if kept := ta.acme.kept(t); !kept.Equal(served) {
		t.Fatalf("the manager keeps serial %v, the node serves %v", kept.SerialNumber, served.SerialNumber)
	}

	// A new VM of the instance: the kept certificate, no order (the ACME
	// server is gone).
	p.Close()
	again := newTestAgent(t)
	again.mu.Lock()
	again.acme = ta.acme
	again.mu.Unlock()
	before := ta.acme.asked()["account key"]
	again.bootstrap(t.Context(), "cmd-acme", b)
	if got := again.steps(t); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("new VM: progress %q, want %q (last: %v)\n%s", got, want, again.lastProgress(), again.logText(SourceAgent))
	}
	addr = strings.TrimSuffix(strings.TrimPrefix(again.node.URL(), "https://"), "/")
	if got := leafAt(t, addr, p.Roots); !got.Equal(served) {
		t.Errorf("the new VM serves serial %v, want the kept %v", got.SerialNumber, served.SerialNumber)
	}
	if n := ta.acme.asked()["account key"]; n != before {
		t.Errorf("the new VM asked for the account key (ordered): %d times", n-before)
	}
	if !strings.Contains(again.logText(SourceAgent), "installed the ACME certificate the manager kept") {
		t.Errorf("logs:\n%s", again.logText(SourceAgent))
	}
}

// acmeManager plays the manager's ACME part for a test agent: the
// network's account key, the certificate kept for the instance and the
// DNS-01 records, counting what is asked.
type acmeManager struct {
	mu         sync.Mutex
	accountKey string
	certPEM    string
	keyPEM     string
	records    map[string][]string
	counts     map[string]int
}

func newACMEManager(t *testing.T) *acmeManager {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return &acmeManager{accountKey: string(pemKey), records: map[string][]string{}, counts: map[string]int{}}
}

// answer answers one ACME request as the manager would.
func (m *acmeManager) answer(r *agentv1.AcmeRequest) *agentv1.AcmeResponse {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := &agentv1.AcmeResponse{RequestId: r.GetRequestId()}
	switch a := r.GetAction().(type) {
	case *agentv1.AcmeRequest_AccountKey:
		m.counts["account key"]++
		out.PrivateKeyPem = m.accountKey
	case *agentv1.AcmeRequest_StoredCertificate:
		m.counts["kept certificate"]++
		out.CertificatePem, out.PrivateKeyPem = m.certPEM, m.keyPEM
	case *agentv1.AcmeRequest_StoreCertificate:
		m.counts["keep certificate"]++
		m.certPEM, m.keyPEM = a.StoreCertificate.GetCertificatePem(), a.StoreCertificate.GetPrivateKeyPem()
	case *agentv1.AcmeRequest_DnsChallenge:
		name := "_acme-challenge." + a.DnsChallenge.GetDomain()
		if a.DnsChallenge.GetRemove() {
			m.counts["dns-01 remove "+name]++
			delete(m.records, name)
		} else {
			m.counts["dns-01 put "+name]++
			m.records[name] = []string{a.DnsChallenge.GetValue()}
		}
	default:
		out.Error = "action: is required"
	}
	return out
}

// TXT answers the DNS server's TXT questions from the records written.
func (m *acmeManager) TXT(name string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.records[name]), nil
}

// asked counts the requests by kind.
func (m *acmeManager) asked() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.counts)
}

// kept is the leaf of the certificate the manager keeps.
func (m *acmeManager) kept(t *testing.T) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		certPEM := m.certPEM
		m.mu.Unlock()
		if certs, err := pki.ParseCertificatesPEM([]byte(certPEM)); err == nil {
			return certs[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("the manager keeps no certificate")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leafAt is the certificate a new TLS connection to addr is served.
func leafAt(t *testing.T, addr string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "node.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// roundTrip sends one keep-alive request on c.
func roundTrip(t *testing.T, c *tls.Conn, r *bufio.Reader) {
	t.Helper()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: node.test\r\n\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("a request on the open connection: %v", err)
	}
	_, _ = bufio.NewReader(resp.Body).WriteTo(nopWriter{})
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestTheNodeNeverGetsTheHTTP01Port: with HTTP-01 the agent answers every
// renewal on the network's HTTP port while the node serves, so the port it
// picks for the node is never that one, not even when the kernel offers it
// or the node had it before; an asked-for port and other strategies keep
// theirs.
func TestTheNodeNeverGetsTheHTTP01Port(t *testing.T) {
	t.Parallel()
	offered, err := listenAnyPort()
	if err != nil {
		t.Fatal(err)
	}
	acmePort := offered.Addr().(*net.TCPAddr).Port
	// The kernel first offers the HTTP-01 port, then any.
	first := true
	listen := func() (net.Listener, error) {
		if first {
			first = false
			return offered, nil
		}
		return listenAnyPort()
	}
	acme := &agentv1.Bootstrap{HttpsStrategy: "acme", Acme: &agentv1.AcmeOrder{HttpPort: int32(acmePort)}}
	got, err := nodePort(acme, state{}, listen)
	if err != nil || got == acmePort || got == 0 {
		t.Fatalf("a picked port: %d, %v; want one other than the HTTP-01 port %d", got, err, acmePort)
	}
	if _, err := offered.Accept(); err == nil || !errors.Is(err, net.ErrClosed) {
		t.Errorf("the refused offer is still open (%v)", err)
	}
	had := state{Node: &nodeSpec{Port: acmePort}}
	if got, err := nodePort(acme, had, listenAnyPort); err != nil || got == acmePort {
		t.Errorf("a node that had the HTTP-01 port keeps it: %d, %v", got, err)
	}
	for _, tc := range []struct {
		name string
		b    *agentv1.Bootstrap
		want int
	}{
		{"asked for", &agentv1.Bootstrap{NodePort: 8443, HttpsStrategy: "acme", Acme: &agentv1.AcmeOrder{HttpPort: 8443}}, 8443},
		{"dns-01", &agentv1.Bootstrap{HttpsStrategy: "acme", Acme: &agentv1.AcmeOrder{HttpPort: int32(acmePort), Challenge: "dns-01"}}, acmePort},
		{"self-signed", &agentv1.Bootstrap{HttpsStrategy: "self-signed"}, acmePort},
	} {
		if got, err := nodePort(tc.b, had, listenAnyPort); err != nil || got != tc.want {
			t.Errorf("%s: port %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}
