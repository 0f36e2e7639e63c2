package stack_test

import (
	"context"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/rpc"
)

// TestSecretsReadFromAWSSecretsManager: an instance's secret and a fleet
// secret that name an AWS Secrets Manager secret instead of a value are
// read there at each read, in the cloud account of the instance's network
// (its key kept by the secret broker): a value rotated there is what the
// next read gets, the metadata names the secret and holds no key, and a
// secret gone from Secrets Manager is refused with AWS's reason.
func TestSecretsReadFromAWSSecretsManager(t *testing.T) {
	t.Parallel()
	lab := newAWSLab(t, stack.Config{}, false)
	ctx := t.Context()
	cfg, err := awsx.Config(ctx, lab.moto.Account())
	must(t, err)
	sm := secretsmanager.NewFromConfig(cfg)
	for name, value := range map[string]string{"prod/db": "db-1", "prod/registry": "registry-1"} {
		_, err := sm.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: awssdk.String(name), SecretString: awssdk.String(value)})
		must(t, err)
	}
	id := lab.createInstance(t)
	in, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, lab.admin)
	must(t, err)

	own, err := rpc.Call(ctx, lab.gateway, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: id, Name: "db-password", SecretsManagerId: "prod/db"}, lab.admin)
	must(t, err)
	if own.GetSecretsManagerId() != "prod/db" || own.GetKmsKeyId() != "" || own.GetVersion() != 1 {
		t.Fatalf("the reference's metadata: %v", own)
	}
	fleet, err := rpc.Call(ctx, lab.gateway, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry-token",
		SecretsManagerId: "prod/registry", TemplateIds: []string{in.GetTemplateId()}}, lab.admin)
	must(t, err)
	if fleet.GetSecretsManagerId() != "prod/registry" || fleet.GetKmsKeyId() != "" {
		t.Fatalf("the fleet reference's metadata: %v", fleet)
	}

	// The agent gateway reads for the instance's agent.
	agentgw := rpc.NewClient(lab.bus.Conn(t, subjects.AgentGW), subjects.AgentGW, 30*time.Second)
	read := func(name string) (string, error) {
		got, err := rpc.Call(ctx, agentgw, endpoints.SecretRead, &secretsv1.ReadSecretRequest{RequesterInstanceId: id, Name: name}, rpc.As(vocab.Agent(id)))
		return string(got.GetValue()), err
	}
	expect := func(name, want string) {
		t.Helper()
		if got, err := read(name); err != nil || got != want {
			t.Fatalf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
	expect("db-password", "db-1")
	expect("registry-token", "registry-1")

	// Rotated in Secrets Manager: the next read has the new value.
	_, err = sm.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: awssdk.String("prod/db"), SecretString: awssdk.String("db-2")})
	must(t, err)
	expect("db-password", "db-2")

	// Gone from Secrets Manager: refused, with AWS's reason.
	_, err = sm.DeleteSecret(context.Background(), &secretsmanager.DeleteSecretInput{SecretId: awssdk.String("prod/registry"), ForceDeleteWithoutRecovery: awssdk.Bool(true)})
	must(t, err)
	_, err = read("registry-token")
	if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), `secret "registry-token" is read from AWS Secrets Manager "prod/registry" in the cloud account of network "vpc-a": ResourceNotFoundException`) {
		t.Fatalf("a secret gone from Secrets Manager: %v", err)
	}
}
