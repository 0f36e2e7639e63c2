package cluster_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestHAProxysOwnErrorsAreFlotillas runs HAProxy with the cluster's
// configuration and no gateway up: its 503 is a JSON body in Flotilla's
// error shape (docs/errors.md), which the CLI and the console show as a
// sentence, not HAProxy's HTML page.
func TestHAProxysOwnErrorsAreFlotillas(t *testing.T) {
	t.Parallel()
	hp := startHAProxy(t, loopbackNet+".0")
	var status int
	var ctype string
	var body []byte
	testkit.WaitFor(t, 15*time.Second, "HAProxy answering", func() bool {
		resp, err := hp.client.Get(hp.api + "/api/v1/networks")
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
		t.Fatalf("HAProxy with no gateway up: %d %q %s; want 503, a JSON error\nHAProxy's log:\n%s", status, ctype, body, hp.log.String())
	}
	if e.Code != 14 || e.Reason != "unavailable" || !strings.Contains(e.Message, "try again") {
		t.Errorf("HAProxy's 503: %+v; want code 14 (unavailable), reason unavailable, and what to do", e)
	}
}

// TestHAProxySendsToDegradedGatewaysWhenNoneIsOk: while every gateway
// reports degraded (PostgreSQL between leaders, say), HAProxy sends
// requests to those that are up all the same, which answer what they can,
// rather than refuse them all; once one gateway is ok again, it alone gets
// them.
func TestHAProxySendsToDegradedGatewaysWhenNoneIsOk(t *testing.T) {
	t.Parallel()
	hp := startHAProxy(t, loopbackNet+".1")
	// h1 and h2 answer every request but their status; h3 is down.
	var ok [2]atomic.Bool
	for i, name := range []string{"h1", "h2"} {
		ln, err := net.Listen("tcp", hp.nodes[i]+":7700")
		if err != nil {
			t.Fatal(err)
		}
		gw := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/v1/status" && !ok[i].Load() {
				http.Error(w, `{"status":"degraded"}`, http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, name)
		}))
		gw.Listener = ln
		gw.TLS = &tls.Config{Certificates: []tls.Certificate{hp.cert}}
		gw.StartTLS()
		t.Cleanup(gw.Close)
	}
	// answers sends n requests and counts the answers by what they say.
	answers := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			resp, err := hp.client.Get(hp.api + "/api/v1/networks")
			if err != nil {
				got[err.Error()]++
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				body = []byte(resp.Status)
			}
			got[string(body)]++
		}
		return got
	}

	hp.waitFor(t, "gateways", map[string]string{"h1": "DOWN", "h2": "DOWN", "h3": "DOWN"})
	if got := answers(12); got["h1"]+got["h2"] != 12 || got["h1"] == 0 || got["h2"] == 0 {
		t.Fatalf("with every gateway degraded: %v; want all 12 answered by h1 and h2", got)
	}
	ok[1].Store(true)
	hp.waitFor(t, "gateways", map[string]string{"h1": "DOWN", "h2": "UP"})
	if got := answers(12); got["h2"] != 12 {
		t.Fatalf("with h2 ok again: %v; want all 12 answered by h2", got)
	}
}

// loopbackNet is where this run's HAProxy tests bind: 127.<random>, so two
// runs at once (the configuration's ports are fixed) do not meet.
var loopbackNet = "127." + strconv.Itoa(64+mathrand.IntN(128))

// haproxy is HAProxy running the cluster's configuration on the loopback
// addresses <net3>.1 (HAProxy) and <net3>.2–4 (the hosts h1–h3).
type haproxy struct {
	api, stats string
	nodes      []string
	client     *http.Client
	cert       tls.Certificate // HAProxy's and the hosts', for h1–h3 and HAProxy's address
	log        *testkit.Buffer
}

// startHAProxy starts HAProxy on addresses of the test's own (net3, a
// loopback /24 under loopbackNet): the configuration's ports are fixed.
func startHAProxy(t *testing.T, net3 string) *haproxy {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy is not installed (.ci/run installs it)")
	}
	front := net3 + ".1"
	dir := t.TempDir()
	crt, pool, cert := serverCert(t, dir, front, "h1", "h2", "h3")
	hp := &haproxy{api: "https://" + front + ":7700", stats: "http://" + front + ":8404/stats;csv", cert: cert, log: &testkit.Buffer{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	vars := map[string]string{
		"HAPROXY_ADDR": front, "API_CERT_PEM": crt, "GATEWAY_CA_FILE": filepath.Join(dir, "ca.pem"),
		"HAPROXY_GLOBAL": "",
	}
	for i, h := range []string{"h1", "h2", "h3"} {
		n := strconv.Itoa(i + 1)
		hp.nodes = append(hp.nodes, net3+"."+strconv.Itoa(i+2))
		vars["NODE"+n+"_NAME"], vars["NODE"+n+"_ADDR"] = h, hp.nodes[i]
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	renderTemplate(t, "haproxy.cfg", cfg, vars)
	cmd := exec.Command("haproxy", "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = hp.log, hp.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return hp
}

// waitFor waits until HAProxy's statistics give each server of backend
// the status want has for it ("UP", "DOWN").
func (hp *haproxy) waitFor(t *testing.T, backend string, want map[string]string) {
	t.Helper()
	var last map[string]string
	ok := func() bool {
		resp, err := http.Get(hp.stats)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		rows, err := csv.NewReader(resp.Body).ReadAll()
		if err != nil || len(rows) == 0 {
			return false
		}
		col := slices.Index(rows[0], "status")
		last = map[string]string{}
		for _, r := range rows[1:] {
			if len(r) > col && r[0] == backend {
				last[r[1]] = r[col]
			}
		}
		for s, st := range want {
			if last[s] != st {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy's %s: %v; want %v\nHAProxy's log:\n%s", backend, last, want, hp.log.String())
		}
		time.Sleep(100 * time.Millisecond)
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

// serverCert issues, from a CA of its own, a server certificate for ip and
// names: the CA goes to dir/ca.pem (HAProxy's ca-file for the gateways),
// the certificate followed by its key to the file returned (HAProxy's
// "crt"); it returns a pool trusting the CA and the certificate with its
// key.
func serverCert(t *testing.T, dir, ip string, names ...string) (string, *x509.CertPool, tls.Certificate) {
	t.Helper()
	now := time.Now()
	ca, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	issued, err := ca.Issue(key.Public(), pki.ServerProfile(ip, names, []net.IP{net.ParseIP(ip)}, now, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	crt := filepath.Join(dir, "api.pem")
	if err := os.WriteFile(crt, append(bytes.Clone(issued.PEM), keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(issued.PEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return crt, ca.Pool(), pair
}
