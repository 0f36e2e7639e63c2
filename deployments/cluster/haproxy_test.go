package cluster_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
)

// TestHAProxysOwnErrorsAreFlotillas runs HAProxy with the cluster's
// configuration and no gateway up: its 503 is a JSON body in Flotilla's
// error shape (docs/errors.md), which the CLI and the console show as a
// sentence, not HAProxy's HTML page.
func TestHAProxysOwnErrorsAreFlotillas(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy is not installed (.ci/run installs it)")
	}
	// A loopback address of the test's own: the configuration's ports are
	// fixed, and nothing else on the machine binds this address.
	const front = "127.77.0.1"
	dir := t.TempDir()
	cert, pool := selfSigned(t, dir, front)
	vars := map[string]string{
		"HAPROXY_ADDR": front, "API_CERT_PEM": cert, "GATEWAY_CA_FILE": filepath.Join(dir, "cert.pem"),
		"HAPROXY_GLOBAL": "",
	}
	for i, h := range []string{"h1", "h2", "h3"} {
		n := string(rune('1' + i))
		vars["NODE"+n+"_NAME"] = h
		vars["NODE"+n+"_ADDR"] = "127.77.0." + string(rune('2'+i)) // nothing listens there
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	renderTemplate(t, "haproxy.cfg", cfg, vars)
	hp := exec.Command("haproxy", "-db", "-f", cfg)
	var out testkit.Buffer
	hp.Stdout, hp.Stderr = &out, &out
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = hp.Process.Kill()
		_ = hp.Wait()
	})

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var status int
	var ctype string
	var body []byte
	testkit.WaitFor(t, 15*time.Second, "HAProxy answering", func() bool {
		resp, err := client.Get("https://" + net.JoinHostPort(front, "7700") + "/api/v1/networks")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		status, ctype = resp.StatusCode, resp.Header.Get("Content-Type")
		body, _ = io.ReadAll(resp.Body)
		return true
	})
	var e struct {
		Code    int    `json:"code"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if status != http.StatusServiceUnavailable || ctype != "application/json" || json.Unmarshal(body, &e) != nil {
		t.Fatalf("HAProxy with no gateway up: %d %q %s; want 503, a JSON error\nHAProxy's log:\n%s", status, ctype, body, out.String())
	}
	if e.Code != 14 || e.Reason != "unavailable" || !strings.Contains(e.Message, "try again") {
		t.Errorf("HAProxy's 503: %+v; want code 14 (unavailable), reason unavailable, and what to do", e)
	}
}

// renderTemplate writes the configuration template name with each ${VAR}
// replaced by vars' value, as local-cluster renders it: comment lines are
// left as they are, and a variable without a value fails the test.
func renderTemplate(t *testing.T, name, to string, vars map[string]string) {
	t.Helper()
	in, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	placeholder := regexp.MustCompile(`\$\{(\w+)\}`)
	var b strings.Builder
	for line := range strings.Lines(string(in)) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			line = placeholder.ReplaceAllStringFunc(line, func(m string) string {
				v, ok := vars[m[2:len(m)-1]]
				if !ok {
					t.Fatalf("%s: %s has no value", name, m)
				}
				return v
			})
		}
		b.WriteString(line)
	}
	if err := os.WriteFile(to, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// selfSigned writes a self-signed certificate for ip to dir/cert.pem and
// it followed by its key to the file it returns (HAProxy's "crt"), and
// returns a pool trusting it.
func selfSigned(t *testing.T, dir, ip string) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(dir, "api.pem")
	if err := os.WriteFile(crt, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return crt, pool
}
