package secrets_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/secrets"
)

func names(items []*secretsv1.Secret) []string {
	var out []string
	for _, s := range items {
		out = append(out, s.GetName())
	}
	return out
}

func TestCreateListReplaceDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	first := e.mustCreate(e.a, "db-password", "first-value-1111")
	if first.GetInstanceId() != e.a || first.GetName() != "db-password" || first.GetVersion() != 1 ||
		first.GetKmsKeyId() != e.kms.KeyID() || first.GetCreateTime() == nil || first.GetUpdateTime() == nil {
		t.Fatalf("created: %v", first)
	}
	if data, _ := proto.Marshal(first); strings.Contains(string(data), "first-value-1111") {
		t.Fatal("the create reply carries the value")
	}
	e.mustCreate(e.a, "API.token_2", "token")
	e.mustCreate(e.b, "db-password", "b's own value")

	// Creating an existing name replaces it with the next version.
	second := e.mustCreate(e.a, "db-password", "second-value-2222")
	if second.GetVersion() != 2 || !second.GetCreateTime().AsTime().Equal(first.GetCreateTime().AsTime()) ||
		second.GetUpdateTime().AsTime().Before(first.GetUpdateTime().AsTime()) {
		t.Fatalf("replaced: %v (first %v)", second, first)
	}
	got, err := e.read(e.a, "db-password")
	if err != nil || string(got.GetValue()) != "second-value-2222" || got.GetVersion() != 2 {
		t.Fatalf("read after replace: %v, %v", got, err)
	}

	items, err := e.list(e.a)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"API.token_2", "db-password"}; !slices.Equal(names(items), want) {
		t.Fatalf("list a: %v, want %v", names(items), want)
	}
	if items[1].GetVersion() != 2 || items[1].GetKmsKeyId() != e.kms.KeyID() {
		t.Fatalf("listed: %v", items[1])
	}
	if items, err := e.list(e.b); err != nil || !slices.Equal(names(items), []string{"db-password"}) {
		t.Fatalf("list b: %v, %v", names(items), err)
	}
	if items, err := e.list(uuid.NewString()); !apierr.Is(err, apierr.KindNotFound) {
		t.Fatalf("list of no instance: %v, %v", items, err)
	}

	del := func(instanceID, name string) error {
		_, err := call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: instanceID, Name: name})
		return err
	}
	if err := del(e.a, "db-password"); err != nil {
		t.Fatal(err)
	}
	if err := del(e.a, "db-password"); !apierr.Is(err, apierr.KindNotFound) || err.Error() != `secret "db-password" not found` {
		t.Fatalf("deleting it again: %v, want not found", err)
	}
	if items, _ := e.list(e.a); !slices.Equal(names(items), []string{"API.token_2"}) {
		t.Fatalf("list a after delete: %v", names(items))
	}
	if got, err := e.read(e.b, "db-password"); err != nil || string(got.GetValue()) != "b's own value" {
		t.Fatalf("b's secret of the same name after a's delete: %v, %v", got, err)
	}

	// Deleted, then created again: a fresh secret at version 1.
	if again := e.mustCreate(e.a, "db-password", "third"); again.GetVersion() != 1 {
		t.Fatalf("recreated at version %d, want 1", again.GetVersion())
	}
}

