package secrets_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/google/uuid"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/secrets"
)

// awsKey starts a moto server with a fresh symmetric key, made with the
// SDK as an operator would make it in AWS.
func awsKey(t *testing.T) *stack.AWSKMS {
	t.Helper()
	m := testkit.StartMoto(t)
	cfg, err := awsx.Config(t.Context(), m.Account())
	if err != nil {
		t.Fatal(err)
	}
	out, err := awskms.NewFromConfig(cfg).CreateKey(t.Context(), &awskms.CreateKeyInput{
		Description: aws.String("flotilla secrets"), KeyUsage: types.KeyUsageTypeEncryptDecrypt, KeySpec: types.KeySpecSymmetricDefault,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &stack.AWSKMS{Account: m.Account(), KeyID: *out.KeyMetadata.Arn, Actions: &awsx.Actions{}}
}

// keyIDs returns the kms_key_id of every secret of the test's instances.
func (e *env) keyIDs() map[string]int {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT kms_key_id, count(*) FROM secrets WHERE instance_id IN ($1, $2) GROUP BY kms_key_id`, e.a, e.b)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			e.t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

// cancelOnLog cancels a context at the first log record: a crash after
// the first batch.
type cancelOnLog struct {
	slog.Handler
	cancel context.CancelFunc
}

func (h cancelOnLog) Handle(ctx context.Context, r slog.Record) error {
	h.cancel()
	return h.Handler.Handle(ctx, r)
}

// TestRewrapFromLocalToAWS moves a store from the local master key to AWS
// KMS as an operator would: restart the broker with the AWS key and the
// local key as the previous one, rewrap (interrupted once, then with a
// writer replacing secrets meanwhile), and finally drop the local key.
func TestRewrapFromLocalToAWS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	want := map[[2]string]string{} // instance, name → value
	for i := range 40 {
		inst := e.a
		if i%2 == 1 {
			inst = e.b
		}
		name, value := fmt.Sprintf("s%02d", i), fmt.Sprintf("value-%d", i)
		e.mustCreate(inst, name, value)
		want[[2]string{inst, name}] = value
	}
	if got := e.keyIDs(); got[e.kms.KeyID()] != 40 {
		t.Fatalf("before: secrets by key %v, want 40 under %s", got, e.kms.KeyID())
	}
	readAll := func(stage string) {
		t.Helper()
		for k, v := range want {
			got, err := e.read(k[0], k[1])
			if err != nil || string(got.GetValue()) != v {
				t.Fatalf("%s: read %s/%s: %q, %v; want %q", stage, k[0], k[1], got.GetValue(), err, v)
			}
		}
	}

	// The rolling restart begins: a broker with the AWS key (the local key
	// kept as previous) comes up beside the local-only one.
	key := awsKey(t)
	cfg := e.config(subjects.Secrets)
	cfg.KMSAWS = key
	mid := stacktest.Start(t, cfg)
	readAll("during the rolling restart")

	keyring, err := cfg.OpenKMS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keyring.KeyID() != key.KeyID {
		t.Fatalf("the keyring wraps with %s, want %s", keyring.KeyID(), key.KeyID)
	}

	// A crash after the first batch: what was done stays done.
	crashCtx, crash := context.WithCancel(ctx)
	rep, err := secrets.Rewrap(crashCtx, e.pool, keyring, secrets.RewrapOptions{BatchSize: 7,
		Log: slog.New(cancelOnLog{slog.NewTextHandler(e.logs, nil), crash})})
	if !errors.Is(err, context.Canceled) || rep.Rewrapped != 7 {
		t.Fatalf("interrupted rewrap: %+v, %v; want 7 rewrapped and context.Canceled", rep, err)
	}

	// Resumed while a writer replaces secrets through both brokers: the
	// one not yet restarted still wraps under the local key.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	writes := 0
	wg.Go(func() {
		for gen := 0; ; gen++ {
			select {
			case <-stop:
				return
			default:
			}
			inst, name := e.a, fmt.Sprintf("s%02d", 2*(gen%10)) // s00, s02, … on a
			v := fmt.Sprintf("value-%s-gen-%d", name, gen)
			if _, err := e.create(inst, name, v); err != nil {
				t.Errorf("concurrent replace of %s: %v", name, err)
				return
			}
			mu.Lock()
			want[[2]string{inst, name}] = v
			writes++
			mu.Unlock()
		}
	})
	rep, err = secrets.Rewrap(ctx, e.pool, keyring, secrets.RewrapOptions{BatchSize: 3, Log: e.log})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resumed rewrap, beside %d writes: %+v", writes, rep)
	if rep.Failed != 0 || rep.Rewrapped+rep.Changed > 33 || rep.Rewrapped < 23 {
		t.Fatalf("resumed rewrap: %+v; want the 33 left rewrapped or changed (at most 10 changed), none failed", rep)
	}

	// The restart ends: the local-only broker goes, and a second run moves
	// what it wrote under the local key meanwhile.
	stacktest.Stop(t, e.broker)
	// What is left now: writes through either broker after the resumed
	// run counted its remaining rows changed that count.
	var left int64
	for id, n := range e.keyIDs() {
		if id != key.KeyID {
			left += int64(n)
		}
	}
	rep, err = secrets.Rewrap(ctx, e.pool, keyring, secrets.RewrapOptions{})
	if err != nil || rep.Failed != 0 || rep.Remaining != 0 || rep.Rewrapped != left {
		t.Fatalf("the rewrap after the restart: %+v, %v; want the %d left rewrapped", rep, err, left)
	}
	e.mustCreate(e.a, "new", "value-new")
	want[[2]string{e.a, "new"}] = "value-new"
	if got := e.keyIDs(); got[key.KeyID] != 41 || len(got) != 1 {
		t.Fatalf("after the rewrap, secrets by key: %v; want all 41 under %s", got, key.KeyID)
	}
	readAll("after the rewrap")

	// Running it again changes nothing.
	if rep, err := secrets.Rewrap(ctx, e.pool, keyring, secrets.RewrapOptions{}); err != nil || rep != (secrets.RewrapReport{}) {
		t.Fatalf("a second rewrap: %+v, %v; want nothing done", rep, err)
	}

	// The local key is no longer needed: a broker with the AWS key alone
	// reads every secret.
	alone := e.config(subjects.Secrets)
	alone.KMSAWS, alone.KMSKeyFile = key, ""
	stacktest.Start(t, alone)
	stacktest.Stop(t, mid)
	readAll("with the AWS key alone")

	// What the least-privilege policy must allow.
	wantActions := []string{"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"}
	if got := key.Actions.List(); !slices.Equal(got, wantActions) {
		t.Errorf("AWS actions %v, want %v", got, wantActions)
	}
}

// TestRewrapNeverOverwritesAConcurrentWrite: a secret replaced, or deleted
// and created again, between Rewrap reading it and updating it keeps what
// the writer wrote.
func TestRewrapNeverOverwritesAConcurrentWrite(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.setFleet("registry", "fleet-value", e.template); err != nil {
		t.Fatal(err)
	}
	other, err := kms.OpenLocal(t.TempDir() + "/new.key")
	if err != nil {
		t.Fatal(err)
	}
	keyring := kms.NewKeyring(other, e.kms)
	e.mustCreate(e.a, "replaced", "v1")
	e.mustCreate(e.a, "recreated", "v1")
	updated, err := secrets.RewrapStale(ctx, e.pool, keyring, e.a, "replaced", func() { e.mustCreate(e.a, "replaced", "v2") })
	if err != nil || updated {
		t.Fatalf("rewrap of a replaced secret: updated %v, %v; want it left alone", updated, err)
	}
	updated, err = secrets.RewrapStale(ctx, e.pool, keyring, e.a, "recreated", func() {
		if _, err := call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: e.a, Name: "recreated"}); err != nil {
			t.Fatal(err)
		}
		e.mustCreate(e.a, "recreated", "v1-again") // version 1 again
	})
	if err != nil || updated {
		t.Fatalf("rewrap of a deleted and recreated secret: updated %v, %v; want it left alone", updated, err)
	}
	for name, v := range map[string]string{"replaced": "v2", "recreated": "v1-again"} {
		if got, err := e.read(e.a, name); err != nil || string(got.GetValue()) != v {
			t.Fatalf("read %s: %q, %v; want %q", name, got.GetValue(), err, v)
		}
	}
	// A row that did not change is rewrapped.
	if updated, err := secrets.RewrapStale(ctx, e.pool, keyring, e.a, "replaced", func() {}); err != nil || !updated {
		t.Fatalf("rewrap of an unchanged secret: updated %v, %v", updated, err)
	}
}

// TestRewrapReportsWhatItCannotUnwrap: a data key under a master key this
// manager does not hold is counted, logged and left, and the rest goes on.
func TestRewrapReportsWhatItCannotUnwrap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.mustCreate(e.a, "lost", "v")
	e.mustCreate(e.a, "kept", "v")
	if _, err := e.pool.Exec(ctx, `UPDATE secrets SET kms_key_id = 'local:00000000000000ff' WHERE instance_id = $1 AND name = 'lost'`, e.a); err != nil {
		t.Fatal(err)
	}
	if _, err := e.setFleet("registry", "fleet-value", e.template); err != nil {
		t.Fatal(err)
	}
	other, err := kms.OpenLocal(t.TempDir() + "/new.key")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := secrets.Rewrap(ctx, e.pool, kms.NewKeyring(other, e.kms), secrets.RewrapOptions{Log: e.log})
	if err != nil {
		t.Fatal(err)
	}
	// Other tests' secrets share the database: count only this test's.
	if got := e.keyIDs(); got[other.KeyID()] != 1 || got["local:00000000000000ff"] != 1 {
		t.Fatalf("secrets by key %v; want kept rewrapped and lost left", got)
	}
	if rep.Failed < 1 || rep.Remaining < 1 {
		t.Fatalf("report %+v: want the failure counted and remaining", rep)
	}
	if !strings.Contains(e.logs.String(), "cannot rewrap a data key") {
		t.Error("the failure is not logged")
	}
}

// TestRewrapCoversEveryTableOfSealedValues: cloud accounts' keys,
// certificates' keys, networks' ACME account keys and the keys of
// instances' ACME certificates are rewrapped along with secrets.
func TestRewrapCoversEveryTableOfSealedValues(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	account := uuid.NewString()
	inventory := rpc.NewClient(e.bus.Conn(t, subjects.Inventory), subjects.Inventory, 10*time.Second) // stores both, as itself
	if _, err := rpc.Call(ctx, inventory, endpoints.CloudKeyPut, &secretsv1.PutCloudKeyRequest{CloudAccountId: account, Value: "aws-secret-key"}); err != nil {
		t.Fatal(err)
	}
	cert, err := rpc.Call(ctx, inventory, endpoints.CertKeyCreate, &secretsv1.StoreCertificateKeyRequest{PrivateKeyPem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"})
	if err != nil {
		t.Fatal(err)
	}
	// The CA has the broker make a network's ACME account key and keep an
	// instance's ACME certificate.
	ca := rpc.NewClient(e.bus.Conn(t, subjects.CA), subjects.CA, 10*time.Second)
	network := uuid.NewString()
	if _, err := rpc.Call(ctx, ca, endpoints.ACMEAccountKeyGet, &secretsv1.GetAcmeAccountKeyRequest{NetworkId: network, InstanceId: e.a}); err != nil {
		t.Fatal(err)
	}
	acmeCert := issue(t, "a.fleet.test")
	if _, err := rpc.Call(ctx, ca, endpoints.ACMECertKeyPut, &secretsv1.PutAcmeCertificateRequest{InstanceId: e.a, NetworkId: network,
		DirectoryUrl: "https://acme.test/dir", CertificatePem: acmeCert.chain, PrivateKeyPem: acmeCert.key}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.setFleet("registry", "fleet-value", e.template); err != nil {
		t.Fatal(err)
	}
	other, err := kms.OpenLocal(t.TempDir() + "/new.key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Rewrap(ctx, e.pool, kms.NewKeyring(other, e.kms), secrets.RewrapOptions{Log: e.log}); err != nil {
		t.Fatal(err)
	}
	for table, where := range map[string][]any{
		"cloud_keys":        {"cloud_account_id = $1", account},
		"certificate_keys":  {"id = $1", cert.GetId()},
		"acme_accounts":     {"network_id = $1", network},
		"acme_certificates": {"instance_id = $1", e.a},
		"fleet_secrets":     {"name = $1", "registry"},
	} {
		var keyID string
		if err := e.pool.QueryRow(ctx, "SELECT kms_key_id FROM "+table+" WHERE "+where[0].(string), where[1]).Scan(&keyID); err != nil || keyID != other.KeyID() {
			t.Errorf("%s after the rewrap: key %q, %v; want %s", table, keyID, err, other.KeyID())
		}
	}
}
