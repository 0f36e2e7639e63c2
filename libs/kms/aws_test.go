package kms_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/testkit"
)

// createKey makes a symmetric key on the moto server, as an operator would
// in AWS, and returns its ARN.
func createKey(t *testing.T, m *motoKMS) string {
	t.Helper()
	out, err := m.client.CreateKey(t.Context(), &awskms.CreateKeyInput{
		Description: aws.String("flotilla test " + t.Name()), KeyUsage: types.KeyUsageTypeEncryptDecrypt, KeySpec: types.KeySpecSymmetricDefault,
	})
	if err != nil {
		t.Fatal(err)
	}
	return *out.KeyMetadata.Arn
}

type motoKMS struct {
	moto   *testkit.Moto
	client *awskms.Client
}

func startMotoKMS(t *testing.T) *motoKMS {
	t.Helper()
	m := testkit.StartMoto(t)
	cfg, err := awsx.Config(t.Context(), m.Account())
	if err != nil {
		t.Fatal(err)
	}
	return &motoKMS{moto: m, client: awskms.NewFromConfig(cfg)}
}

func TestAWSWrapsWithTheEncryptionContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := startMotoKMS(t)
	arnA, arnB := createKey(t, m), createKey(t, m)
	if _, err := m.client.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/flotilla-secrets"), TargetKeyId: aws.String(arnA)}); err != nil {
		t.Fatal(err)
	}
	var actions awsx.Actions
	a, err := kms.OpenAWS(ctx, m.moto.Account(), "alias/flotilla-secrets", awsx.WithActions(&actions))
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyID() != arnA {
		t.Fatalf("key id %q, want the alias's key ARN %q", a.KeyID(), arnA)
	}
	b, err := kms.OpenAWS(ctx, m.moto.Account(), arnB)
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"flotilla:instance-id": "0b9b6c4e-7a3f-4a53-9f43-2a1f0f6f3d11", "flotilla:secret-name": "db-password"}

	dataKey, wrapped, err := a.GenerateDataKey(ctx, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if len(dataKey) != 32 || bytes.Contains(wrapped, dataKey[:8]) {
		t.Fatalf("GenerateDataKey: a %d-byte key, or one readable in the wrapped form", len(dataKey))
	}
	got, err := a.Decrypt(ctx, a.KeyID(), wrapped, ec)
	if err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("decrypt a generated key: %v", err)
	}
	own := bytes.Repeat([]byte{0x5a}, 32)
	w2, err := a.Encrypt(ctx, own, ec)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Decrypt(ctx, a.KeyID(), w2, ec); err != nil || !bytes.Equal(got, own) {
		t.Fatalf("decrypt a key wrapped with Encrypt: %v", err)
	}

	// Another secret's context: the wrapped key was moved.
	for _, other := range []kms.EncryptionContext{
		{"flotilla:instance-id": ec["flotilla:instance-id"], "flotilla:secret-name": "other"},
		{"flotilla:instance-id": "5f0c1c55-0000-4000-8000-000000000000", "flotilla:secret-name": "db-password"},
		nil,
	} {
		if _, err := a.Decrypt(ctx, a.KeyID(), wrapped, other); !errors.Is(err, kms.ErrTampered) {
			t.Errorf("decrypt with context %v: got %v, want ErrTampered", other, err)
		} else if !strings.Contains(err.Error(), "InvalidCiphertextException") {
			t.Errorf("the error %q does not name AWS's reason", err)
		}
	}
	bad := bytes.Clone(wrapped)
	bad[len(bad)-1] ^= 1
	if _, err := a.Decrypt(ctx, a.KeyID(), bad, ec); !errors.Is(err, kms.ErrTampered) {
		t.Errorf("an altered wrapped key: got %v, want ErrTampered", err)
	}

	// Another key's data key: named by its id, or passed off under ours.
	_, wb, err := b.GenerateDataKey(ctx, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Decrypt(ctx, b.KeyID(), wb, ec); !errors.Is(err, kms.ErrWrongKey) || !strings.Contains(err.Error(), arnB) {
		t.Errorf("another key's id: got %v, want ErrWrongKey naming %s", err, arnB)
	}
	// Passed off under this key's id, AWS refuses to use another key than
	// the one named: IncorrectKeyException (ErrWrongKey) on AWS; moto 5.2
	// answers AccessDeniedException instead. Either way nothing unwraps.
	if got, err := a.Decrypt(ctx, a.KeyID(), wb, ec); !errors.Is(err, kms.ErrWrongKey) && !strings.Contains(fmt.Sprint(err), "AccessDeniedException") {
		t.Errorf("another key's wrapped key under this key's id: got %x, %v; want ErrWrongKey", got, err)
	}

	want := []string{"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"}
	if got := actions.List(); !slices.Equal(got, want) {
		t.Errorf("recorded AWS actions %v, want %v", got, want)
	}
	policy, err := os.ReadFile("../../deployments/aws/iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	if missing, err := awsx.NotAllowed(policy, actions.List()); err != nil || len(missing) > 0 {
		t.Errorf("deployments/aws/iam-policy.json does not allow %v, which AWS KMS for secrets called (%v)", missing, err)
	}
}

