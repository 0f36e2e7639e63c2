package node_test

import (
	"context"
	"crypto/tls"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/agent/node"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// The node software serves HTTPS with the certificate in its files, its
// page naming the instance (escaped), and logs each request.
func TestNodeServesHTTPSNamingTheInstance(t *testing.T) {
	t.Parallel()
	ca, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(key.Public(), pki.ServerProfile("beta.test", []string{"beta.test"}, nil, time.Now(), time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, iss.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- node.Run(ctx, node.Config{Listen: "127.0.0.1:0", InstanceName: "beta <&>", CertFile: certFile, KeyFile: keyFile, Stdout: out})
	}()
	// It names where it serves once it listens.
	serving := regexp.MustCompile(`serving instance beta <&> on (https://127\.0\.0\.1:\d+/)`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == ""; {
		if m := serving.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("the node never said where it serves: %q", out.String())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "beta.test"},
	}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), "Flotilla instance beta &lt;&amp;&gt;") {
		t.Fatalf("page does not name the instance (escaped): %q", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "GET / 200") {
		t.Fatalf("request log = %q", out.String())
	}
}

func TestNodeConfigNamesItsFlags(t *testing.T) {
	t.Parallel()
	err := node.Config{Listen: "nowhere", CertFile: "c.pem"}.Validate()
	for _, flag := range []string{"--listen", "--instance-name", "--cert-file, --key-file"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() = %v, want it to name %s", err, flag)
		}
	}
}

// The flags the agent starts the node software with (agent/node.go's
// launch) are the ones Bind declares.
func TestBindTakesTheAgentsFlags(t *testing.T) {
	t.Parallel()
	var c node.Config
	fs := flag.NewFlagSet("flotilla-node", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse([]string{"--listen", "0.0.0.0:8443", "--instance-name", "web-1", "--cert-file", "c.pem", "--key-file", "k.pem"}); err != nil {
		t.Fatal(err)
	}
	if want := (node.Config{Listen: "0.0.0.0:8443", InstanceName: "web-1", CertFile: "c.pem", KeyFile: "k.pem"}); c != want {
		t.Fatalf("parsed %+v, want %+v", c, want)
	}
}
