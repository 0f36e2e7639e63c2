package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
)

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
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	out := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- RunNode(ctx, NodeConfig{Listen: addr, InstanceName: "beta <&>", CertFile: certFile, KeyFile: keyFile, Stdout: out})
	}()
	if err := waitReady(t.Context(), "https://"+addr+"/", nil, nil); err != nil {
		t.Fatal(err)
	}
	page := get(t, "https://"+addr+"/", ca.Pool(), "beta.test")
	if !strings.Contains(page, "Flotilla instance beta &lt;&amp;&gt;") {
		t.Fatalf("page does not name the instance (escaped): %q", page)
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
	err := NodeConfig{Listen: "nowhere", CertFile: "c.pem"}.Validate()
	for _, flag := range []string{"--listen", "--instance-name", "--cert-file, --key-file"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() = %v, want it to name %s", err, flag)
		}
	}
}

func TestConfigNamesEveryMissingFlag(t *testing.T) {
	t.Parallel()
	err := Config{Token: "a", TokenFile: "b", HeartbeatInterval: -time.Second}.Validate()
	for _, flag := range []string{"--gateway", "--ca-file", "--state-dir", "--data-dir", "--data-disk-gb", "--vm-id", "--token, --token-file", "--heartbeat-interval"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() = %v, want it to name %s", err, flag)
		}
	}
}
