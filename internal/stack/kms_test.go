package stack_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/secrets"
)

// TestEnvConfigChoosesTheKMS: FLOTILLA_KMS_PROVIDER picks the local key
// (the default) or an AWS key, and each broken rule names its variable.
func TestEnvConfigChoosesTheKMS(t *testing.T) {
	t.Parallel()
	base := map[string]string{"FLOTILLA_NATS_CREDS": "/x.creds", "FLOTILLA_DATABASE_URL": "postgres://db/flotilla"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	load := func(environ map[string]string) stack.EnvConfig {
		t.Helper()
		ec, err := stack.LoadEnvConfig(subjects.Secrets, environ, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ec
	}

	ec := load(with("FLOTILLA_KMS_KEY_FILE", "/k"))
	if err := ec.ValidateSettings(subjects.Secrets); err != nil {
		t.Fatalf("the local key: %v", err)
	}
	if cfg := ec.Config(subjects.Secrets); cfg.KMSAWS != nil || cfg.KMSKeyFile != "/k" || ec.KMSProvider != "local" {
		t.Fatalf("the default provider is not local: %+v", cfg.KMSAWS)
	}

	ec = load(with("FLOTILLA_KMS_PROVIDER", "aws", "FLOTILLA_KMS_AWS_KEY_ID", "alias/flotilla", "FLOTILLA_KMS_AWS_REGION", "eu-west-1",
		"FLOTILLA_KMS_AWS_ENDPOINT_URL", "https://kms.internal:443", "FLOTILLA_KMS_AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/flotilla",
		"FLOTILLA_KMS_KEY_FILE", "/previous.key"))
	if err := ec.ValidateSettings(subjects.Secrets); err != nil {
		t.Fatalf("an AWS key: %v", err)
	}
	cfg := ec.Config(subjects.Secrets)
	want := stack.AWSKMS{KeyID: "alias/flotilla", Account: awsx.Account{Region: "eu-west-1", EndpointURL: "https://kms.internal:443",
		RoleARN: "arn:aws:iam::123456789012:role/flotilla"}}
	if cfg.KMSAWS == nil || *cfg.KMSAWS != want || cfg.KMSKeyFile != "/previous.key" {
		t.Fatalf("the AWS key is not passed on: %+v, previous %q", cfg.KMSAWS, cfg.KMSKeyFile)
	}
	if err := ec.ValidateSettings(subjects.Secrets); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		env  map[string]string
		want []string
	}{
		{with(), []string{"FLOTILLA_KMS_KEY_FILE: is required"}},
		{with("FLOTILLA_KMS_PROVIDER", "vault"), []string{`FLOTILLA_KMS_PROVIDER: "vault" is not local or aws`}},
		{with("FLOTILLA_KMS_PROVIDER", "aws"), []string{"FLOTILLA_KMS_AWS_KEY_ID: is required", "FLOTILLA_KMS_AWS_REGION: is required"}},
		{with("FLOTILLA_KMS_PROVIDER", "aws", "FLOTILLA_KMS_AWS_KEY_ID", "k", "FLOTILLA_KMS_AWS_REGION", "eu-west-1",
			"FLOTILLA_KMS_AWS_ENDPOINT_URL", "kms.internal", "FLOTILLA_KMS_AWS_ROLE_ARN", "flotilla"),
			[]string{`FLOTILLA_KMS_AWS_ENDPOINT_URL: "kms.internal" is not an http`, `FLOTILLA_KMS_AWS_ROLE_ARN: "flotilla" is not a role ARN`}},
		{with("FLOTILLA_KMS_KEY_FILE", "/k", "FLOTILLA_KMS_AWS_KEY_ID", "k"), []string{"FLOTILLA_KMS_AWS_KEY_ID: is set, but FLOTILLA_KMS_PROVIDER is local"}},
	} {
		err := load(c.env).ValidateSettings(subjects.Secrets)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("settings %v: error %v does not say %q", c.env, err, w)
			}
		}
	}

	// The stack's own configuration names its fields too.
	err := (&stack.Config{Services: []string{subjects.Secrets}, NATSURL: "nats://x", NATSCreds: map[string]string{subjects.Secrets: "x"},
		DatabaseURL: "postgres://db", KMSAWS: &stack.AWSKMS{}}).Validate()
	for _, w := range []string{"stack.Config.KMSAWS.KeyID: is required", "stack.Config.KMSAWS.Account: region: is required"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v does not say %q", err, w)
		}
	}
}

