package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/ca"
)

// clock is a settable Deps.Now.
type clock struct{ t atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Now().UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) Advance(d time.Duration) { c.t.Add(int64(d)) }
func (c *clock) within(t time.Time, want time.Time) bool {
	d := t.Sub(want)
	return d > -2*time.Second && d < 2*time.Second // certificates keep whole seconds
}

// env is one NATS server and a CA's files, with services started on them.
type env struct {
	nc        *nats.Conn
	certFile  string
	keyFile   string
	clock     *clock
	logs      *testkit.Buffer // what the services log, to check it for secrets
	instances *instances
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data", "ca")
	return &env{
		nc:        testkit.NATSConn(t, testkit.NATS(t)),
		certFile:  filepath.Join(dir, "ca.crt"),
		keyFile:   filepath.Join(dir, "ca.key"),
		clock:     newClock(),
		logs:      &testkit.Buffer{},
		instances: &instances{m: map[string]*inventoryv1.Instance{}},
	}
}

// instances is the inventory as the CA sees it: an instance not put here
// exists and is being provisioned on VM vmOf(id), with no names of its own;
// a template not put here is of provider local.
type instances struct {
	mu        sync.Mutex
	m         map[string]*inventoryv1.Instance
	templates map[string]*inventoryv1.Template
}

func (i *instances) putTemplate(t *inventoryv1.Template) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.templates == nil {
		i.templates = map[string]*inventoryv1.Template{}
	}
	i.templates[t.GetId()] = t
}

func (i *instances) GetTemplate(_ context.Context, id string) (*inventoryv1.Template, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if t, ok := i.templates[id]; ok {
		return t, nil
	}
	return &inventoryv1.Template{Id: id, Provider: string(vocab.ProviderLocal)}, nil
}

func (i *instances) put(in *inventoryv1.Instance) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.m[in.GetId()] = in
}

// gone makes id an instance that does not exist.
func (i *instances) gone(id string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.m[id] = nil
}

func (i *instances) GetInstance(_ context.Context, id string) (*inventoryv1.Instance, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	in, ok := i.m[id]
	switch {
	case !ok:
		return &inventoryv1.Instance{Id: id, State: string(vocab.StateProvisioning), VmId: vmOf(id)}, nil
	case in == nil:
		return nil, apierr.NotFound("instance", id)
	}
	return in, nil
}

func (i *instances) GetInstances(ctx context.Context, ids []string) ([]*inventoryv1.Instance, error) {
	var out []*inventoryv1.Instance
	for _, id := range ids {
		in, err := i.GetInstance(ctx, id)
		if apierr.Is(err, apierr.KindNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

func (e *env) deps(t *testing.T) ca.Deps {
	return ca.Deps{
		NATS:           e.nc,
		Log:            slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, t.Output()), nil)),
		TracerProvider: noop.NewTracerProvider(),
		Version:        "1.2.3",
		CertFile:       e.certFile,
		KeyFile:        e.keyFile,
		Now:            e.clock.Now,
		Instances:      e.instances,
	}
}

// start builds a service and runs it until the test ends.
func (e *env) start(t *testing.T) *ca.Service {
	t.Helper()
	svc, err := ca.New(t.Context(), e.deps(t))
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return svc
}

// call sends req to a CA endpoint as its first declared caller and merges
// the reply into resp.
func call[Req, Resp proto.Message](t *testing.T, nc *nats.Conn, ep endpoints.Endpoint[Req, Resp], req Req, resp Resp) error {
	t.Helper()
	caller := ep.Info().Callers[0]
	var opts []rpc.CallOption
	if r, ok := any(req).(interface{ GetInstanceId() string }); ok && caller == subjects.AgentGW && r.GetInstanceId() != "" {
		opts = append(opts, rpc.As(vocab.Agent(r.GetInstanceId()))) // the agent gateway acts for the agent
	}
	got, err := rpc.Call(t.Context(), rpc.NewClient(nc, caller, 10*time.Second), ep, req, opts...)
	if err == nil {
		proto.Merge(resp, got)
	}
	return err
}

// checkAgents asks agent.check-many about agents, as the agent gateway
// does, and returns each one's answer as an error (nil: current).
func checkAgents(t *testing.T, nc *nats.Conn, agents ...*cav1.CheckAgentRequest) []error {
	t.Helper()
	got, err := rpc.Call(t.Context(), rpc.NewClient(nc, subjects.AgentGW, 10*time.Second), endpoints.AgentCheckMany, &cav1.CheckAgentsRequest{Agents: agents})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetResults()) != len(agents) {
		t.Fatalf("%d results for %d agents", len(got.GetResults()), len(agents))
	}
	errs := make([]error, len(agents))
	for i, r := range got.GetResults() {
		if r.GetErrorKind() != "" {
			errs[i] = apierr.FromBus(r.GetErrorKind(), r.GetErrorMessage(), map[string][]string{apierr.HeaderReason: {r.GetErrorReason()}})
		}
	}
	return errs
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wantError checks that err is a service error of kind whose message
// starts with prefix.
func wantError(t *testing.T, err error, kind apierr.Kind, prefix string) {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v; want a %s service error", err, kind)
	}
	if e.Kind != kind || !strings.HasPrefix(e.Message, prefix) {
		t.Fatalf("error = %s %q; want %s %q...", e.Kind, e.Message, kind, prefix)
	}
}

