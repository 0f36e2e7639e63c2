package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/pki"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey()
	must(t, err)
	return k
}

// Sixteen manager nodes start at once on empty shared files: one generates
// the CA, every other loads that one.
func TestLoadOrCreateRace(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	const n = 16
	type result struct {
		fp      string
		created bool
		err     error
	}
	results := make(chan result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			a, created, err := pki.LoadOrCreate(certFile, keyFile, time.Now())
			r := result{created: created, err: err}
			if err == nil {
				r.fp = a.Fingerprint()
			}
			results <- r
		})
	}
	close(start)
	wg.Wait()
	close(results)
	fps := map[string]bool{}
	creators := 0
	for r := range results {
		if r.err != nil {
			t.Fatalf("LoadOrCreate: %v", r.err)
		}
		fps[r.fp] = true
		if r.created {
			creators++
		}
	}
	if len(fps) != 1 || creators != 1 {
		t.Fatalf("%d different CAs, %d creators; want 1 and 1", len(fps), creators)
	}
	onDisk, err := pki.Load(certFile, keyFile, time.Now())
	must(t, err)
	if !fps[onDisk.Fingerprint()] {
		t.Fatal("the CA on disk is not the one every node got")
	}
	entries, err := os.ReadDir(dir)
	must(t, err)
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v; want ca.crt and ca.key (no temporary files left)", names)
	}
}

// A node that finds a fresh key without its certificate waits for the node
// creating them instead of failing.
func TestLoadOrCreateWaitsForACreatorInProgress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	// The other node's CA, made elsewhere.
	src := t.TempDir()
	srcCert, srcKey := filepath.Join(src, "ca.crt"), filepath.Join(src, "ca.key")
	a, _, err := pki.LoadOrCreate(srcCert, srcKey, time.Now())
	must(t, err)
	keyPEM, err := os.ReadFile(srcKey)
	must(t, err)
	must(t, os.WriteFile(keyFile, keyPEM, 0o600))
	// Like the creator, write the certificate aside and link it into place.
	tmp := filepath.Join(dir, ".ca.crt.tmp")
	must(t, os.WriteFile(tmp, a.CertificatePEM(), 0o644))
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = os.Link(tmp, certFile)
	}()
	got, created, err := pki.LoadOrCreate(certFile, keyFile, time.Now())
	must(t, err)
	if created || got.Fingerprint() != a.Fingerprint() {
		t.Fatalf("created %v, CA %s; want the other node's %s loaded", created, got.Fingerprint(), a.Fingerprint())
	}
}

// An operator's intermediate CA, with its root after it in the certificate
// file and a SEC 1 key: issued certificates carry the intermediate and
// verify against the root alone.
func TestOperatorIntermediate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(t, err)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(20, 0, 0),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	must(t, err)
	root, err := x509.ParseCertificate(rootDER)
	must(t, err)
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Corp Flotilla CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	must(t, err)
	inter, err := x509.ParseCertificate(interDER)
	must(t, err)

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	must(t, os.WriteFile(certFile, pki.EncodeCertificatesPEM(inter, root), 0o644))
	sec1, err := x509.MarshalECPrivateKey(interKey)
	must(t, err)
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), 0o600))

	a, created, err := pki.LoadOrCreate(certFile, keyFile, now)
	must(t, err)
	if created || a.Certificate().Subject.CommonName != "Corp Flotilla CA" {
		t.Fatalf("created %v, signer %q; want the operator's intermediate loaded", created, a.Certificate().Subject)
	}
	iss, err := a.Issue(newKey(t).Public(), pki.ServerProfile("db.corp.example", []string{"db.corp.example"}, nil, now, 90*24*time.Hour))
	must(t, err)
	chain, err := pki.ParseCertificatesPEM(iss.PEM)
	must(t, err)
	if len(chain) != 2 || !chain[1].Equal(inter) {
		t.Fatalf("issued PEM holds %d certificates; want the leaf and the intermediate", len(chain))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inters := x509.NewCertPool()
	inters.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, DNSName: "db.corp.example"}); err != nil {
		t.Fatalf("verify against the root: %v", err)
	}
	if bin, err := exec.LookPath("openssl"); err == nil {
		rootFile, leafFile := filepath.Join(dir, "root.pem"), filepath.Join(dir, "leaf.pem")
		must(t, os.WriteFile(rootFile, pki.EncodeCertificatesPEM(root), 0o644))
		must(t, os.WriteFile(leafFile, iss.PEM, 0o644))
		// openssl verify takes the leaf from the file's first block and the
		// rest as untrusted intermediates.
		out, err := exec.Command(bin, "verify", "-CAfile", rootFile, "-untrusted", leafFile, "-purpose", "sslserver", leafFile).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
	}
	if got := a.CertificatePEM(); !bytes.Equal(got, pki.EncodeCertificatesPEM(inter, root)) {
		t.Error("CertificatePEM is not the intermediate followed by the root")
	}
}