func TestValidationNamesTheField(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const value = "validation-value-9c1e"
	create := func(instanceID, name, value string) func() error {
		return func() error { _, err := e.create(instanceID, name, value); return err }
	}
	tooLong := strings.Repeat("x", secrets.MaxValueSize+1)
	tests := []struct {
		name string
		call func() error
		kind apierr.Kind
		want string // a regexp the message must match
	}{
		{"create without instance", create("", "n", value), apierr.KindInvalid, `^instanceId: is required$`},
		{"create with a bad instance id", create("instance-a", "n", value), apierr.KindInvalid, `^instanceId: must be an instance id \(a UUID\)$`},
		{"create with the nil UUID", create(uuid.Nil.String(), "n", value), apierr.KindInvalid, `^instanceId: `},
		{"create without name", create(e.a, "", value), apierr.KindInvalid, `^name: is required$`},
		{"create with a bad name", create(e.a, "db password/1", value), apierr.KindInvalid, `^name: "db password/1" must be 1-128 letters, digits, '_', '-' or '.'$`},
		{"create with a long name", create(e.a, strings.Repeat("n", 129), value), apierr.KindInvalid, `^name: must be at most 128 characters, got 129$`},
		{"create without value", create(e.a, "n", ""), apierr.KindInvalid, `^value: is required \(or secretsManagerId, an AWS Secrets Manager secret to read it from\)$`},
		{"create with a value and a reference", func() error {
			_, err := call(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: e.a, Name: "n", Value: value, SecretsManagerId: "prod/db"})
			return err
		}, apierr.KindInvalid, `^secretsManagerId: give a value or an AWS Secrets Manager secret to read it from, not both$`},
		{"create with a bad reference", func() error {
			_, err := call(e, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: e.a, Name: "n", SecretsManagerId: "prod db"})
			return err
		}, apierr.KindInvalid, `^secretsManagerId: "prod db" is not an AWS Secrets Manager secret's name or ARN`},
		{"create with a large value", create(e.a, "n", tooLong), apierr.KindInvalid, `^value: must be at most 65536 bytes \(64 KiB\), got 65537 bytes$`},
		{"create for an unknown instance", create("0190c3e1-0000-7000-8000-000000000001", "n", value), apierr.KindNotFound, `^instance "0190c3e1-0000-7000-8000-000000000001" not found$`},
		{"list with a bad instance id", func() error { _, err := e.list("x"); return err }, apierr.KindInvalid, `^instanceId: `},
		{"delete with a bad name", func() error {
			_, err := call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: e.a, Name: "a b"})
			return err
		}, apierr.KindInvalid, `^name: `},
		{"read with a bad requester", func() error { _, err := e.read("agent-a", "n"); return err }, apierr.KindInvalid, `^requesterInstanceId: must be an instance id`},
		{"read with a bad name", func() error { _, err := e.read(e.a, "../etc/passwd"); return err }, apierr.KindInvalid, `^name: `},
	}
	for _, tc := range tests {
		err := tc.call()
		if !apierr.Is(err, tc.kind) || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
			t.Errorf("%s: got %v (%s), want %s matching %s", tc.name, err, apierr.KindOf(err), tc.kind, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), value) {
			t.Errorf("%s: the error shows the value: %v", tc.name, err)
		}
	}
	// The limits themselves are allowed.
	if _, err := e.create(e.a, strings.Repeat("n", 128), strings.Repeat("v", secrets.MaxValueSize)); err != nil {
		t.Fatalf("a 128-character name and a 64 KiB value: %v", err)
	}
	if items, _ := e.list(e.a); len(items) != 1 {
		t.Fatalf("the rejected requests stored %d secrets", len(items)-1)
	}
}

func TestReadIsBoundToTheInstanceAndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustCreate(e.a, "tls-key", "a-private-key")
	e.mustCreate(e.b, "only-b", "b-private")

	got, err := e.read(e.a, "tls-key")
	if err != nil || string(got.GetValue()) != "a-private-key" || got.GetVersion() != 1 {
		t.Fatalf("a reads its own secret: %v, %v", got, err)
	}

	// b asks for a's secret, and for a name nobody has: the same answer.
	_, errOther := e.read(e.b, "tls-key")
	_, errMissing := e.read(e.b, "no-such-secret")
	for _, err := range []error{errOther, errMissing} {
		if !apierr.Is(err, apierr.KindPermissionDenied) {
			t.Fatalf("b reading a name it has no secret of: %v, want permission denied", err)
		}
	}
	if strings.Replace(errOther.Error(), "tls-key", "X", 1) != strings.Replace(errMissing.Error(), "no-such-secret", "X", 1) {
		t.Fatalf("another instance's secret and a missing one are told apart: %q vs %q", errOther, errMissing)
	}
	if errOther.Error() != `secret "tls-key" is not set for this instance (flotilla instances secrets set, or POST /api/v1/instances/{id}/secrets), `+
		`nor is a fleet secret of that name given to its template and network (flotilla secrets set NAME --template T [--network N], or PUT /api/v1/secrets/{name})` {
		t.Fatalf("denial message: %q", errOther)
	}
	// a cannot read b's either.
	if _, err := e.read(e.a, "only-b"); !apierr.Is(err, apierr.KindPermissionDenied) {
		t.Fatalf("a reading b's secret: %v", err)
	}

	records := e.auditRecords()
	type rec struct {
		requester, instance, name string
		allowed                   bool
	}
	var seen []rec
	for _, r := range records {
		if r.GetTime() == nil || r.GetReason() == "" {
			t.Errorf("audit record without time or reason: %v", r)
		}
		seen = append(seen, rec{r.GetRequesterInstanceId(), r.GetInstanceId(), r.GetName(), r.GetAllowed()})
	}
	want := []rec{
		{e.a, e.a, "tls-key", true},
		{e.b, "", "tls-key", false},
		{e.b, "", "no-such-secret", false},
		{e.a, "", "only-b", false},
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("audit records\n got %v\nwant %v", seen, want)
	}
	for _, r := range records {
		if strings.Contains(r.String(), "a-private-key") {
			t.Fatal("an audit record carries the value")
		}
	}
}

func TestReadWithoutAnAuditRecordFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.mustCreate(e.a, "k", "audited-value")

	if err := e.js.DeleteStream(ctx, subjects.AuditStream); err != nil {
		t.Fatal(err)
	}
	got, err := e.read(e.a, "k")
	if !apierr.Is(err, apierr.KindUnavailable) || got != nil {
		t.Fatalf("read with the audit stream gone: %v, %v; want unavailable and no value", got, err)
	}
	if strings.Contains(err.Error(), "audited-value") || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("error: %q", err)
	}
	// Denied reads are refused too: nothing happens unaudited.
	if _, err := e.read(e.b, "k"); !apierr.Is(err, apierr.KindUnavailable) {
		t.Fatalf("denied read with the audit stream gone: %v", err)
	}

	if err := bus.EnsureStreams(ctx, e.js, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := e.read(e.a, "k"); err != nil || string(got.GetValue()) != "audited-value" {
		t.Fatalf("read once the audit stream is back: %v, %v", got, err)
	}
	if n := len(e.auditRecords()); n != 1 {
		t.Fatalf("%d audit records, want 1 (the refused reads were never released)", n)
	}
}