func instanceID() string { return uuid.Must(uuid.NewV7()).String() }

func vmOf(id string) string { return "vm-" + id[len(id)-8:] }

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey()
	must(t, err)
	return k
}

// csrFor makes a request that asks for an identity the CA must ignore.
func csrFor(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "admin", Organization: []string{"Flotilla operators"}},
		DNSNames: []string{"evil.example.com"},
	}, key)
	must(t, err)
	return der
}

func parsePEM(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificatesPEM([]byte(s))
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return certs
}

func createToken(t *testing.T, nc *nats.Conn, id string, ttlSeconds int64) *cav1.JoinToken {
	t.Helper()
	tok := &cav1.JoinToken{}
	must(t, call(t, nc, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id, TtlSeconds: ttlSeconds}, tok))
	return tok
}

func join(t *testing.T, nc *nats.Conn, token string, csr []byte) (*cav1.AgentCertificate, error) {
	t.Helper()
	resp := &cav1.AgentCertificate{}
	err := call(t, nc, endpoints.AgentJoin, &cav1.JoinRequest{Token: token, CsrDer: csr}, resp)
	return resp, err
}

// opensslVerify runs `openssl verify -CAfile ca.pem ... cert.pem` when
// openssl is installed, and reports whether it printed "OK".
func opensslVerify(t *testing.T, caPEM, certPEM string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("openssl not installed: checked with crypto/x509 only")
		return
	}
	dir := t.TempDir()
	caFile, certFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem")
	must(t, os.WriteFile(caFile, []byte(caPEM), 0o644))
	must(t, os.WriteFile(certFile, []byte(certPEM), 0o644))
	args = append(append([]string{"verify", "-x509_strict", "-CAfile", caFile}, args...), certFile)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), certFile+": OK") {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func opensslText(t *testing.T, certPEM string) string {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		return ""
	}
	cmd := exec.Command(bin, "x509", "-noout", "-text")
	cmd.Stdin = strings.NewReader(certPEM)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509 -text: %v\n%s", err, out)
	}
	return string(out)
}

func TestFirstStartCreatesTheCAAndTheNextStartLoadsIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)

	fi, err := os.Stat(e.keyFile)
	must(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v; want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(e.keyFile))
	must(t, err)
	if di.Mode().Perm() != 0o700 {
		t.Errorf("CA directory mode = %v; want 0700", di.Mode().Perm())
	}
	certPEM, err := os.ReadFile(e.certFile)
	must(t, err)
	keyPEM, err := os.ReadFile(e.keyFile)
	must(t, err)
	var names []string
	entries, _ := os.ReadDir(filepath.Dir(e.keyFile))
	for _, en := range entries {
		names = append(names, en.Name())
	}
	if !slices.Equal(names, []string{"agentgw-ca.crt", "agentgw-ca.key", "ca.crt", "ca.key"}) {
		t.Errorf("CA directory holds %v; want the fleet CA's and the agent gateway CA's certificate and key only", names)
	}

	caCert := parsePEM(t, string(certPEM))[0]
	if caCert.Subject.CommonName != "Flotilla fleet CA" || !caCert.IsCA || !caCert.BasicConstraintsValid {
		t.Errorf("CA certificate: subject %q, CA %v; want a CA named Flotilla fleet CA", caCert.Subject, caCert.IsCA)
	}
	if caCert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA key usage = %v; want cert sign + CRL sign", caCert.KeyUsage)
	}
	if k, ok := caCert.PublicKey.(*ecdsa.PublicKey); !ok || (k.Curve != elliptic.P256() && k.Curve != elliptic.P384()) {
		t.Errorf("CA key is %T; want ECDSA P-256 or P-384", caCert.PublicKey)
	}
	if want := e.clock.Now().AddDate(10, 0, 0); !e.clock.within(caCert.NotAfter, want) {
		t.Errorf("CA not after = %v; want %v", caCert.NotAfter, want)
	}
	if err := caCert.CheckSignatureFrom(caCert); err != nil {
		t.Errorf("CA certificate is not self-signed: %v", err)
	}

	got := &cav1.CACertificate{}
	must(t, call(t, e.nc, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{}, got))
	sum := sha256.Sum256(caCert.Raw)
	if got.GetCertificatePem() != string(certPEM) || got.GetFingerprintSha256() != hex.EncodeToString(sum[:]) || !got.GetNotAfter().AsTime().Equal(caCert.NotAfter) {
		t.Errorf("certificate.get = %+v; want the PEM file, fingerprint %x and not after %v", got, sum, caCert.NotAfter)
	}

	// Another manager node (its own NATS here) starts on the same files.
	e2 := newEnv(t)
	e2.certFile, e2.keyFile = e.certFile, e.keyFile
	e2.start(t)
	got2 := &cav1.CACertificate{}
	must(t, call(t, e2.nc, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{}, got2))
	if got2.GetFingerprintSha256() != got.GetFingerprintSha256() {
		t.Errorf("second start serves CA %s; want the first start's %s", got2.GetFingerprintSha256(), got.GetFingerprintSha256())
	}
	certPEM2, _ := os.ReadFile(e.certFile)
	keyPEM2, _ := os.ReadFile(e.keyFile)
	if !bytes.Equal(certPEM, certPEM2) || !bytes.Equal(keyPEM, keyPEM2) {
		t.Error("second start rewrote the CA files")
	}
	if !strings.Contains(e.logs.String(), "generated a new CA") || !strings.Contains(e2.logs.String(), "loaded CA") {
		t.Error("the starts did not log whether they generated or loaded the CA")
	}
}

func TestBadCAFilesFailNamingTheFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, data, 0o600))
		return p
	}
	now := time.Now()
	a, err := pki.GenerateCA(now)
	must(t, err)
	aCert := write("a.crt", a.CertificatePEM())
	otherKey, err := pki.EncodePrivateKeyPEM(newKey(t))
	must(t, err)
	wrongKey := write("wrong.key", otherKey)

	leafKey := newKey(t)
	leaf, err := a.Issue(leafKey.Public(), pki.ServerProfile("leaf.example.com", []string{"leaf.example.com"}, nil, now, time.Hour))
	must(t, err)
	leafKeyPEM, err := pki.EncodePrivateKeyPEM(leafKey)
	must(t, err)
	leafCert := write("leaf.crt", leaf.PEM)
	leafKeyFile := write("leaf.key", leafKeyPEM)

	staleKey := write("stale.key", otherKey)
	old := now.Add(-time.Hour)
	must(t, os.Chtimes(staleKey, old, old))
	garbage := write("garbage.key", []byte("not a key"))
	keyAsCert := write("key-as-cert.crt", otherKey)

	for _, tc := range []struct {
		name, cert, key string
		want            []string
	}{
		{"key does not match", aCert, wrongKey, []string{"CA key file " + wrongKey, "does not match"}},
		{"certificate without key", aCert, filepath.Join(dir, "missing.key"), []string{"CA certificate file " + aCert + " exists but CA key file " + filepath.Join(dir, "missing.key") + " does not"}},
		{"key without certificate", filepath.Join(dir, "missing.crt"), staleKey, []string{"CA key file " + staleKey + " exists but CA certificate file " + filepath.Join(dir, "missing.crt") + " does not"}},
		{"not a CA", leafCert, leafKeyFile, []string{"CA certificate file " + leafCert, "not a CA certificate"}},
		{"garbage key", aCert, garbage, []string{"CA key file " + garbage, "no PEM block"}},
		{"key in the certificate file", keyAsCert, wrongKey, []string{"CA certificate file " + keyAsCert, "want only CERTIFICATE blocks"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.certFile, e.keyFile = tc.cert, tc.key
			_, err := ca.New(t.Context(), e.deps(t))
			if err == nil {
				t.Fatal("ca.New succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), string(otherKey[40:80])) {
				t.Errorf("error %q quotes key material", err)
			}
		})
	}
}

func TestJoinIssuesAnAgentCertificateOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := instanceID()

	tok := createToken(t, e.nc, id, 0)
	if !strings.HasPrefix(tok.GetToken(), "fjt_") || len(tok.GetToken()) != 4+43 {
		t.Errorf("token %q; want fjt_ and 43 base64url characters", tok.GetToken())
	}
	if want := e.clock.Now().Add(time.Hour); !e.clock.within(tok.GetExpireTime().AsTime(), want) {
		t.Errorf("token expires %v; want %v (1 hour)", tok.GetExpireTime().AsTime(), want)
	}

	key := newKey(t)
	got, err := join(t, e.nc, tok.GetToken(), csrFor(t, key))
	must(t, err)
	if got.GetInstanceId() != id {
		t.Errorf("instance id = %q; want %q", got.GetInstanceId(), id)
	}
	certs := parsePEM(t, got.GetCertificatePem())
	if len(certs) != 1 {
		t.Fatalf("certificate PEM holds %d certificates; want 1", len(certs))
	}
	cert := certs[0]
	caCert := parsePEM(t, got.GetCaPem())[0]
	if cert.Subject.CommonName != id || !slices.Equal(cert.Subject.Organization, []string{"Flotilla agents"}) {
		t.Errorf("subject = %q; want CN=%s, O=Flotilla agents", cert.Subject, id)
	}
	if len(cert.DNSNames) != 0 || len(cert.IPAddresses) != 0 {
		t.Errorf("SANs %v %v: the CSR's names were not ignored", cert.DNSNames, cert.IPAddresses)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || cert.KeyUsage != x509.KeyUsageDigitalSignature || cert.IsCA {
		t.Errorf("usage = %v / %v, CA %v; want client auth, digital signature, not a CA", cert.ExtKeyUsage, cert.KeyUsage, cert.IsCA)
	}
	now := e.clock.Now()
	if !e.clock.within(cert.NotBefore, now.Add(-time.Minute)) || !e.clock.within(cert.NotAfter, now.Add(24*time.Hour)) {
		t.Errorf("valid %v to %v; want a minute ago to 24 h from now", cert.NotBefore, cert.NotAfter)
	}
	if !got.GetNotAfter().AsTime().Equal(cert.NotAfter) {
		t.Errorf("not_after = %v; certificate says %v", got.GetNotAfter().AsTime(), cert.NotAfter)
	}
	if cert.SerialNumber.BitLen() < 64 || len(cert.SubjectKeyId) == 0 || !bytes.Equal(cert.AuthorityKeyId, caCert.SubjectKeyId) {
		t.Errorf("serial %x (%d bits), SKID %x, AKID %x; want a random 128-bit serial and key ids", cert.SerialNumber, cert.SerialNumber.BitLen(), cert.SubjectKeyId, cert.AuthorityKeyId)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(cert.PublicKey) {
		t.Error("the certificate is not for the CSR's key")
	}
	pool, err := pki.CertPool([]byte(got.GetCaPem()))
	must(t, err)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify for client auth: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("an agent certificate verifies for server auth")
	}
	opensslVerify(t, got.GetCaPem(), got.GetCertificatePem(), "-purpose", "sslclient")
	if gotID, err := pki.AgentInstanceID(cert); err != nil || gotID != id {
		t.Errorf("AgentInstanceID = %q, %v; want %q", gotID, err, id)
	}

	_, err = join(t, e.nc, tok.GetToken(), csrFor(t, newKey(t)))
	wantError(t, err, apierr.KindUnauthenticated, "join token is invalid, expired or already used")

	logs := e.logs.String()
	if !strings.Contains(logs, "certificate issued") || !strings.Contains(logs, "instance_id="+id) || !strings.Contains(logs, "serial="+cert.SerialNumber.Text(16)) || !strings.Contains(logs, "not_after=") {
		t.Errorf("issuance not logged with instance id, serial and not_after:\n%s", logs)
	}
	if strings.Contains(logs, tok.GetToken()) || strings.Contains(logs, strings.TrimPrefix(tok.GetToken(), "fjt_")) || strings.Contains(logs, "PRIVATE KEY") {
		t.Errorf("logs hold a token or key material:\n%s", logs)
	}
}