// The agent gateway's listener takes an agent certificate and reads its
// instance id; it turns away server certificates and strangers.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	now := time.Now()
	a, err := pki.GenerateCA(now)
	must(t, err)
	other, err := pki.GenerateCA(now)
	must(t, err)
	pair := func(auth *pki.Authority, p pki.Profile) tls.Certificate {
		k := newKey(t)
		iss, err := auth.Issue(k.Public(), p)
		must(t, err)
		keyPEM, err := pki.EncodePrivateKeyPEM(k)
		must(t, err)
		c, err := tls.X509KeyPair(iss.PEM, keyPEM)
		must(t, err)
		return c
	}
	serverCert := pair(a, pki.ServerProfile("agentgw.local", []string{"agentgw.local"}, []net.IP{net.ParseIP("127.0.0.1")}, now, time.Hour))
	roots, err := pki.CertPool(a.CertificatePEM())
	must(t, err)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.MutualTLSServerConfig(serverCert, a.Pool()))
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	type outcome struct {
		id  string
		err error
	}
	outcomes := make(chan outcome)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					outcomes <- outcome{err: err}
					return
				}
				id, err := pki.PeerInstanceID(tc.ConnectionState())
				_, _ = tc.Write([]byte("x"))
				outcomes <- outcome{id: id, err: err}
			}()
		}
	}()
	dial := func(clientCert tls.Certificate) outcome {
		c, err := tls.Dial("tcp", ln.Addr().String(), pki.MutualTLSClientConfig(clientCert, roots, "agentgw.local"))
		if err == nil {
			_, _ = io.ReadFull(c, make([]byte, 1)) // TLS 1.3: the server's verdict arrives after the handshake
			c.Close()
		}
		return <-outcomes
	}

	if o := dial(pair(a, pki.AgentProfile("i-42", "vm-1", now, time.Hour))); o.err != nil || o.id != "i-42" {
		t.Errorf("agent certificate: id %q, %v; want i-42", o.id, o.err)
	}
	if o := dial(pair(a, pki.ServerProfile("x.example", []string{"x.example"}, nil, now, time.Hour))); o.err == nil {
		t.Error("a server certificate authenticated as a client")
	}
	if o := dial(pair(other, pki.AgentProfile("i-42", "vm-1", now, time.Hour))); o.err == nil {
		t.Error("an agent certificate from another CA was accepted")
	}
}

func TestAgentInstanceIDWantsAnAgentCertificate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	a, err := pki.GenerateCA(now)
	must(t, err)
	issue := func(p pki.Profile) *x509.Certificate {
		iss, err := a.Issue(newKey(t).Public(), p)
		must(t, err)
		return iss.Certificate
	}
	if _, err := pki.AgentInstanceID(issue(pki.ServerProfile("x.example", []string{"x.example"}, nil, now, time.Hour))); err == nil {
		t.Error("a server certificate names an instance")
	}
	if _, err := pki.AgentInstanceID(issue(pki.AgentProfile("a.>", "", now, time.Hour))); err == nil {
		t.Error("an agent certificate whose CN is no instance id names one")
	}
	// An agent certificate names the VM it was issued for.
	c := issue(pki.AgentProfile("i-1", "vm-0190c3e1", now, time.Hour))
	if id, err := pki.AgentInstanceID(c); err != nil || id != "i-1" || pki.AgentVMID(c) != "vm-0190c3e1" {
		t.Errorf("instance %q (%v), VM %q", id, err, pki.AgentVMID(c))
	}
	if vm := pki.AgentVMID(issue(pki.AgentProfile("i-1", "", now, time.Hour))); vm != "" {
		t.Errorf("a certificate without a VM names %q", vm)
	}
}

