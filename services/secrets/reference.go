package secrets

import (
	"context"
	"fmt"
	"regexp"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/cloudaccount"
	"flotilla.dev/flotilla/libs/rpc"
)

// A secret (an instance's or a fleet secret) may be a reference to an AWS
// Secrets Manager secret instead of a value kept here: the broker reads
// it at each read, in the cloud account of the reading instance's
// network, so a value rotated there is what the next read (a setup, a
// node start, a refreshed configuration) gets. Nothing of it is stored.

// refRE is the rule of a Secrets Manager secret's name or ARN.
var refRE = regexp.MustCompile(`^[A-Za-z0-9/_+=.@:!-]+$`)

// valueOrReference checks that exactly one of a secret's value and
// reference is given (or, when neither may be, none), and the reference's
// form.
func valueOrReference(value, ref string, neither bool) error {
	switch {
	case value != "" && ref != "":
		return apierr.Invalid("secretsManagerId", "give a value or an AWS Secrets Manager secret to read it from, not both")
	case value == "" && ref == "" && !neither:
		return apierr.Invalid("value", "is required (or secretsManagerId, an AWS Secrets Manager secret to read it from)")
	case ref != "" && (len(ref) > 2048 || !refRE.MatchString(ref)):
		return apierr.Invalid("secretsManagerId", "%q is not an AWS Secrets Manager secret's name or ARN (1-2048 letters, digits and /_+=.@:!-)", ref)
	case len(value) > MaxValueSize:
		return apierr.Invalid("value", "must be at most %d bytes (64 KiB), got %d bytes", MaxValueSize, len(value))
	}
	return nil
}

// readReference reads the secret name's value from the AWS Secrets
// Manager secret ref, in the cloud account of in's network. Its errors
// say why, with AWS's error code, never a value.
func (s *Service) readReference(ctx context.Context, in *inventoryv1.Instance, name, ref string) ([]byte, error) {
	n, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: in.GetNetworkId()}, rpc.Timeout(inventoryTimeout))
	if err != nil {
		return nil, fmt.Errorf("secret %q: the network of instance %q: %w", name, in.GetName(), err)
	}
	refused := func(format string, args ...any) error {
		return apierr.Conflict(apierr.ReasonInvalidState, "secret %q is read from AWS Secrets Manager %q in the cloud account of network %q: %s",
			name, ref, n.GetName(), fmt.Sprintf(format, args...))
	}
	acct, err := cloudaccount.Resolver{Client: s.bus, Key: s.ownCloudKey}.OfNetwork(ctx, n)
	if err != nil {
		return nil, refused("%v", err)
	}
	cfg, err := awsx.Config(ctx, acct)
	if err != nil {
		return nil, refused("%v", err)
	}
	out, err := secretsmanager.NewFromConfig(cfg).GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref)})
	if err != nil {
		return nil, refused("%s", awsx.Reason(err))
	}
	v := []byte(aws.ToString(out.SecretString))
	if len(v) == 0 {
		v = out.SecretBinary
	}
	switch {
	case len(v) == 0:
		return nil, refused("the secret holds no value")
	case len(v) > MaxValueSize:
		clear(v)
		return nil, refused("its value is %d bytes, more than a secret may be (64 KiB)", len(v))
	}
	return v, nil
}

// ownCloudKey is a cloud account's secret key as the broker keeps it, for
// its own reads of AWS Secrets Manager (audited as any read of it).
func (s *Service) ownCloudKey(ctx context.Context, accountID string) (string, error) {
	key, err := s.readCloudKey(ctx, vocab.System(subjects.Secrets), &secretsv1.ReadCloudKeyRequest{CloudAccountId: accountID})
	return key.GetValue(), err
}
