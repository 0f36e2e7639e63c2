package secrets_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// issued is a certificate chain (leaf, then its CA) and the leaf's key, PEM.
type issued struct{ chain, key string }

func issue(t *testing.T, names ...string) issued {
	t.Helper()
	ca, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(k.Public(), pki.ServerProfile(names[0], names, []net.IP{}, time.Now(), 24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.EncodePrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return issued{chain: string(iss.PEM) + string(ca.CertificatePEM()), key: string(kp)}
}

// TestACMEAccountKeyIsMadeOncePerNetworkSealedAndAudited: the first read
// of a network's ACME account key makes it, later reads (for any instance
// of the network, also at once) get the same one, another network has its
// own; it is stored only sealed and every read is audited for the instance.
func TestACMEAccountKeyIsMadeOncePerNetworkSealedAndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	network, other := uuid.NewString(), uuid.NewString()
	get := func(networkID, instanceID string) string {
		t.Helper()
		k, err := rpc.Call(ctx, ca, endpoints.ACMEAccountKeyGet, &secretsv1.GetAcmeAccountKeyRequest{NetworkId: networkID, InstanceId: instanceID})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pki.ParsePrivateKeyPEM([]byte(k.GetPrivateKeyPem())); err != nil {
			t.Fatalf("the account key: %v", err)
		}
		return k.GetPrivateKeyPem()
	}
	keys := make(chan string, 4)
	for _, in := range []string{e.a, e.b, e.a, e.b} {
		go func() { keys <- get(network, in) }()
	}
	first := <-keys
	for range 3 {
		if k := <-keys; k != first {
			t.Fatal("two reads of one network's account key got different keys")
		}
	}
	if get(other, e.a) == first {
		t.Fatal("two networks share an account key")
	}
	var ciphertext []byte
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT ciphertext, (SELECT count(*) FROM acme_accounts WHERE network_id = $1) FROM acme_accounts WHERE network_id = $1`, network).
		Scan(&ciphertext, &n); err != nil || n != 1 {
		t.Fatalf("account rows: %d, %v", n, err)
	}
	if bytes.Contains(ciphertext, []byte("PRIVATE KEY")) || bytes.Contains(ciphertext, []byte(first[40:80])) {
		t.Fatal("the account key is stored in the clear")
	}
	audited := map[string]int{}
	for _, r := range e.auditRecords() {
		if r.GetName() == "acme-account-key" && r.GetAllowed() {
			audited[r.GetInstanceId()]++
		}
	}
	if audited[e.a] != 3 || audited[e.b] != 2 {
		t.Fatalf("audited reads by instance: %v; want 3 for a, 2 for b", audited)
	}
	for _, tc := range []struct {
		req   *secretsv1.GetAcmeAccountKeyRequest
		field string
	}{
		{&secretsv1.GetAcmeAccountKeyRequest{NetworkId: "n-1", InstanceId: e.a}, "networkId"},
		{&secretsv1.GetAcmeAccountKeyRequest{NetworkId: network}, "instanceId"},
	} {
		if _, err := rpc.Call(ctx, ca, endpoints.ACMEAccountKeyGet, tc.req); !apierr.Is(err, apierr.KindInvalid) || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("%v: %v; want invalid %s", tc.req, err, tc.field)
		}
	}
}

// TestACMECertificatesAreKeptSealedAndBound: an instance's ACME certificate
// is kept with its key sealed (bound to the instance and the chain), read
// back audited, replaced by the next; none kept is not found.
func TestACMECertificatesAreKeptSealedAndBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	network := uuid.NewString()
	put := func(instanceID string, c issued) {
		t.Helper()
		if _, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: instanceID, NetworkId: network,
			DirectoryUrl: "https://acme.test/dir", CertificatePem: c.chain, PrivateKeyPem: c.key}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(instanceID string) (*secretsv1.AcmeCertificate, error) {
		return rpc.Call(ctx, ca, endpoints.ACMECertKeyRead, &secretsv1.ReadAcmeCertificateRequest{InstanceId: instanceID})
	}
	if _, err := read(e.a); !apierr.Is(err, apierr.KindNotFound) {
		t.Fatalf("none kept: %v", err)
	}
	first, second, forB := issue(t, "a.fleet.test"), issue(t, "a.fleet.test"), issue(t, "b.fleet.test")
	put(e.a, first)
	put(e.a, second)
	put(e.b, forB)
	got, err := read(e.a)
	if err != nil || got.GetCertificatePem() != second.chain || got.GetPrivateKeyPem() != second.key || got.GetDirectoryUrl() != "https://acme.test/dir" {
		t.Fatalf("read: %v, %v; want the second certificate", got, err)
	}
	var ciphertext []byte
	if err := e.pool.QueryRow(ctx, `SELECT ciphertext FROM acme_certificates WHERE instance_id = $1`, e.a).Scan(&ciphertext); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ciphertext, []byte("PRIVATE KEY")) || bytes.Contains(ciphertext, []byte(second.key[40:80])) {
		t.Fatal("the certificate's key is stored in the clear")
	}
	var audited bool
	for _, r := range e.auditRecords() {
		audited = audited || r.GetName() == "acme-certificate-key" && r.GetInstanceId() == e.a && r.GetAllowed()
	}
	if !audited {
		t.Fatal("no audit record of the read")
	}
	// A key moved to another instance, or beside another chain, does not open.
	if _, err := e.pool.Exec(ctx, `UPDATE acme_certificates t SET ciphertext = f.ciphertext, nonce = f.nonce, wrapped_key = f.wrapped_key
		FROM acme_certificates f WHERE f.instance_id = $1 AND t.instance_id = $2`, e.a, e.b); err != nil {
		t.Fatal(err)
	}
	if _, err := read(e.b); !apierr.Is(err, apierr.KindInternal) {
		t.Fatalf("a key moved to another instance: %v", err)
	}
	if _, err := e.pool.Exec(ctx, `UPDATE acme_certificates SET certificate_pem = $2 WHERE instance_id = $1`, e.a, first.chain); err != nil {
		t.Fatal(err)
	}
	if _, err := read(e.a); !apierr.Is(err, apierr.KindInternal) {
		t.Fatalf("a key beside another chain: %v", err)
	}
	if _, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: e.a, NetworkId: network,
		DirectoryUrl: "https://acme.test/dir", CertificatePem: first.chain, PrivateKeyPem: "not pem"}); !apierr.Is(err, apierr.KindInvalid) || !strings.HasPrefix(err.Error(), "privateKeyPem") {
		t.Fatalf("a key that is not PEM: %v", err)
	}
}

// TestKeysGoWithTheirInstanceAndNetwork: an uploaded key replaced by
// another, or uploaded with a change that is refused, is not kept;
// deleting an instance removes its ACME certificate and the uploaded key
// of its own custom certificate; deleting its network then removes the
// network's ACME account key and the uploaded key of the network's custom
// certificate. Others stay.
func TestKeysGoWithTheirInstanceAndNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	netCert, ownCert := issue(t, "net.fleet.test"), issue(t, "own.fleet.test")
	nw, err := e.inventory.CreateNetwork(ctx, "user:test", &inventoryv1.Network{Name: "tls", Provider: "local", HttpsStrategy: "custom-certificate",
		CustomCertificate: &inventoryv1.CustomCertificate{CertificatePem: netCert.chain, PrivateKeyPem: netCert.key}})
	if err != nil {
		t.Fatal(err)
	}
	in, err := e.inventory.CreateInstance(ctx, "user:test", &inventoryv1.Instance{Name: "own", Kind: "design", TemplateId: e.template, NetworkId: nw.GetId(),
		Ssl: &inventoryv1.SslSettings{CertificatePem: ownCert.chain, PrivateKeyPem: ownCert.key}})
	if err != nil {
		t.Fatal(err)
	}
	netKey, ownKey := nw.GetCustomCertificate().GetPrivateKeyId(), in.GetSsl().GetPrivateKeyId()
	if netKey == "" || ownKey == "" {
		t.Fatalf("uploaded keys not stored: %q %q", netKey, ownKey)
	}
	keys := func() int {
		t.Helper()
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM certificate_keys`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The network's certificate replaced: its old key is forgotten.
	replacement := issue(t, "net.fleet.test")
	nw, err = e.inventory.UpdateNetwork(ctx, "user:test", &inventoryv1.Network{Id: nw.GetId(), Version: nw.GetVersion(),
		CustomCertificate: &inventoryv1.CustomCertificate{CertificatePem: replacement.chain, PrivateKeyPem: replacement.key}}, []string{"customCertificate"})
	if err != nil {
		t.Fatal(err)
	}
	oldNetKey := netKey
	if netKey = nw.GetCustomCertificate().GetPrivateKeyId(); netKey == oldNetKey || netKey == "" {
		t.Fatalf("the replaced key's id %q, before %q", netKey, oldNetKey)
	}
	if n := keys(); n != 2 {
		t.Fatalf("%d certificate keys kept, want the network's new one and the instance's", n)
	}
	// A change refused (at a version no longer current) keeps no key.
	_, err = e.inventory.UpdateInstance(ctx, "user:test", &inventoryv1.Instance{Id: in.GetId(), Version: in.GetVersion() + 7,
		Ssl: &inventoryv1.SslSettings{CertificatePem: replacement.chain, PrivateKeyPem: replacement.key}}, []string{"ssl"})
	if !apierr.Is(err, apierr.KindConflict) {
		t.Fatalf("an update at a stale version: %v", err)
	}
	if n := keys(); n != 2 {
		t.Fatalf("%d certificate keys kept after a refused change, want 2", n)
	}
	// What the ACME strategy keeps, for the instance, its network and
	// another instance of another network.
	for _, id := range []string{nw.GetId(), uuid.NewString()} {
		if _, err := rpc.Call(ctx, ca, endpoints.ACMEAccountKeyGet, &secretsv1.GetAcmeAccountKeyRequest{NetworkId: id, InstanceId: in.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{in.GetId(), e.a} {
		c := issue(t, "own.fleet.test")
		if _, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: id, NetworkId: nw.GetId(),
			DirectoryUrl: "https://acme.test/dir", CertificatePem: c.chain, PrivateKeyPem: c.key}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(query string, args ...any) int {
		t.Helper()
		var n int
		if err := e.pool.QueryRow(ctx, query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitGone := func(what, query string, args ...any) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for count(query, args...) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s is still stored", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if _, err := e.inventory.DeleteInstance(ctx, "user:test", in.GetId(), 0, false); err != nil {
		t.Fatal(err)
	}
	waitGone("the deleted instance's ACME certificate", `SELECT count(*) FROM acme_certificates WHERE instance_id = $1`, in.GetId())
	waitGone("the deleted instance's uploaded key", `SELECT count(*) FROM certificate_keys WHERE id = $1`, ownKey)
	if count(`SELECT count(*) FROM certificate_keys WHERE id = $1`, netKey) != 1 || count(`SELECT count(*) FROM acme_accounts WHERE network_id = $1`, nw.GetId()) != 1 {
		t.Fatal("the network's keys went with its instance")
	}
	if count(`SELECT count(*) FROM acme_certificates WHERE instance_id = $1`, e.a) != 1 {
		t.Fatal("another instance's ACME certificate went too")
	}

	if err := e.inventory.DeleteNetwork(ctx, "user:test", nw.GetId(), 0); err != nil {
		t.Fatal(err)
	}
	waitGone("the deleted network's ACME account key", `SELECT count(*) FROM acme_accounts WHERE network_id = $1`, nw.GetId())
	waitGone("the deleted network's uploaded key", `SELECT count(*) FROM certificate_keys WHERE id = $1`, netKey)
	if count(`SELECT count(*) FROM acme_accounts`) == 0 {
		t.Fatal("another network's account key went too")
	}
}

// TestACMEKeysLeakNowhere: a network's ACME account key and the key of an
// instance's kept certificate are in no database row or dump, stream
// message, log line or span; only the replies to the CA carry them.
func TestACMEKeysLeakNowhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	acct, err := rpc.Call(ctx, ca, endpoints.ACMEAccountKeyGet, &secretsv1.GetAcmeAccountKeyRequest{NetworkId: uuid.NewString(), InstanceId: e.a})
	if err != nil {
		t.Fatal(err)
	}
	c := issue(t, "a.fleet.test")
	if _, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: e.a, NetworkId: uuid.NewString(),
		DirectoryUrl: "https://acme.test/dir", CertificatePem: c.chain, PrivateKeyPem: c.key}); err != nil {
		t.Fatal(err)
	}
	if got, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyRead, &secretsv1.ReadAcmeCertificateRequest{InstanceId: e.a}); err != nil || got.GetPrivateKeyPem() != c.key {
		t.Fatalf("read back: %v", err)
	}
	// A stretch of each key's PEM body, distinctive enough to be a leak.
	needles := map[string][]byte{"the account key": keyBody(t, acct.GetPrivateKeyPem()), "the certificate's key": keyBody(t, c.key)}
	check := func(where string, data []byte) {
		t.Helper()
		for what, needle := range needles {
			if bytes.Contains(data, needle) {
				t.Errorf("%s leaks into %s", what, where)
			}
		}
	}
	check("pg_dump", e.pgDump())
	for name := range e.js.StreamNames(ctx).Name() {
		for _, m := range e.streamMessages(name) {
			check(fmt.Sprintf("stream %s message %d", name, m.Sequence), append(m.Data, fmt.Sprint(m.Header)...))
		}
	}
	check("the log", e.logs.Bytes())
	for _, s := range e.spans.Ended() {
		check("span "+s.Name(), spanText(s))
	}
}

// keyBody is 40 characters from the middle of a PEM key's base64 body.
func keyBody(t *testing.T, keyPEM string) []byte {
	t.Helper()
	body := strings.Join(strings.Split(keyPEM, "\n")[1:3], "")
	if len(body) < 60 {
		t.Fatalf("a short key: %q", keyPEM)
	}
	return []byte(body[10:50])
}