func TestParseCSRKeyStrength(t *testing.T) {
	t.Parallel()
	gen := map[string]func() (crypto.Signer, error){
		"P-256":    func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) },
		"P-384":    func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) },
		"Ed25519":  func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err },
		"RSA-2048": func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) },
		"P-224":    func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P224(), rand.Reader) },
		"RSA-1024": func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 1024) },
	}
	for name, weak := range map[string]bool{"P-256": false, "P-384": false, "Ed25519": false, "RSA-2048": false, "P-224": true, "RSA-1024": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			k, err := gen[name]()
			must(t, err)
			der, err := pki.NewCSR(k, "x")
			must(t, err)
			_, err = pki.ParseCSR(der)
			if weak != (err != nil) {
				t.Fatalf("ParseCSR(%s key): %v; want weak=%v", name, err, weak)
			}
			if weak && !strings.Contains(err.Error(), "too weak") {
				t.Fatalf("error %q does not say the key is too weak", err)
			}
		})
	}
}

func TestLoadRejectsEncryptedKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	_, _, err := pki.LoadOrCreate(certFile, keyFile, time.Now())
	must(t, err)
	must(t, os.WriteFile(keyFile, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600))
	_, err = pki.Load(certFile, keyFile, time.Now())
	if err == nil || !strings.Contains(err.Error(), keyFile) || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("Load: %v; want an error naming %s and saying it is encrypted", err, keyFile)
	}
}

func TestInstanceNamesStayOffTheManagersHost(t *testing.T) {
	t.Parallel()
	reserved := []string{"agents.example.com", "10.0.0.9"}
	for raw, ok := range map[string]bool{
		"node-1.example.com": true, "*.node-1.example.com": true, "10.0.0.5": true, "2001:db8::1": true, "Node-1.Example.com.": true,
		"localhost": false, "LOCALHOST.": false, "app.localhost": false, "127.0.0.1": false, "127.8.9.10": false, "::1": false,
		"0.0.0.0": false, "::": false, "::ffff:127.0.0.1": false, "agents.example.com": false, "Agents.Example.Com.": false, "10.0.0.9": false,
		"": false, "a b": false, "1.2.3": false,
	} {
		_, _, err := pki.CheckInstanceName(raw, reserved)
		if (err == nil) != ok {
			t.Errorf("CheckInstanceName(%q) = %v, want ok=%v", raw, err, ok)
		}
	}
	// The provider's own addresses are kept (the local provider's VMs share
	// the host's loopback); names from the spec that break the rule are not.
	in := &inventoryv1.Instance{Ssl: &inventoryv1.SslSettings{Sans: []string{"n.example.com", "localhost", "N.example.com."}},
		Addresses: &inventoryv1.Addresses{PrivateIp: "127.0.0.1", PrivateDns: "ip-10-0-0-5.internal"}}
	if got := pki.InstanceServerNames(in, reserved); !slices.Equal(got, []string{"n.example.com", "127.0.0.1", "ip-10-0-0-5.internal"}) {
		t.Errorf("instance server names %v", got)
	}
	// A cloud VM: its DNS record's name and public addresses too, so the
	// node's URL (named after the first of them) verifies.
	in.Addresses = &inventoryv1.Addresses{Hostname: "web-1.fleet.example", PublicDns: "ec2-3-4-5-6.compute.example", PublicIp: "3.4.5.6",
		PrivateIp: "10.0.0.5", PrivateDns: "ip-10-0-0-5.internal"}
	if got := pki.InstanceServerNames(in, reserved); !slices.Equal(got, []string{"n.example.com", "web-1.fleet.example",
		"ec2-3-4-5-6.compute.example", "3.4.5.6", "10.0.0.5", "ip-10-0-0-5.internal"}) {
		t.Errorf("instance server names %v", got)
	}
}

func TestTheAgentGatewayHasACAOfItsOwn(t *testing.T) {
	t.Parallel()
	now := time.Now()
	dir := t.TempDir()
	root, _, err := pki.LoadOrCreate(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), now)
	must(t, err)
	gwCert, gwKey := filepath.Join(dir, "agentgw-ca.crt"), filepath.Join(dir, "agentgw-ca.key")
	gw, created, err := pki.LoadOrCreateGatewayCA(root, gwCert, gwKey, now)
	must(t, err)
	again, created2, err := pki.LoadOrCreateGatewayCA(root, gwCert, gwKey, now)
	must(t, err)
	if !created || created2 || again.Fingerprint() != gw.Fingerprint() {
		t.Fatalf("created %v then %v; fingerprints %s, %s", created, created2, gw.Fingerprint(), again.Fingerprint())
	}
	// It signs server certificates only, and they verify up to the fleet CA.
	leaf, err := gw.Issue(newKey(t).Public(), pki.ServerProfile("agents", []string{"agents.example.com"}, nil, now, time.Hour))
	must(t, err)
	certs, err := pki.ParseCertificatesPEM(leaf.PEM)
	must(t, err)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: inter, DNSName: "agents.example.com"}); err != nil {
		t.Errorf("the gateway's certificate does not verify to the fleet CA: %v", err)
	}
	client, err := gw.Issue(newKey(t).Public(), pki.AgentProfile("i-1", "vm-1", now, time.Hour))
	must(t, err)
	if _, err := client.Certificate.Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a client certificate from the agent gateway CA verifies")
	}
	// Another fleet CA's files are refused, naming what to remove.
	other, err := pki.GenerateCA(now)
	must(t, err)
	if _, _, err := pki.LoadOrCreateGatewayCA(other, gwCert, gwKey, now); err == nil || !strings.Contains(err.Error(), "remove "+gwCert) {
		t.Errorf("a gateway CA of another fleet CA: %v", err)
	}
}

