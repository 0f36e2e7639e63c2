package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/secrets"
)

// rewrapFixture is a secrets table whose data keys the local key in
// keyFile wrapped, and an AWS key on moto to move them to.
type rewrapFixture struct {
	dbURL, keyFile string
	pool           *pgxpool.Pool
	moto           *testkit.Moto
	arn            string
	// dataKeys are the secrets' data keys by name.
	dataKeys map[string][]byte
}

const rewrapInstance = "3f1c8c2e-0d7a-4e4b-9a51-6a1f2b3c4d5e"

// newRewrapFixture stores n secrets as a broker with the local key would:
// the value ciphertexts are placeholders, as the rewrap never reads them.
func newRewrapFixture(t *testing.T, keyFile string, n int) *rewrapFixture {
	t.Helper()
	ctx := context.Background()
	f := &rewrapFixture{dbURL: testkit.NewDatabase(t), keyFile: keyFile, dataKeys: map[string][]byte{}}
	var err error
	if f.pool, err = pgxpool.New(ctx, f.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.pool.Close)
	if err := secrets.Migrate(ctx, f.pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	local, err := kms.OpenLocal(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		dk, wrapped, err := local.GenerateDataKey(ctx, 32, f.context(name))
		if err != nil {
			t.Fatal(err)
		}
		f.dataKeys[name] = dk
		if _, err := f.pool.Exec(ctx, `INSERT INTO secrets (instance_id, name, version, ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at)
			VALUES ($1, $2, 1, 'ciphertext', '123456789012', $3, $4, now(), now())`, rewrapInstance, name, wrapped, local.KeyID()); err != nil {
			t.Fatal(err)
		}
	}
	f.moto = testkit.StartMoto(t)
	sdk, err := awsx.Config(ctx, f.moto.Account())
	if err != nil {
		t.Fatal(err)
	}
	out, err := awskms.NewFromConfig(sdk).CreateKey(ctx, &awskms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt, KeySpec: types.KeySpecSymmetricDefault})
	if err != nil {
		t.Fatal(err)
	}
	f.arn = aws.ToString(out.KeyMetadata.Arn)
	return f
}

func (f *rewrapFixture) context(name string) kms.EncryptionContext {
	return kms.EncryptionContext{"flotilla:instance-id": rewrapInstance, "flotilla:secret-name": name}
}

// env is a process environment with the AWS credentials in the default
// chain's variables, and kv.
func (f *rewrapFixture) env(t *testing.T, kv ...string) []string {
	acct := f.moto.Account()
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"AWS_ACCESS_KEY_ID=" + acct.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + acct.SecretAccessKey}, kv...)
}

// checkUnderAWS checks that every data key is now wrapped by the AWS key
// and unwraps to the key it was, and that no ciphertext changed.
func (f *rewrapFixture) checkUnderAWS(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	a, err := kms.OpenAWS(ctx, f.moto.Account(), f.arn)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := f.pool.Query(ctx, `SELECT name, wrapped_key, kms_key_id, convert_from(ciphertext, 'UTF8') FROM secrets`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var name, keyID, ciphertext string
		var wrapped []byte
		if err := rows.Scan(&name, &wrapped, &keyID, &ciphertext); err != nil {
			t.Fatal(err)
		}
		seen++
		dk, err := a.Decrypt(ctx, keyID, wrapped, f.context(name))
		if err != nil || !bytes.Equal(dk, f.dataKeys[name]) || ciphertext != "ciphertext" {
			t.Errorf("%s after the rewrap: %v (same data key %v, ciphertext %q)", name, err, bytes.Equal(dk, f.dataKeys[name]), ciphertext)
		}
	}
	if rows.Err() != nil || seen != len(f.dataKeys) {
		t.Fatalf("%d rows, %v", seen, rows.Err())
	}
}

func runRewrap(env []string, args ...string) (string, error) {
	cmd := exec.Command(binary, append([]string{"admin", "rewrap-secrets"}, args...)...)
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// TestRewrapSecretsFromTheEnvironment runs `flotilla admin rewrap-secrets
// --env` as an operator would on a cluster manager, with AWS credentials
// from the default chain (AWS_ACCESS_KEY_ID …): every data key the local
// key wrapped ends up under the AWS key, unwrapping to the same key; the
// values' ciphertexts are left as they were.
func TestRewrapSecretsFromTheEnvironment(t *testing.T) {
	t.Parallel()
	const n = 12
	f := newRewrapFixture(t, filepath.Join(t.TempDir(), "kms", "master.key"), n)
	env := f.env(t, "FLOTILLA_DATABASE_URL="+f.dbURL, "FLOTILLA_KMS_PROVIDER=aws", "FLOTILLA_KMS_AWS_KEY_ID="+f.arn,
		"FLOTILLA_KMS_AWS_REGION="+testkit.MotoRegion, "FLOTILLA_KMS_AWS_ENDPOINT_URL="+f.moto.URL, "FLOTILLA_KMS_KEY_FILE="+f.keyFile)
	got, err := runRewrap(env, "--env", "--batch-size", "5")
	if err != nil || !strings.Contains(got, fmt.Sprintf("rewrapped %d data keys under %s", n, f.arn)) || !strings.Contains(got, "0 remaining") {
		t.Fatalf("rewrap-secrets: %v\n%s", err, got)
	}
	f.checkUnderAWS(t)

	// Again: nothing to do.
	if got, err := runRewrap(env, "--env"); err != nil || !strings.Contains(got, "rewrapped 0 data keys") {
		t.Fatalf("rewrap-secrets again: %v\n%s", err, got)
	}
	// Settings missing: named, and nothing done.
	if got, err := runRewrap([]string{"PATH=" + os.Getenv("PATH"), "FLOTILLA_KMS_PROVIDER=aws"}, "--env"); err == nil ||
		!strings.Contains(got, "FLOTILLA_DATABASE_URL: is required") || !strings.Contains(got, "FLOTILLA_KMS_AWS_KEY_ID: is required") {
		t.Fatalf("rewrap-secrets without settings: %v\n%s", err, got)
	}
	if got, err := runRewrap(env, "--help"); err != nil || !strings.Contains(got, "flotilla admin rewrap-secrets --data-dir") {
		t.Fatalf("--help shows no example: %v\n%s", err, got)
	}
}

// TestRewrapSecretsInADataDir: the same from a data directory whose
// settings name the AWS key (flotilla up), its local key the previous one.
func TestRewrapSecretsInADataDir(t *testing.T) {
	t.Parallel()
	d := datadir.Dir(t.TempDir())
	f := newRewrapFixture(t, d.Path("keys", "master.key"), 7)
	s, err := datadir.Prepare(d, datadir.Overrides{DatabaseURL: f.dbURL})
	if err != nil {
		t.Fatal(err)
	}
	s.KMS = &datadir.KMSSettings{Provider: "aws", KeyID: f.arn, Region: testkit.MotoRegion, EndpointURL: f.moto.URL}
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	got, err := runRewrap(f.env(t), "--data-dir", string(d))
	if err != nil || !strings.Contains(got, fmt.Sprintf("rewrapped 7 data keys under %s", f.arn)) {
		t.Fatalf("rewrap-secrets: %v\n%s", err, got)
	}
	f.checkUnderAWS(t)

	s.KMS.Region = ""
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	if got, err := runRewrap(f.env(t), "--data-dir", string(d)); err == nil || !strings.Contains(got, "kms.region: is required") {
		t.Fatalf("rewrap-secrets with no region: %v\n%s", err, got)
	}
}