func TestConcurrentJoinsWithOneTokenHaveOneWinner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Two manager nodes answer agent.join from the same queue group.
	e.start(t)
	e.start(t)
	tok := createToken(t, e.nc, instanceID(), 0)

	const n = 20
	csrs := make([][]byte, n)
	for i := range csrs {
		csrs[i] = csrFor(t, newKey(t))
	}
	var (
		wg        sync.WaitGroup
		successes atomic.Int32
		errs      = make(chan error, n)
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			resp := &cav1.AgentCertificate{}
			err := call(t, e.nc, endpoints.AgentJoin, &cav1.JoinRequest{Token: tok.GetToken(), CsrDer: csrs[i]}, resp)
			if err == nil {
				successes.Add(1)
				return
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	if got := successes.Load(); got != 1 {
		t.Errorf("%d joins succeeded; want exactly 1", got)
	}
	for err := range errs {
		wantError(t, err, apierr.KindUnauthenticated, "join token is invalid, expired or already used")
	}
}

func TestJoinTokenRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)

	t.Run("expired", func(t *testing.T) {
		tok := createToken(t, e.nc, instanceID(), 60)
		if want := e.clock.Now().Add(time.Minute); !e.clock.within(tok.GetExpireTime().AsTime(), want) {
			t.Errorf("token expires %v; want %v", tok.GetExpireTime().AsTime(), want)
		}
		e.clock.Advance(61 * time.Second)
		_, err := join(t, e.nc, tok.GetToken(), csrFor(t, newKey(t)))
		wantError(t, err, apierr.KindUnauthenticated, "join token is invalid, expired or already used")
	})
	t.Run("a bad CSR does not use the token up", func(t *testing.T) {
		id := instanceID()
		tok := createToken(t, e.nc, id, 0)
		_, err := join(t, e.nc, tok.GetToken(), []byte("not a CSR"))
		wantError(t, err, apierr.KindInvalid, "csrDer: is not a DER PKCS#10 certificate request")
		got, err := join(t, e.nc, tok.GetToken(), csrFor(t, newKey(t)))
		must(t, err)
		if got.GetInstanceId() != id {
			t.Errorf("instance id = %q; want %q", got.GetInstanceId(), id)
		}
	})
	for _, tc := range []struct {
		name   string
		token  string
		kind   apierr.Kind
		prefix string
	}{
		{"unknown", "fjt_" + strings.Repeat("A", 43), apierr.KindUnauthenticated, "join token is invalid"},
		{"malformed", "hello", apierr.KindUnauthenticated, "join token is invalid"},
		{"missing", "", apierr.KindInvalid, "token: is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := join(t, e.nc, tc.token, csrFor(t, newKey(t)))
			wantError(t, err, tc.kind, tc.prefix)
		})
	}
	for _, tc := range []struct {
		name   string
		req    *cav1.CreateJoinTokenRequest
		prefix string
	}{
		{"ttl too long", &cav1.CreateJoinTokenRequest{InstanceId: instanceID(), TtlSeconds: 86401}, "ttlSeconds: 86401 is out of range"},
		{"negative ttl", &cav1.CreateJoinTokenRequest{InstanceId: instanceID(), TtlSeconds: -1}, "ttlSeconds: -1 is out of range"},
		{"no instance", &cav1.CreateJoinTokenRequest{}, "instanceId: is required"},
		{"instance id unfit for a subject", &cav1.CreateJoinTokenRequest{InstanceId: "a.b"}, "instanceId: \"a.b\" must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := call(t, e.nc, endpoints.JoinTokenCreate, tc.req, &cav1.JoinToken{})
			wantError(t, err, apierr.KindInvalid, tc.prefix)
		})
	}
	t.Run("24 hours is allowed", func(t *testing.T) {
		createToken(t, e.nc, instanceID(), 86400)
	})
}