// TestOpenKMSKeepsThePreviousLocalKey: with an AWS key, the local master
// key (when there is one) still unwraps what it wrapped; a missing one is
// an error unless the stack may create keys (flotilla up had none).
func TestOpenKMSKeepsThePreviousLocalKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
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
	keyFile := filepath.Join(t.TempDir(), "keys", "master.key")
	local, err := kms.OpenLocal(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ec := kms.EncryptionContext{"flotilla:instance-id": "i", "flotilla:secret-name": "n"}
	dataKey, wrapped, err := local.GenerateDataKey(ctx, 32, ec)
	if err != nil {
		t.Fatal(err)
	}

	cfg := stack.Config{KMSKeyFile: keyFile, KMSAWS: &stack.AWSKMS{Account: m.Account(), KeyID: arn}}
	k, err := cfg.OpenKMS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyID() != arn {
		t.Fatalf("wraps under %s, want %s", k.KeyID(), arn)
	}
	if got, err := k.Decrypt(ctx, local.KeyID(), wrapped, ec); err != nil || string(got) != string(dataKey) {
		t.Fatalf("the previous local key does not unwrap: %v", err)
	}

	cfg.KMSKeyFile = filepath.Join(t.TempDir(), "none.key")
	if _, err := cfg.OpenKMS(ctx); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "previous local master key") {
		t.Fatalf("a missing previous key: got %v", err)
	}
	cfg.CreateKMSKey = true
	k, err = cfg.OpenKMS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids := k.(*kms.Keyring).KeyIDs(); !slices.Equal(ids, []string{arn}) {
		t.Fatalf("keys held %v, want the AWS key alone", ids)
	}
	if _, err := os.Stat(cfg.KMSKeyFile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a local key was created beside the AWS key: %v", err)
	}

	// flotilla up's settings choose the same.
	s := &datadir.Settings{KMS: &datadir.KMSSettings{Provider: "aws", KeyID: arn, Region: testkit.MotoRegion, EndpointURL: m.URL}}
	ecfg := stack.EmbeddedKMSConfig(s, datadir.Dir("/data"))
	if ecfg.KMSAWS == nil || ecfg.KMSAWS.KeyID != arn || ecfg.KMSAWS.Account.EndpointURL != m.URL || ecfg.KMSKeyFile != "/data/keys/master.key" {
		t.Fatalf("settings kms not passed on: %+v", ecfg)
	}
	if ecfg := stack.EmbeddedKMSConfig(&datadir.Settings{}, datadir.Dir("/data")); ecfg.KMSAWS != nil {
		t.Fatal("no kms settings chose AWS")
	}
}