func TestTamperedSecretsFailToDecrypt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	internalRE := regexp.MustCompile(`^internal error \(error id [0-9a-f]{16}\)$`)
	mustFail := func(name, why string) {
		t.Helper()
		got, err := e.read(e.a, name)
		if !apierr.Is(err, apierr.KindInternal) || got != nil {
			t.Fatalf("%s: read gave %v, %v; want an internal error", why, got, err)
		}
		if !internalRE.MatchString(err.Error()) {
			t.Fatalf("%s: the error %q says more than an error id", why, err)
		}
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		tag, err := e.pool.Exec(ctx, sql, args...)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("%s: %v, %d rows", sql, err, tag.RowsAffected())
		}
	}

	e.mustCreate(e.a, "flipped", "value-flipped")
	exec(`UPDATE secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) WHERE instance_id = $1 AND name = 'flipped'`, e.a)
	mustFail("flipped", "a flipped ciphertext bit")

	e.mustCreate(e.a, "moved-from", "value-moved")
	e.mustCreate(e.a, "moved-to", "value-kept")
	exec(`UPDATE secrets t SET ciphertext = f.ciphertext, nonce = f.nonce, wrapped_key = f.wrapped_key
		FROM secrets f WHERE f.instance_id = $1 AND f.name = 'moved-from' AND t.instance_id = $1 AND t.name = 'moved-to'`, e.a)
	mustFail("moved-to", "a ciphertext moved from another secret")

	// The data key alone, moved: its encryption context names another secret.
	e.mustCreate(e.a, "key-from", "value-key-from")
	e.mustCreate(e.a, "key-to", "value-key-to")
	exec(`UPDATE secrets t SET wrapped_key = f.wrapped_key
		FROM secrets f WHERE f.instance_id = $1 AND f.name = 'key-from' AND t.instance_id = $1 AND t.name = 'key-to'`, e.a)
	mustFail("key-to", "a wrapped data key moved from another secret")

	e.mustCreate(e.a, "bumped", "value-bumped")
	exec(`UPDATE secrets SET version = version + 1 WHERE instance_id = $1 AND name = 'bumped'`, e.a)
	mustFail("bumped", "a ciphertext under another version")

	e.mustCreate(e.a, "rewrapped", "value-rewrapped")
	exec(`UPDATE secrets SET wrapped_key = set_byte(wrapped_key, 20, get_byte(wrapped_key, 20) # 1) WHERE instance_id = $1 AND name = 'rewrapped'`, e.a)
	mustFail("rewrapped", "a flipped wrapped-key bit")

	e.mustCreate(e.a, "other-key", "value-other-key")
	exec(`UPDATE secrets SET kms_key_id = 'local:0000000000000000' WHERE instance_id = $1 AND name = 'other-key'`, e.a)
	mustFail("other-key", "a data key wrapped by another master key")

	// The log has the cause, next to the error id, and never the value.
	logs := string(e.logs.Bytes())
	for _, want := range []string{"failed authentication", "different master key", "wrapped data key failed authentication"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not explain the failure (%q)", want)
		}
	}
	for _, v := range []string{"value-flipped", "value-moved", "value-kept", "value-key-from", "value-key-to", "value-bumped", "value-rewrapped", "value-other-key"} {
		if strings.Contains(logs, v) {
			t.Errorf("the log shows the value %q", v)
		}
	}
	// Each failed read is audited as not released.
	for _, r := range e.auditRecords() {
		if r.GetAllowed() || r.GetReason() != "stored secret cannot be decrypted" {
			t.Errorf("audit record of a failed read: %v", r)
		}
	}
	// An untouched secret still reads.
	e.mustCreate(e.a, "intact", "value-intact")
	if got, err := e.read(e.a, "intact"); err != nil || string(got.GetValue()) != "value-intact" {
		t.Fatalf("intact: %v, %v", got, err)
	}
}

func TestMigrationsKeepTheirOwnVersionTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // the inventory and the broker have both migrated the same database
	ctx := context.Background()
	for _, table := range []string{secrets.SchemaVersionTable, "goose_db_version"} {
		var max int64
		if err := e.pool.QueryRow(ctx, `SELECT max(version_id) FROM `+table).Scan(&max); err != nil || max < 1 {
			t.Fatalf("%s: max version %d, %v", table, max, err)
		}
	}
	// Applying again is a no-op.
	if err := secrets.Migrate(ctx, e.pool, nil); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentReplacesTakeDistinctVersions: writers of one secret, or