func TestRenewIssuesForTheGivenInstance(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := instanceID()

	// A certificate from before certificates named their VM renews into
	// one that names the instance's VM.
	got := &cav1.AgentCertificate{}
	must(t, call(t, e.nc, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: id, CsrDer: csrFor(t, newKey(t)), Serial: "1"}, got))
	cert := parsePEM(t, got.GetCertificatePem())[0]
	if cert.Subject.CommonName != id || got.GetInstanceId() != id || pki.AgentVMID(cert) != vmOf(id) {
		t.Errorf("renewed certificate CN = %q (reply %q), VM %q; want %q on %s", cert.Subject.CommonName, got.GetInstanceId(), pki.AgentVMID(cert), id, vmOf(id))
	}
	pool, err := pki.CertPool([]byte(got.GetCaPem()))
	must(t, err)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	opensslVerify(t, got.GetCaPem(), got.GetCertificatePem(), "-purpose", "sslclient")

	err = call(t, e.nc, endpoints.AgentSign, &cav1.SignAgentRequest{CsrDer: csrFor(t, newKey(t))}, &cav1.AgentCertificate{})
	wantError(t, err, apierr.KindInvalid, "instanceId: is required")
}

// TestAgentCertificatesHaveALifecycle: a certificate is current while its
// instance lives and is on the VM it names, and until the agent uses the
// certificate that renewed it; a join for a new VM revokes every earlier
// one.
func TestAgentCertificatesHaveALifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := instanceID()
	type held struct{ vm, serial string }
	hold := func(c *cav1.AgentCertificate) held {
		cert := parsePEM(t, c.GetCertificatePem())[0]
		return held{pki.AgentVMID(cert), pki.Serial(cert)}
	}
	check := func(h held) error {
		return checkAgents(t, e.nc, &cav1.CheckAgentRequest{InstanceId: id, VmId: h.vm, Serial: h.serial})[0]
	}
	renew := func(h held) (held, error) {
		got := &cav1.AgentCertificate{}
		err := call(t, e.nc, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: id, CsrDer: csrFor(t, newKey(t)), VmId: h.vm, Serial: h.serial}, got)
		if err != nil {
			return held{}, err
		}
		return hold(got), nil
	}
	refused := func(what string, err error, why string) {
		t.Helper()
		if !apierr.Is(err, apierr.KindPermissionDenied) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v; want permission denied saying %q", what, err, why)
		}
	}

	joined, err := join(t, e.nc, createToken(t, e.nc, id, 0).GetToken(), csrFor(t, newKey(t)))
	must(t, err)
	first := hold(joined)
	if first.vm != vmOf(id) {
		t.Fatalf("joined certificate names VM %q, want %q", first.vm, vmOf(id))
	}
	must(t, check(first))
	refused("a serial the CA never issued", check(held{first.vm, "abc"}), "a newer certificate replaced it")

	// Renewed: both are current until the agent uses the new one.
	second, err := renew(first)
	must(t, err)
	must(t, check(first))
	must(t, check(second))
	refused("the renewed certificate once the new one is used", check(first), "a newer certificate replaced it")
	_, err = renew(first)
	refused("renewing with the renewed certificate", err, "a newer certificate replaced it")

	// Re-provisioned onto a new VM: the old VM's certificate is refused,
	// and the new VM's join revokes it for good.
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateProvisioning), VmId: "vm-new"})
	refused("a certificate for the previous VM", check(second), "issued for VM "+second.vm)
	joined, err = join(t, e.nc, createToken(t, e.nc, id, 0).GetToken(), csrFor(t, newKey(t)))
	must(t, err)
	third := hold(joined)
	must(t, check(third))
	if third.vm != "vm-new" {
		t.Errorf("the new VM's certificate names %q", third.vm)
	}

	// Being deprovisioned or deleted, the VM still recorded: its agent was
	// released, and may not come back before the VM stops.
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateDeprovisioning), VmId: "vm-new", StateDetail: string(vocab.StepStoppingVM)})
	refused("deprovisioning", check(third), "is deprovisioning: its VM is released")
	_, err = renew(third)
	refused("renewing when deprovisioning", err, "is deprovisioning")
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateDeleting), VmId: "vm-new", StateDetail: string(vocab.StepStoppingVM)})
	refused("deleting", check(third), "is deleting: its VM is released")
	// A deprovision that failed leaves the VM, and its agent, current.
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateFailed), VmId: "vm-new", StateDetail: string(vocab.StepStoppingVM) + ": the cloud said no"})
	must(t, check(third))

	// Deprovisioned, then deleted: nothing is current.
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateDeprovisioned)})
	refused("deprovisioned", check(third), "is deprovisioned")
	_, err = renew(third)
	refused("renewing when deprovisioned", err, "is deprovisioned")
	e.instances.gone(id)
	refused("deleted", check(third), "was deleted")
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateRunning), VmId: "vm-new"})
	refused("the record went with the instance", check(third), "no record")

	// Only the agent gateway, for itself, may ask: not for an agent.
	_, err = rpc.Call(t.Context(), rpc.NewClient(e.nc, subjects.AgentGW, 0), endpoints.AgentCheckMany,
		&cav1.CheckAgentsRequest{Agents: []*cav1.CheckAgentRequest{{InstanceId: id, VmId: third.vm, Serial: third.serial}}}, rpc.As(vocab.Agent(id)))
	refused("a check as an agent", err, "may not check")
}

