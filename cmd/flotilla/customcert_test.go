package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// operatorCert is a certificate an operator brings: chain (leaf then the
// root that signed it) and key, all PEM.
type operatorCert struct {
	leaf        *x509.Certificate
	chain, key  string
	leafOnlyPEM string
}

func issueOperatorCert(t *testing.T, root *pki.Authority, now time.Time, ttl time.Duration, dns ...string) operatorCert {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := root.Issue(key.Public(), pki.ServerProfile(dns[0], dns, []net.IP{net.ParseIP("127.0.0.1")}, now, ttl))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return operatorCert{leaf: iss.Certificate, leafOnlyPEM: string(iss.PEM), chain: string(iss.PEM) + string(root.CertificatePEM()), key: string(keyPEM)}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// served connects to the node URL trusting roots and returns the leaf
// certificate the node presents.
func served(t *testing.T, url string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	host := strings.TrimPrefix(url, "https://")
	host = strings.TrimSuffix(host, "/")
	conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to the node at %s: %v", url, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestCustomCertificateEndToEnd runs `flotilla up` with the local provider:
// a network's uploaded certificate and key, checked on input rule by rule,
// the key never answered back; an instance serving it; another instance
// overriding it with a key in AWS Secrets Manager (moto), rotated and
// picked up by :refresh-certificate without restarting the node software
// while a client keeps its connection open.
func TestCustomCertificateEndToEnd(t *testing.T) {
	t.Parallel()
	moto := testkit.StartMoto(t)
	acct := moto.Account()
	now := time.Now()
	root, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	roots := root.Pool()
	a := issueOperatorCert(t, root, now, 90*24*time.Hour, "node.test", "*.fleet.test")
	b := issueOperatorCert(t, root, now, 90*24*time.Hour, "b.fleet.test")
	c := issueOperatorCert(t, root, now, 10*24*time.Hour, "b.fleet.test") // the rotation's ends within 14 days
	expired := issueOperatorCert(t, root, now.Add(-48*time.Hour), time.Hour, "node.test")
	otherRoot, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	stranger := issueOperatorCert(t, otherRoot, now, 24*time.Hour, "node.test")

	// The instance's key lives in AWS Secrets Manager.
	cfg, err := awsx.Config(t.Context(), acct)
	if err != nil {
		t.Fatal(err)
	}
	sm := secretsmanager.NewFromConfig(cfg)
	if _, err := sm.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String("fleet/tls/b"), SecretString: aws.String(b.key)}); err != nil {
		t.Fatal(err)
	}

	dir, base := dataDir(t), freeBase(t)
	if out, err := admin(dir, "admin", "S3cret-pass", "--port", strconv.Itoa(base)); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	f := &fleet{upProc: startUp(t, dir, base,
		"FLOTILLA_SECRETS_MANAGER_REGION="+acct.Region, "FLOTILLA_SECRETS_MANAGER_ENDPOINT_URL="+acct.EndpointURL,
		"AWS_ACCESS_KEY_ID="+acct.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+acct.SecretAccessKey), t: t, dir: dir}
	f.token = f.login(t)
	t.Cleanup(func() { local.KillAll(dir) })

	network := func(cert, key string) string {
		return fmt.Sprintf(`{"name":"tls-lab","provider":"local","httpsStrategy":"custom-certificate","dns":{"hostnamePattern":"{name}.fleet.test"},"customCertificate":{"certificatePem":%s,"privateKeyPem":%s}}`,
			jsonString(cert), jsonString(key))
	}
	// Each rule refuses with 400, naming the field.
	for _, tc := range []struct{ name, body, field, rule string }{
		{"key does not match", network(a.chain, b.key), "customCertificate.privateKeyPem", "does not match"},
		{"expired", network(expired.chain, expired.key), "customCertificate.certificatePem", "expired"},
		{"chain does not verify", network(stranger.leafOnlyPEM, stranger.key), "customCertificate.certificatePem", "does not verify"},
		{"not PEM", network("hello", a.key), "customCertificate.certificatePem", "PEM"},
		{"no key", `{"name":"tls-lab","provider":"local","httpsStrategy":"custom-certificate","customCertificate":{"certificatePem":` + jsonString(a.chain) + `}}`, "customCertificate.privateKeyPem", "is required"},
		{"wrong strategy", `{"name":"tls-lab","provider":"local","httpsStrategy":"self-signed","customCertificate":{"certificatePem":` + jsonString(a.chain) + `}}`, "customCertificate", "only allowed"},
	} {
		code, out := f.do(t, "POST", "/api/v1/networks", f.token, tc.body)
		msg := fmt.Sprint(out["message"])
		if code != 400 || !strings.HasPrefix(msg, tc.field+":") || !strings.Contains(msg, tc.rule) {
			t.Errorf("%s: %d %q; want 400 naming %s (%s)", tc.name, code, msg, tc.field, tc.rule)
		}
		if strings.Contains(fmt.Sprint(out), "PRIVATE KEY") {
			t.Errorf("%s: the answer quotes the key: %v", tc.name, out)
		}
	}

	net := f.api(200, "POST", "/api/v1/networks", network(a.chain, a.key))
	got := f.raw("/api/v1/networks/" + net["id"].(string))
	cc, _ := net["customCertificate"].(map[string]any)
	if cc["privateKeyId"] == "" || (cc["privateKeyPem"] != nil && cc["privateKeyPem"] != "") || strings.Contains(string(got), "PRIVATE KEY") || strings.Contains(fmt.Sprint(net), "PRIVATE KEY") {
		t.Fatalf("the network answers its key (or no key id): %v\nGET: %s", net, got)
	}
	tmpl := f.api(200, "POST", "/api/v1/templates", `{"name":"tls-lab","provider":"local","dataDiskGb":1}`)

	// Names the certificate does not cover are refused.
	code, out := f.do(t, "POST", "/api/v1/instances", f.token, fmt.Sprintf(`{"name":"x","kind":"design","templateId":"%s","networkId":"%s","ssl":{"sans":["other.example"]}}`, tmpl["id"], net["id"]))
	if code != 400 || !strings.HasPrefix(fmt.Sprint(out["message"]), "ssl.sans:") {
		t.Errorf("an uncovered name: %d %v", code, out)
	}
	code, out = f.do(t, "POST", "/api/v1/instances", f.token, fmt.Sprintf(`{"name":"y","kind":"design","templateId":"%s","networkId":"%s","ssl":{"certificatePem":%s,"privateKeyRef":"fleet/tls/b"}}`,
		tmpl["id"], net["id"], jsonString(b.chain)))
	if code != 400 || !strings.HasPrefix(fmt.Sprint(out["message"]), "ssl.certificatePem:") || !strings.Contains(fmt.Sprint(out["message"]), "y.fleet.test") {
		t.Errorf("an instance certificate not covering its host name: %d %v", code, out)
	}

	// The network's certificate, served by the node.
	one := f.instance("one", net, tmpl, `,"ssl":{"sans":["node.test"]}`)
	// The other instance overrides it with a key in AWS Secrets Manager.
	two := f.instance("b", net, tmpl, fmt.Sprintf(`,"ssl":{"certificatePem":%s,"privateKeyRef":"fleet/tls/b"}`, jsonString(b.chain)))
	// A reference to a secret that does not exist fails the provision,
	// naming the field and AWS's error code.
	missing := f.instance("m", net, tmpl, fmt.Sprintf(`,"ssl":{"certificatePem":%s,"privateKeyRef":"fleet/tls/missing"}`, jsonString(a.chain)))
	f.api(200, "POST", "/api/v1/instances/"+one+":provision", "")
	f.api(200, "POST", "/api/v1/instances/"+two+":provision", "")
	f.api(200, "POST", "/api/v1/instances/"+missing+":provision", "")
	failed := f.waitState(missing, "failed", 3*time.Minute)
	if d := fmt.Sprint(failed["stateDetail"]); !strings.Contains(d, "privateKeyRef") || !strings.Contains(d, "ResourceNotFoundException") {
		t.Errorf("a missing Secrets Manager secret: stateDetail %q", d)
	}
	in1 := f.waitState(one, "running", 3*time.Minute)
	in2 := f.waitState(two, "running", 3*time.Minute)
	url1, url2 := in1["addresses"].(map[string]any)["url"].(string), in2["addresses"].(map[string]any)["url"].(string)
	if s := served(t, url1, roots); !s.Equal(a.leaf) {
		t.Fatalf("instance one serves %v, want the network's certificate", s.Subject)
	}
	if s := served(t, url2, roots); !s.Equal(b.leaf) {
		t.Fatalf("instance b serves %v, want its own certificate", s.Subject)
	}
	page := httpsGet(t, url1, roots)
	if !strings.Contains(page, "Flotilla instance one") {
		t.Fatalf("page %q", page)
	}

	// Rotation: the new key in Secrets Manager, the new certificate on the
	// instance, then :refresh-certificate. A client connected before keeps
	// its connection; new handshakes get the new certificate.
	keep, err := tls.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(url2, "https://"), "/"), &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	if _, err := sm.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("fleet/tls/b"), SecretString: aws.String(c.key)}); err != nil {
		t.Fatal(err)
	}
	cur := f.api(200, "GET", "/api/v1/instances/"+two, "")
	f.api(200, "PATCH", "/api/v1/instances/"+two, fmt.Sprintf(`{"version":"%v","ssl":{"certificatePem":%s,"privateKeyRef":"fleet/tls/b"}}`,
		cur["version"], jsonString(c.chain)))
	f.api(200, "POST", "/api/v1/instances/"+two+":refresh-certificate", "")
	deadline := time.Now().Add(30 * time.Second)
	for s := served(t, url2, roots); !s.Equal(c.leaf); s = served(t, url2, roots) {
		if time.Now().After(deadline) {
			t.Fatalf("after :refresh-certificate the node still serves serial %v\nlogs: %s", s.SerialNumber, f.raw("/api/v1/instances/"+two+"/logs?pageSize=5000"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(keep, "GET / HTTP/1.1\r\nHost: b\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(keep), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the connection open before the refresh broke: %v", err)
	}
	resp.Body.Close()
	if s := keep.ConnectionState().PeerCertificates[0]; !s.Equal(b.leaf) {
		t.Errorf("the open connection changed certificates")
	}

	// The rotated certificate ends within 14 days: its agent's next
	// heartbeat shows it on the instance, and the fleet overview names it.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ov := f.api(200, "GET", "/api/v1/overview", "")
		ending, _ := ov["certificatesEnding"].([]any)
		if len(ending) == 1 && ending[0].(map[string]any)["name"] == "b" && fmt.Sprint(ov["certificatesEndingCount"]) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the rotation the overview names %v (%v), want b alone", ending, ov["certificatesEndingCount"])
		}
	}
	got2 := f.api(200, "GET", "/api/v1/instances/"+two, "")
	if ends, _ := time.Parse(time.RFC3339, fmt.Sprint(got2["agent"].(map[string]any)["nodeCertificateNotAfter"])); !ends.Equal(c.leaf.NotAfter) {
		t.Errorf("instance b shows its certificate ending %v, want %v", got2["agent"], c.leaf.NotAfter)
	}

	// No key reached the logs, the events, the instances or flotilla up's output.
	everything := f.out.String() + string(f.raw("/api/v1/instances/"+one+"/events")) + string(f.raw("/api/v1/instances/"+two+"/events")) +
		string(f.raw("/api/v1/instances/"+one+"/logs?pageSize=5000")) + string(f.raw("/api/v1/instances/"+two+"/logs?pageSize=5000")) +
		string(f.raw("/api/v1/instances/"+two)) + string(f.raw("/api/v1/networks/"+net["id"].(string)))
	for name, k := range map[string]string{"a": a.key, "b": b.key, "c": c.key} {
		body := strings.Split(k, "\n")[1]
		if strings.Contains(everything, body) {
			t.Errorf("key %s leaked", name)
		}
	}
}

// httpsGet fetches url trusting roots.
func httpsGet(t *testing.T, url string, roots *x509.CertPool) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
