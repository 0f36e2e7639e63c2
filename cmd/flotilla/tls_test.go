package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/pki"
)

// TestTheAPIServesTLSWhenAsked: `flotilla up --tls` serves REST and gRPC
// over TLS with a certificate from the fleet CA for the local names, keeps
// the choice in the settings, and answers nothing in the clear.
func TestTheAPIServesTLSWhenAsked(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	u := startUpFree(t, dir, []string{"--tls"})
	base := u.base
	resp, err := u.client().Get(u.url("/api/v1/status"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	leaf := resp.TLS.PeerCertificates[0]
	if !slices.Contains(leaf.DNSNames, "localhost") || len(leaf.IPAddresses) == 0 || !leaf.IPAddresses[0].IsLoopback() {
		t.Errorf("API certificate names %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	// In the clear, the port answers no API.
	if resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(base) + "/api/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("the API answered over plain HTTP")
		}
	}
	// gRPC too, with the same certificate.
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca", "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("fleet CA: %v", err)
	}
	conn, err := grpc.NewClient("localhost:"+strconv.Itoa(base+1), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := systemv1.NewSystemServiceClient(conn).GetStatus(ctx, &systemv1.GetStatusRequest{}); err != nil || st.GetStatus() != "ok" {
		t.Errorf("gRPC over TLS: %v %v", st, err)
	}
	u.stop(t)
	var saved datadir.Settings
	data, _ := os.ReadFile(filepath.Join(dir, "config", "settings.json"))
	if err := json.Unmarshal(data, &saved); err != nil || saved.APITLS != datadir.APITLSFleetCA {
		t.Errorf("settings keep apiTLS %q (%v)", saved.APITLS, err)
	}
}

// TestTheAPIServesTheOperatorsCertificate: --tls-cert and --tls-key serve
// the operator's own certificate, saved in the settings.
func TestTheAPIServesTheOperatorsCertificate(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	now := time.Now()
	ca, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(key.Public(), pki.ServerProfile("api.operator.test", []string{"api.operator.test"}, []net.IP{net.IPv4(127, 0, 0, 1)}, now, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(t.TempDir(), "api.crt"), filepath.Join(t.TempDir(), "api.key")
	if err := os.WriteFile(certFile, append(iss.PEM, ca.CertificatePEM()...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	u := startUpFree(t, dir, []string{"--tls-cert", certFile, "--tls-key", keyFile})
	resp, err := u.client().Get(u.url("/api/v1/status"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "api.operator.test" {
		t.Errorf("served %q", cn)
	}
	u.stop(t)
	var saved datadir.Settings
	data, _ := os.ReadFile(filepath.Join(dir, "config", "settings.json"))
	if err := json.Unmarshal(data, &saved); err != nil || saved.APITLS != datadir.APITLSFiles || saved.TLSCertFile != certFile || saved.TLSKeyFile != keyFile {
		t.Errorf("settings keep %q %q %q (%v)", saved.APITLS, saved.TLSCertFile, saved.TLSKeyFile, err)
	}
}

// TestAReachableAPINeedsTLS: a bindAddress other hosts can reach is
// refused without TLS, naming the setting and the ways out, before
// anything starts.
func TestAReachableAPINeedsTLS(t *testing.T) {
	t.Parallel()
	dir, base := dataDir(t), freeBase(t)
	d := datadir.Dir(dir)
	s, err := datadir.Prepare(d, datadir.Overrides{BasePort: base})
	if err != nil {
		t.Fatal(err)
	}
	s.BindAddress = "0.0.0.0"
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "up", "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bindAddress") || !strings.Contains(string(out), "--tls") || !strings.Contains(string(out), "--insecure-http") {
		t.Fatalf("up on 0.0.0.0 without TLS: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
		t.Error("the refused start created the database")
	}
	// Half a pair of files is refused as well.
	out, err = exec.Command(binary, "up", "--data-dir", dir, "--tls-cert", "x.pem").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--tls-key") {
		t.Fatalf("--tls-cert alone: %v\n%s", err, out)
	}
}
