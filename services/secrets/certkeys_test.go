package secrets_test

import (
	"bytes"
	"context"
	"testing"

	"time"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// TestCertificateKeysAreSealedBoundAndAudited: an uploaded TLS key is
// stored only sealed, read back whole for an instance with an audit record,
// and a ciphertext moved to another id fails to open.
func TestCertificateKeysAreSealedBoundAndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	// The inventory stores, the CA reads, each as itself.
	inventory := rpc.NewClient(e.bus.Conn(t, subjects.Inventory), subjects.Inventory, 10*time.Second)
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	store := func() string {
		t.Helper()
		k, err := rpc.Call(ctx, inventory, endpoints.CertKeyCreate, &secretsv1.StoreCertificateKeyRequest{PrivateKeyPem: string(keyPEM)})
		if err != nil || k.GetId() == "" {
			t.Fatalf("store: %v, %v", k, err)
		}
		return k.GetId()
	}
	id, other := store(), store()
	if _, err := rpc.Call(ctx, inventory, endpoints.CertKeyCreate, &secretsv1.StoreCertificateKeyRequest{PrivateKeyPem: "not pem"}); !apierr.Is(err, apierr.KindInvalid) {
		t.Fatalf("a value that is not PEM: %v", err)
	}
	var ciphertext []byte
	if err := e.pool.QueryRow(ctx, `SELECT ciphertext FROM certificate_keys WHERE id = $1`, id).Scan(&ciphertext); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ciphertext, []byte("PRIVATE KEY")) || bytes.Contains(ciphertext, keyPEM[30:60]) {
		t.Fatal("the key is stored in the clear")
	}

	got, err := rpc.Call(ctx, ca, endpoints.CertKeyRead, &secretsv1.ReadCertificateKeyRequest{Id: id, InstanceId: e.a})
	if err != nil || got.GetPrivateKeyPem() != string(keyPEM) {
		t.Fatalf("read: %v", err)
	}
	var audited bool
	for _, r := range e.auditRecords() {
		if r.GetName() == "tls-private-key" && r.GetInstanceId() == e.a && r.GetAllowed() {
			audited = true
		}
	}
	if !audited {
		t.Fatalf("no audit record of the read: %v", e.auditRecords())
	}

	// A ciphertext moved under another id does not open.
	if _, err := e.pool.Exec(ctx, `UPDATE certificate_keys t SET ciphertext = f.ciphertext, nonce = f.nonce, wrapped_key = f.wrapped_key
		FROM certificate_keys f WHERE f.id = $1 AND t.id = $2`, id, other); err != nil {
		t.Fatal(err)
	}
	if got, err := rpc.Call(ctx, ca, endpoints.CertKeyRead, &secretsv1.ReadCertificateKeyRequest{Id: other, InstanceId: e.a}); !apierr.Is(err, apierr.KindInternal) || got != nil {
		t.Fatalf("a moved ciphertext: %v, %v", got, err)
	}
	if _, err := rpc.Call(ctx, ca, endpoints.CertKeyRead, &secretsv1.ReadCertificateKeyRequest{Id: "0190c3e1-0000-7000-8000-000000000000", InstanceId: e.a}); !apierr.Is(err, apierr.KindNotFound) {
		t.Fatalf("an unknown id: %v", err)
	}
}