// A derived key is the same from every copy of the CA's files, differs by
// purpose and by CA, and is 32 bytes.
func TestDerivedKeysFollowTheCAKeyAndThePurpose(t *testing.T) {
	t.Parallel()
	now := time.Now()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	a, _, err := pki.LoadOrCreate(certFile, keyFile, now)
	must(t, err)
	copyOf, created, err := pki.LoadOrCreate(certFile, keyFile, now)
	must(t, err)
	other, err := pki.GenerateCA(now)
	must(t, err)
	derive := func(a *pki.Authority, purpose string) []byte {
		t.Helper()
		k, err := a.DeriveKey(purpose)
		must(t, err)
		if len(k) != 32 {
			t.Fatalf("%d bytes", len(k))
		}
		return k
	}
	k := derive(a, "tickets 1")
	if created || !bytes.Equal(derive(copyOf, "tickets 1"), k) {
		t.Error("the same CA files derive another key")
	}
	if bytes.Equal(derive(a, "tickets 2"), k) || bytes.Equal(derive(other, "tickets 1"), k) {
		t.Error("another purpose, or another CA, derives the same key")
	}
}

func TestServingCertificatesRenewAndReload(t *testing.T) {
	t.Parallel()
	now := time.Now()
	a, err := pki.GenerateCA(now)
	must(t, err)
	clock := now
	get, err := pki.ServingCertificate(a, []string{"api.example.test", "127.0.0.1"}, 30*time.Hour, func() time.Time { return clock })
	must(t, err)
	first, err := get(nil)
	must(t, err)
	if !slices.Equal(first.Leaf.DNSNames, []string{"api.example.test"}) || len(first.Leaf.IPAddresses) != 1 {
		t.Errorf("names %v %v", first.Leaf.DNSNames, first.Leaf.IPAddresses)
	}
	clock = now.Add(10 * time.Hour)
	if c, _ := get(nil); c != first {
		t.Error("renewed before two thirds of its life")
	}
	clock = now.Add(21 * time.Hour)
	if c, _ := get(nil); c == first || !c.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Error("not renewed after two thirds of its life")
	}

	// Files: read again when they change; a broken pair keeps the last good one.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	write := func(cn string, at time.Time) {
		key := newKey(t)
		iss, err := a.Issue(key.Public(), pki.ServerProfile(cn, []string{cn}, nil, now, time.Hour))
		must(t, err)
		keyPEM, err := pki.EncodePrivateKeyPEM(key)
		must(t, err)
		must(t, os.WriteFile(certFile, iss.PEM, 0o644))
		must(t, os.WriteFile(keyFile, keyPEM, 0o600))
		must(t, os.Chtimes(certFile, at, at))
		must(t, os.Chtimes(keyFile, at, at))
	}
	write("one.example.test", now)
	load, err := pki.FileCertificate(certFile, keyFile)
	must(t, err)
	cn := func() string {
		c, err := load(nil)
		must(t, err)
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		must(t, err)
		return leaf.Subject.CommonName
	}
	if cn() != "one.example.test" {
		t.Fatal("first pair not served")
	}
	write("two.example.test", now.Add(time.Minute))
	if cn() != "two.example.test" {
		t.Error("a renewed pair is not served")
	}
	must(t, os.WriteFile(certFile, []byte("broken"), 0o644))
	must(t, os.Chtimes(certFile, now.Add(2*time.Minute), now.Add(2*time.Minute)))
	if cn() != "two.example.test" {
		t.Error("a broken pair replaced the good one")
	}
	if _, err := pki.FileCertificate(filepath.Join(dir, "none.crt"), keyFile); err == nil {
		t.Error("a missing file was accepted")
	}
}