func TestOpenAWSRefusesAMissingOrDisabledKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := startMotoKMS(t)
	_, err := kms.OpenAWS(ctx, m.moto.Account(), "alias/no-such-key")
	if err == nil || !strings.Contains(err.Error(), "NotFoundException") || !strings.Contains(err.Error(), "alias/no-such-key") {
		t.Errorf("a missing key: got %v, want an error naming NotFoundException and the key", err)
	}
	arn := createKey(t, m)
	// moto's DisableKey answers 500 to an ARN: give the key id.
	if _, err := m.client.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(arn[strings.LastIndex(arn, "/")+1:])}); err != nil {
		t.Fatal(err)
	}
	if _, err := kms.OpenAWS(ctx, m.moto.Account(), arn); err == nil || !strings.Contains(err.Error(), "Disabled") {
		t.Errorf("a disabled key: got %v, want an error naming its state", err)
	}
	if _, err := kms.OpenAWS(ctx, m.moto.Account(), ""); err == nil || !strings.Contains(err.Error(), "keyId: is required") {
		t.Errorf("no key id: got %v", err)
	}
}

// TestKeyringUnwrapsWithThePreviousKey: after moving from the local key to
// AWS KMS, data keys the local key wrapped stay readable, and new ones are
// wrapped by AWS.
func TestKeyringUnwrapsWithThePreviousKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := startMotoKMS(t)
	local, _ := openNew(t)
	a, err := kms.OpenAWS(ctx, m.moto.Account(), createKey(t, m))
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"flotilla:instance-id": "i", "flotilla:secret-name": "n"}
	old, wrappedOld, err := local.GenerateDataKey(ctx, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	r := kms.NewKeyring(a, local)
	if r.KeyID() != a.KeyID() || !slices.Equal(r.KeyIDs(), []string{a.KeyID(), local.KeyID()}) {
		t.Fatalf("keyring ids %v", r.KeyIDs())
	}
	if got, err := r.Decrypt(ctx, local.KeyID(), wrappedOld, ec); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("decrypt under the previous key: %v", err)
	}
	w, err := r.Encrypt(ctx, old, ec)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Decrypt(ctx, a.KeyID(), w, ec); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("the keyring did not wrap with the current key: %v", err)
	}
	if _, err := r.Decrypt(ctx, "local:0000000000000000", wrappedOld, ec); !errors.Is(err, kms.ErrWrongKey) || !strings.Contains(err.Error(), local.KeyID()) {
		t.Fatalf("an unknown key id: got %v, want ErrWrongKey naming the keys held", err)
	}
}