// TestAgentChecksComeInBatches: one agent.check-many answers each agent in
// order — current, revoked, deleted, the same agent twice — and refuses a
// batch over the bound as a whole.
func TestAgentChecksComeInBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	type agent struct{ id, vm, serial string }
	joinOne := func() agent {
		id := instanceID()
		c, err := join(t, e.nc, createToken(t, e.nc, id, 0).GetToken(), csrFor(t, newKey(t)))
		must(t, err)
		cert := parsePEM(t, c.GetCertificatePem())[0]
		return agent{id, pki.AgentVMID(cert), pki.Serial(cert)}
	}
	current, other, deleted := joinOne(), joinOne(), joinOne()
	e.instances.gone(deleted.id)
	req := func(a agent) *cav1.CheckAgentRequest {
		return &cav1.CheckAgentRequest{InstanceId: a.id, VmId: a.vm, Serial: a.serial}
	}
	errs := checkAgents(t, e.nc, req(current), req(agent{other.id, other.vm, "abc"}), req(deleted), req(other), req(current))
	for i, want := range []string{"", "a newer certificate replaced it", "was deleted", "", ""} {
		switch err := errs[i]; {
		case want == "" && err != nil:
			t.Errorf("agent %d: %v; want current", i, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("agent %d: %v; want an error saying %q", i, err, want)
		}
	}
	if !apierr.Is(errs[1], apierr.KindPermissionDenied) || !apierr.Is(errs[2], apierr.KindPermissionDenied) {
		t.Errorf("kinds: %v, %v", errs[1], errs[2])
	}
	many := make([]*cav1.CheckAgentRequest, endpoints.MaxBatch+1)
	for i := range many {
		many[i] = req(current)
	}
	_, err := rpc.Call(t.Context(), rpc.NewClient(e.nc, subjects.AgentGW, 0), endpoints.AgentCheckMany, &cav1.CheckAgentsRequest{Agents: many})
	if !apierr.Is(err, apierr.KindInvalid) || !strings.Contains(err.Error(), "at most 256") {
		t.Errorf("a batch over the bound: %v", err)
	}
}

func TestServerCertificate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := instanceID()
	e.instances.put(&inventoryv1.Instance{Id: id, State: string(vocab.StateProvisioning),
		Ssl:       &inventoryv1.SslSettings{Sans: []string{"node-1.example.com", "*.node-1.example.com", "10.0.0.5", "2001:db8::1", "10.0.0.6"}},
		Addresses: &inventoryv1.Addresses{PrivateIp: "10.9.9.9"}})

	sign := func(t *testing.T, sans []string, key crypto.Signer) (*cav1.ServerCertificate, *x509.Certificate) {
		t.Helper()
		got := &cav1.ServerCertificate{}
		must(t, call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: id, CsrDer: csrFor(t, key), Sans: sans}, got))
		return got, parsePEM(t, got.GetCertificatePem())[0]
	}

	got, cert := sign(t, []string{"Node-1.Example.com.", "10.0.0.5", "2001:db8::1", "node-1.example.com", "*.node-1.example.com"}, newKey(t))
	if cert.Subject.CommonName != "node-1.example.com" {
		t.Errorf("CN = %q; want the first SAN", cert.Subject.CommonName)
	}
	if !slices.Equal(cert.DNSNames, []string{"node-1.example.com", "*.node-1.example.com"}) {
		t.Errorf("DNS names = %v", cert.DNSNames)
	}
	if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.5")) || !cert.IPAddresses[1].Equal(net.ParseIP("2001:db8::1")) {
		t.Errorf("IP addresses = %v", cert.IPAddresses)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || cert.IsCA {
		t.Errorf("ext key usage = %v, CA %v; want server auth only", cert.ExtKeyUsage, cert.IsCA)
	}
	if want := e.clock.Now().Add(90 * 24 * time.Hour); !e.clock.within(cert.NotAfter, want) || !got.GetNotAfter().AsTime().Equal(cert.NotAfter) {
		t.Errorf("not after %v (reply %v); want %v", cert.NotAfter, got.GetNotAfter().AsTime(), want)
	}
	pool, err := pki.CertPool([]byte(got.GetCaPem()))
	must(t, err)
	for _, host := range []string{"node-1.example.com", "10.0.0.5", "2001:db8::1", "api.node-1.example.com"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	opensslVerify(t, got.GetCaPem(), got.GetCertificatePem(), "-purpose", "sslserver", "-verify_hostname", "node-1.example.com")
	opensslVerify(t, got.GetCaPem(), got.GetCertificatePem(), "-purpose", "sslserver", "-verify_ip", "10.0.0.5")
	if text := opensslText(t, got.GetCertificatePem()); text != "" {
		for _, want := range []string{"DNS:node-1.example.com", "DNS:*.node-1.example.com", "IP Address:10.0.0.5", "TLS Web Server Authentication", "Subject: CN = node-1.example.com"} {
			if !strings.Contains(text, want) {
				t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
			}
		}
	}

	t.Run("RSA-2048 key", func(t *testing.T) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		must(t, err)
		got, cert := sign(t, []string{"10.0.0.6"}, k)
		if cert.Subject.CommonName != "10.0.0.6" || cert.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
			t.Errorf("CN %q, key usage %v", cert.Subject.CommonName, cert.KeyUsage)
		}
		opensslVerify(t, got.GetCaPem(), got.GetCertificatePem(), "-purpose", "sslserver", "-verify_ip", "10.0.0.6")
	})
	t.Run("no SANs", func(t *testing.T) {
		_, cert := sign(t, nil, newKey(t))
		if cert.Subject.CommonName != id || len(cert.DNSNames)+len(cert.IPAddresses) != 0 {
			t.Errorf("CN %q, SANs %v %v; want the instance id and none", cert.Subject.CommonName, cert.DNSNames, cert.IPAddresses)
		}
	})

	for _, tc := range []struct {
		sans   []string
		prefix string
	}{
		{[]string{"not a host"}, `sans[0]: "not a host" is neither an IP address nor a DNS name`},
		{[]string{"ok.example.com", "bad_name.example.com"}, `sans[1]: "bad_name.example.com" is neither`},
		{[]string{"10.0.0.256"}, `sans[0]: "10.0.0.256" is neither`},
		{[]string{"fe80::1%eth0"}, `sans[0]: "fe80::1%eth0" is an IP address with a zone`},
		{[]string{""}, "sans[0]: is empty"},
		{[]string{"-x.example.com"}, `sans[0]: "-x.example.com" is neither`},
		{[]string{"a.*.example.com"}, `sans[0]: "a.*.example.com" is neither`},
	} {
		t.Run("bad SAN "+tc.sans[len(tc.sans)-1], func(t *testing.T) {
			err := call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: id, CsrDer: csrFor(t, newKey(t)), Sans: tc.sans}, &cav1.ServerCertificate{})
			wantError(t, err, apierr.KindInvalid, tc.prefix)
		})
	}
	t.Run("no instance", func(t *testing.T) {
		err := call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{CsrDer: csrFor(t, newKey(t)), Sans: []string{"x.example.com"}}, &cav1.ServerCertificate{})
		wantError(t, err, apierr.KindInvalid, "instanceId: is required")
	})
}

