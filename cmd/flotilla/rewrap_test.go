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
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/secrets"
)

// TestRewrapSecretsFromTheEnvironment runs `flotilla admin rewrap-secrets
// --env` as an operator would on a cluster manager, with AWS credentials
// from the default chain (AWS_ACCESS_KEY_ID …): every data key the local
// key wrapped ends up under the AWS key, unwrapping to the same key; the
// values' ciphertexts are left as they were.
func TestRewrapSecretsFromTheEnvironment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testkit.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := secrets.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "kms", "master.key")
	local, err := kms.OpenLocal(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	const instance = "3f1c8c2e-0d7a-4e4b-9a51-6a1f2b3c4d5e"
	dataKeys := map[string][]byte{}
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		ec := kms.EncryptionContext{"flotilla:instance-id": instance, "flotilla:secret-name": name}
		dk, wrapped, err := local.GenerateDataKey(ctx, 32, ec)
		if err != nil {
			t.Fatal(err)
		}
		dataKeys[name] = dk
		if _, err := pool.Exec(ctx, `INSERT INTO secrets (instance_id, name, version, ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at)
			VALUES ($1, $2, 1, 'ciphertext', '123456789012', $3, $4, now(), now())`, instance, name, wrapped, local.KeyID()); err != nil {
			t.Fatal(err)
		}
	}

	m := testkit.StartMoto(t)
	sdk, err := awsx.Config(ctx, m.Account())
	if err != nil {
		t.Fatal(err)
	}
	out, err := awskms.NewFromConfig(sdk).CreateKey(ctx, &awskms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt, KeySpec: types.KeySpecSymmetricDefault})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(out.KeyMetadata.Arn)
	acct := m.Account()
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"FLOTILLA_DATABASE_URL=" + dbURL, "FLOTILLA_KMS_PROVIDER=aws", "FLOTILLA_KMS_AWS_KEY_ID=" + arn,
		"FLOTILLA_KMS_AWS_REGION=" + acct.Region, "FLOTILLA_KMS_AWS_ENDPOINT_URL=" + m.URL, "FLOTILLA_KMS_KEY_FILE=" + keyFile,
		"AWS_ACCESS_KEY_ID=" + acct.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + acct.SecretAccessKey,
	}
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(binary, append([]string{"admin", "rewrap-secrets"}, args...)...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	got, err := run(env, "--env", "--batch-size", "5")
	if err != nil || !strings.Contains(got, fmt.Sprintf("rewrapped %d data keys under %s", n, arn)) || !strings.Contains(got, "0 remaining") {
		t.Fatalf("rewrap-secrets: %v\n%s", err, got)
	}
	a, err := kms.OpenAWS(ctx, m.Account(), arn)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT name, wrapped_key, kms_key_id, convert_from(ciphertext, 'UTF8') FROM secrets`)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		var name, keyID, ciphertext string
		var wrapped []byte
		if err := rows.Scan(&name, &wrapped, &keyID, &ciphertext); err != nil {
			t.Fatal(err)
		}
		seen++
		dk, err := a.Decrypt(ctx, keyID, wrapped, kms.EncryptionContext{"flotilla:instance-id": instance, "flotilla:secret-name": name})
		if err != nil || !bytes.Equal(dk, dataKeys[name]) || ciphertext != "ciphertext" {
			t.Errorf("%s after the rewrap: %v (same data key %v, ciphertext %q)", name, err, bytes.Equal(dk, dataKeys[name]), ciphertext)
		}
	}
	if rows.Err() != nil || seen != n {
		t.Fatalf("%d rows, %v", seen, rows.Err())
	}

	// Again: nothing to do.
	if got, err := run(env, "--env"); err != nil || !strings.Contains(got, "rewrapped 0 data keys") {
		t.Fatalf("rewrap-secrets again: %v\n%s", err, got)
	}
	// A setting missing: named, and nothing done.
	if got, err := run([]string{"PATH=" + os.Getenv("PATH"), "FLOTILLA_KMS_PROVIDER=aws"}, "--env"); err == nil ||
		!strings.Contains(got, "FLOTILLA_DATABASE_URL: is required") || !strings.Contains(got, "FLOTILLA_KMS_AWS_KEY_ID: is required") {
		t.Fatalf("rewrap-secrets without settings: %v\n%s", err, got)
	}
	if got, err := run(env, "--help"); err != nil || !strings.Contains(got, "flotilla admin rewrap-secrets --data-dir") {
		t.Fatalf("--help shows no example: %v\n%s", err, got)
	}
}