// of one cloud account's key, spread over two brokers take turns: every
// write succeeds with its own version, none is refused for racing another.
func TestConcurrentReplacesTakeDistinctVersions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startBroker() // two brokers sharing the requests, as in a cluster
	inventory := rpc.NewClient(e.bus.Conn(t, subjects.Inventory), subjects.Inventory, 10*time.Second)
	account := uuid.NewString()
	const writers = 32
	for _, kind := range []string{"secret", "cloud key"} {
		versions := make([]int64, writers)
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				value := fmt.Sprintf("value-%d", i)
				if kind == "secret" {
					s, err := e.create(e.a, "contended", value)
					versions[i] = s.GetVersion()
					if err != nil {
						t.Errorf("%s writer %d: %v", kind, i, err)
					}
					return
				}
				r, err := rpc.Call(t.Context(), inventory, endpoints.CloudKeyPut, &secretsv1.PutCloudKeyRequest{CloudAccountId: account, Value: value})
				versions[i] = r.GetVersion()
				if err != nil {
					t.Errorf("%s writer %d: %v", kind, i, err)
				}
			})
		}
		wg.Wait()
		slices.Sort(versions)
		for i, v := range versions {
			if v != int64(i+1) {
				t.Fatalf("%s versions %v, want 1..%d each once", kind, versions, writers)
			}
		}
	}
	got, err := e.read(e.a, "contended")
	if err != nil || got.GetVersion() != writers || !strings.HasPrefix(string(got.GetValue()), "value-") {
		t.Fatalf("read the last version: %v, %v", got, err)
	}
}

// TestDeletingACloudKeyWaitsForItsWriters: a delete takes its turn with
// the key's writers, so a put under way is not stored after the key was
// forgotten.
func TestDeletingACloudKeyWaitsForItsWriters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	inventory := rpc.NewClient(e.bus.Conn(t, subjects.Inventory), subjects.Inventory, 10*time.Second)
	account := uuid.NewString()
	if _, err := rpc.Call(t.Context(), inventory, endpoints.CloudKeyPut, &secretsv1.PutCloudKeyRequest{CloudAccountId: account, Value: "v1"}); err != nil {
		t.Fatal(err)
	}
	release, err := secrets.HoldCloudKeyTurn(t.Context(), e.pool, account)
	if err != nil {
		t.Fatal(err)
	}
	deleted := make(chan error, 1)
	go func() {
		_, err := rpc.Call(t.Context(), inventory, endpoints.CloudKeyDelete, &secretsv1.DeleteCloudKeyRequest{CloudAccountId: account})
		deleted <- err
	}()
	select {
	case err := <-deleted:
		release()
		t.Fatalf("the delete did not wait for the writer holding the key's turn: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	release()
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM cloud_keys WHERE cloud_account_id = $1`, account).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d keys of the deleted account kept, %v", n, err)
	}
}

func TestSecretsGoWithTheirInstance(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustCreate(e.a, "db-password", "value-of-a")
	e.mustCreate(e.b, "db-password", "value-of-b")
	if _, err := e.inventory.DeleteInstance(context.Background(), "user:test", e.a, 0, false); err != nil {
		t.Fatal(err)
	}
	count := func(id string) int {
		var n int
		if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM secrets WHERE instance_id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(15 * time.Second)
	for count(e.a) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the deleted instance's secrets are still stored")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if count(e.b) != 1 {
		t.Fatal("another instance's secret went too")
	}
	// The instance gone, its secrets are not found rather than none.
	if _, err := e.list(e.a); !apierr.Is(err, apierr.KindNotFound) || !strings.Contains(err.Error(), "instance") {
		t.Errorf("list the secrets of a deleted instance: %v", err)
	}
	if _, err := call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: e.a, Name: "db-password"}); !apierr.Is(err, apierr.KindNotFound) || !strings.Contains(err.Error(), "instance") {
		t.Errorf("delete a secret of a deleted instance: %v", err)
	}
	if _, err := call(e, endpoints.SecretDelete, &secretsv1.DeleteSecretRequest{InstanceId: e.b, Name: "no-such"}); !apierr.Is(err, apierr.KindNotFound) || !strings.Contains(err.Error(), `secret "no-such"`) {
		t.Errorf("delete a secret that does not exist: %v", err)
	}
}