func TestWeakOrBrokenCSRsAreRejected(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)

	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	must(t, err)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	must(t, err)
	tampered := csrFor(t, newKey(t))
	tampered[len(tampered)-5] ^= 0xff // inside the signature

	for _, tc := range []struct {
		name   string
		csr    []byte
		prefix string
	}{
		{"RSA-1024", csrFor(t, rsa1024), "csrDer: RSA key of 1024 bits is too weak"},
		{"P-224", csrFor(t, p224), "csrDer: ECDSA key on curve P-224 is too weak"},
		{"garbage", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, "csrDer: is not a DER PKCS#10 certificate request"},
		{"bad signature", tampered, "csrDer: signature does not verify"},
		{"missing", nil, "csrDer: is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := call(t, e.nc, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: instanceID(), CsrDer: tc.csr}, &cav1.AgentCertificate{})
			wantError(t, err, apierr.KindInvalid, tc.prefix)
			err = call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: instanceID(), CsrDer: tc.csr, Sans: []string{"x.example.com"}}, &cav1.ServerCertificate{})
			wantError(t, err, apierr.KindInvalid, tc.prefix)
			tok := createToken(t, e.nc, instanceID(), 0)
			_, err = join(t, e.nc, tok.GetToken(), tc.csr)
			wantError(t, err, apierr.KindInvalid, tc.prefix)
		})
	}
}

func TestRepliesCarryNoPrivateKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	keyPEM, err := os.ReadFile(e.keyFile)
	must(t, err)
	block, _ := pem.Decode(keyPEM)
	tok := createToken(t, e.nc, instanceID(), 0)
	got, err := join(t, e.nc, tok.GetToken(), csrFor(t, newKey(t)))
	must(t, err)
	raw, err := proto.Marshal(got)
	must(t, err)
	caResp := &cav1.CACertificate{}
	must(t, call(t, e.nc, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{}, caResp))
	raw2, err := proto.Marshal(caResp)
	must(t, err)
	for _, r := range [][]byte{raw, raw2, []byte(e.logs.String())} {
		if bytes.Contains(r, []byte("PRIVATE KEY")) || bytes.Contains(r, block.Bytes[len(block.Bytes)-32:]) {
			t.Error("a reply or the log carries the CA private key")
		}
	}
}