// TestKMSOfACloudAccount: kms.cloudAccountId (FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID)
// takes the AWS key's region, endpoint and role from a cloud account. An
// account with static keys is refused, naming the setting: the broker
// keeps those keys sealed under this very KMS key. With an account of the
// host's credentials, rewrap-secrets moves every data key under the AWS
// key, and the stack's broker then unwraps with it: the provisioner reads
// the static-key account's sealed key to verify it.
func TestKMSOfACloudAccount(t *testing.T) {
	// The host's credentials (moto accepts any): the environment's.
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	ctx := t.Context()
	m := testkit.StartMoto(t)
	sdk, err := awsx.Config(ctx, m.Account())
	must(t, err)
	out, err := awskms.NewFromConfig(sdk).CreateKey(ctx, &awskms.CreateKeyInput{KeyUsage: types.KeyUsageTypeEncryptDecrypt, KeySpec: types.KeySpecSymmetricDefault})
	must(t, err)
	arn := aws.ToString(out.KeyMetadata.Arn)

	bus := testkit.SecureNATS(t)
	db := testkit.NewDatabase(t)
	keyFile := filepath.Join(t.TempDir(), "keys", "master.key")
	st := stacktest.Start(t, stacktest.OnBus(stack.Config{DatabaseURL: db, KMSKeyFile: keyFile, CreateKMSKey: true}, bus))
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	account := func(name string, creds *inventoryv1.AwsCredentials) string {
		t.Helper()
		acc, err := rpc.Call(ctx, gateway, endpoints.CloudAccountCreate, &inventoryv1.CreateCloudAccountRequest{CloudAccount: &inventoryv1.CloudAccount{
			Name: name, Provider: "aws", Aws: &inventoryv1.AwsAccountSettings{Region: testkit.MotoRegion, EndpointUrl: m.URL, Credentials: creds}}}, admin)
		must(t, err)
		return acc.GetId()
	}
	hostCreds := account("kms-home", nil)
	withKeys := account("with-keys", &inventoryv1.AwsCredentials{AccessKeyId: "AKIAEXAMPLEKEY0001", SecretAccessKey: "sealed-under-the-kms"})
	stacktest.Stop(t, st)

	env := func(acc string) map[string]string {
		return map[string]string{"FLOTILLA_DATABASE_URL": db, "FLOTILLA_KMS_PROVIDER": "aws", "FLOTILLA_KMS_AWS_KEY_ID": arn,
			"FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID": acc, "FLOTILLA_KMS_KEY_FILE": keyFile}
	}
	_, _, err = stack.RewrapSecretsFromEnv(ctx, env(withKeys), secrets.RewrapOptions{})
	if err == nil || !strings.Contains(err.Error(), "kms.cloudAccountId: ") || !strings.Contains(err.Error(), "static keys") {
		t.Fatalf("KMS of an account with static keys: %v; want refused naming kms.cloudAccountId", err)
	}
	rep, keyID, err := stack.RewrapSecretsFromEnv(ctx, env(hostCreds), secrets.RewrapOptions{})
	must(t, err)
	if keyID != arn || rep.Rewrapped < 1 || rep.Remaining != 0 {
		t.Fatalf("rewrap under the account's key: %+v under %s; want the sealed cloud key under %s", rep, keyID, arn)
	}

	stacktest.Start(t, stacktest.OnBus(stack.Config{DatabaseURL: db, KMSAWS: &stack.AWSKMS{KeyID: arn, CloudAccountID: hostCreds}}, bus))
	v, err := rpc.Call(ctx, gateway, endpoints.CloudAccountVerify, &inventoryv1.VerifyCloudAccountRequest{Id: withKeys}, admin)
	must(t, err)
	if !v.GetOk() {
		t.Errorf("verify with the key unwrapped by the account's KMS key: %q", v.GetMessage())
	}

	// The account the KMS key is reached through cannot be deleted: no
	// secret could be opened without it. Another can.
	_, err = rpc.Call(ctx, gateway, endpoints.CloudAccountDelete, &inventoryv1.DeleteCloudAccountRequest{Id: hostCreds}, admin)
	if apierr.ReasonOf(err) != apierr.ReasonInUse || !strings.Contains(err.Error(), "kms.cloudAccountId") {
		t.Fatalf("delete the KMS key's account: %v; want in_use naming kms.cloudAccountId", err)
	}
	if _, err := rpc.Call(ctx, gateway, endpoints.CloudAccountGet, &inventoryv1.GetCloudAccountRequest{Id: hostCreds}, admin); err != nil {
		t.Fatalf("the refused account: %v", err)
	}
	// Nor can its region or endpoint change (the key is there); its name can,
	// and another account's endpoint can.
	kmsHome, err := rpc.Call(ctx, gateway, endpoints.CloudAccountGet, &inventoryv1.GetCloudAccountRequest{Id: hostCreds}, admin)
	must(t, err)
	for _, tc := range []struct {
		aws  *inventoryv1.AwsAccountSettings
		mask string
		says string
	}{
		{&inventoryv1.AwsAccountSettings{Region: "us-east-1"}, "aws.region", "its aws.region cannot change"},
		{&inventoryv1.AwsAccountSettings{EndpointUrl: "http://127.0.0.1:1"}, "aws.endpointUrl", "its aws.endpointUrl cannot change"},
	} {
		_, err := rpc.Call(ctx, gateway, endpoints.CloudAccountUpdate, &inventoryv1.UpdateCloudAccountRequest{
			CloudAccount: &inventoryv1.CloudAccount{Id: hostCreds, Version: kmsHome.GetVersion(), Aws: tc.aws}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{tc.mask}}}, admin)
		if apierr.ReasonOf(err) != apierr.ReasonInUse || !strings.Contains(err.Error(), "kms.cloudAccountId") || !strings.Contains(err.Error(), tc.says) {
			t.Fatalf("change %s of the KMS key's account: %v; want in_use naming kms.cloudAccountId and saying %q", tc.mask, err, tc.says)
		}
	}
	if _, err := rpc.Call(ctx, gateway, endpoints.CloudAccountUpdate, &inventoryv1.UpdateCloudAccountRequest{
		CloudAccount: &inventoryv1.CloudAccount{Id: hostCreds, Version: kmsHome.GetVersion(), Name: "kms-home-2"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, admin); err != nil {
		t.Fatalf("rename the KMS key's account: %v", err)
	}
	other, err := rpc.Call(ctx, gateway, endpoints.CloudAccountGet, &inventoryv1.GetCloudAccountRequest{Id: withKeys}, admin)
	must(t, err)
	if _, err := rpc.Call(ctx, gateway, endpoints.CloudAccountUpdate, &inventoryv1.UpdateCloudAccountRequest{
		CloudAccount: &inventoryv1.CloudAccount{Id: withKeys, Version: other.GetVersion(), Aws: &inventoryv1.AwsAccountSettings{EndpointUrl: "http://127.0.0.1:1"}},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"aws.endpointUrl"}}}, admin); err != nil {
		t.Fatalf("move another account's endpoint: %v", err)
	}
	// Forgetting its key (none kept), as an update of the account does,
	// is no deletion of the account: not refused.
	inventory := rpc.NewClient(bus.Conn(t, subjects.Inventory), subjects.Inventory, 10*time.Second)
	if _, err := rpc.Call(ctx, inventory, endpoints.CloudKeyDelete, &secretsv1.DeleteCloudKeyRequest{CloudAccountId: hostCreds}); err != nil {
		t.Fatalf("forget the KMS key's account's key: %v", err)
	}
	if _, err := rpc.Call(ctx, gateway, endpoints.CloudAccountDelete, &inventoryv1.DeleteCloudAccountRequest{Id: withKeys}, admin); err != nil {
		t.Fatalf("delete another account: %v", err)
	}
}
