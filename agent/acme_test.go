package agent

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
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
	go ta.acmeLoop(t.Context())
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

	ta.refreshCertificate(t.Context(), "cmd-renew")
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