// The agent gateways' session ticket keys: eight of 32 bytes, the same
// from every CA with the same files, a new one each day (the others moving
// down by one), given to the agent gateway only and never logged.
func TestTicketKeysAreSharedAndRollDaily(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	other := newEnv(t) // another manager: its own bus, the same CA files
	other.certFile, other.keyFile, other.clock = e.certFile, e.keyFile, e.clock
	other.start(t)
	keys := func(e *env) *cav1.TicketKeys {
		t.Helper()
		got := &cav1.TicketKeys{}
		must(t, call(t, e.nc, endpoints.TicketKeysGet, &cav1.GetTicketKeysRequest{}, got))
		return got
	}
	first := keys(e)
	if len(first.GetKeys()) != 8 {
		t.Fatalf("%d keys, want 8", len(first.GetKeys()))
	}
	for i, k := range first.GetKeys() {
		if len(k) != 32 || slices.ContainsFunc(first.GetKeys()[:i], func(o []byte) bool { return bytes.Equal(o, k) }) {
			t.Fatalf("key %d: %d bytes, or the same as an earlier one", i, len(k))
		}
	}
	if next := e.clock.Now().UTC().Truncate(24 * time.Hour).Add(24 * time.Hour); !first.GetRefreshTime().AsTime().Equal(next) {
		t.Errorf("refresh time %v, want the next day's start, %v", first.GetRefreshTime().AsTime(), next)
	}
	if !proto.Equal(keys(other), first) {
		t.Error("another CA with the same files gives other keys")
	}
	e.clock.Advance(24 * time.Hour)
	second := keys(e)
	if bytes.Equal(second.GetKeys()[0], first.GetKeys()[0]) || !slices.EqualFunc(second.GetKeys()[1:], first.GetKeys()[:7], bytes.Equal) {
		t.Error("a day later, the keys did not move down by one under a new one")
	}
	_, err := rpc.Call(t.Context(), rpc.NewClient(e.nc, subjects.Gateway, 10*time.Second), endpoints.TicketKeysGet, &cav1.GetTicketKeysRequest{})
	wantError(t, err, apierr.KindPermissionDenied, "gateway may not call")
	for _, k := range append(first.GetKeys(), second.GetKeys()...) {
		if strings.Contains(e.logs.String(), hex.EncodeToString(k)) || bytes.Contains([]byte(e.logs.String()), k) {
			t.Error("a ticket key is in the log")
		}
	}
}

func TestNewNeedsTheCAFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d := e.deps(t)
	d.CertFile, d.KeyFile = "", ""
	if _, err := ca.New(t.Context(), d); err == nil || !strings.Contains(err.Error(), "CertFile and KeyFile") {
		t.Fatalf("New without files: %v; want an error naming CertFile and KeyFile", err)
	}
	if _, err := os.Stat(e.certFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s: %v; want nothing written", e.certFile, err)
	}
}

// TestWhatIsAskedIsCheckedAgainstTheInstance: the CA issues only what an
// instance's record allows, and only to the agent of that instance.
func TestWhatIsAskedIsCheckedAgainstTheInstance(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	gone, running, mine, other := instanceID(), instanceID(), instanceID(), instanceID()
	e.instances.gone(gone)
	e.instances.put(&inventoryv1.Instance{Id: running, State: string(vocab.StateRunning)})
	e.instances.put(&inventoryv1.Instance{Id: mine, State: string(vocab.StateProvisioning),
		Ssl: &inventoryv1.SslSettings{Sans: []string{"Mine.Example.com"}}, Addresses: &inventoryv1.Addresses{PrivateIp: "10.1.1.1"}})

	err := call(t, e.nc, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: gone}, &cav1.JoinToken{})
	wantError(t, err, apierr.KindNotFound, fmt.Sprintf("instance %q not found", gone))
	err = call(t, e.nc, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: running}, &cav1.JoinToken{})
	wantError(t, err, apierr.KindConflict, fmt.Sprintf("instance %q is running", running))
	if apierr.ReasonOf(err) != apierr.ReasonInvalidState {
		t.Errorf("reason %s", apierr.ReasonOf(err))
	}

	// Names of the instance (whatever their case) and its private address
	// are signed; a name it does not have is not.
	must(t, call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: mine, CsrDer: csrFor(t, newKey(t)),
		Sans: []string{"mine.example.com", "10.1.1.1"}}, &cav1.ServerCertificate{}))
	err = call(t, e.nc, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: mine, CsrDer: csrFor(t, newKey(t)),
		Sans: []string{"mine.example.com", "www.example.com"}}, &cav1.ServerCertificate{})
	wantError(t, err, apierr.KindInvalid, `sans[1]: "www.example.com" is not a name of instance`)

	// The agent gateway acting for one agent cannot get another instance's
	// certificates.
	agentgw := rpc.NewClient(e.nc, subjects.AgentGW, 10*time.Second)
	_, err = rpc.Call(t.Context(), agentgw, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: mine, CsrDer: csrFor(t, newKey(t)),
		Sans: []string{"mine.example.com"}}, rpc.As(vocab.Agent(other)))
	wantError(t, err, apierr.KindPermissionDenied, "agent:"+other)
	_, err = rpc.Call(t.Context(), agentgw, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: mine, CsrDer: csrFor(t, newKey(t))},
		rpc.As(vocab.Agent(other)))
	wantError(t, err, apierr.KindPermissionDenied, "agent:"+other)
	_, err = rpc.Call(t.Context(), agentgw, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: mine, CsrDer: csrFor(t, newKey(t))})
	wantError(t, err, apierr.KindPermissionDenied, "system:agentgw")

	// The agent gateway's own certificate, for its own names.
	_, err = rpc.Call(t.Context(), agentgw, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: pki.GatewayInstanceID,
		CsrDer: csrFor(t, newKey(t)), Sans: []string{"agents.example.com"}})
	must(t, err)
}
