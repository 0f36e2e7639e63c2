package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/rpc"
)

// busAccounts resolves cloud accounts over the bus: the account from the
// inventory, its secret key from the secret broker (released to the
// provisioner alone). The key lives only in memory, in the SDK
// configuration built from it.
type busAccounts struct{ c *rpc.Client }

// account is the AWS account with id.
func (b busAccounts) account(ctx context.Context, id string) (*inventoryv1.CloudAccount, awsx.Account, error) {
	acc, err := rpc.Call(ctx, b.c, endpoints.CloudAccountGet, &inventoryv1.GetCloudAccountRequest{Id: id})
	if err != nil {
		return nil, awsx.Account{}, err
	}
	if acc.GetProvider() != string(vocab.ProviderAWS) {
		return acc, awsx.Account{}, fmt.Errorf("cloud account %q is of provider %q, not %q", acc.GetName(), acc.GetProvider(), vocab.ProviderAWS)
	}
	s, c := acc.GetAws(), acc.GetAws().GetCredentials()
	out := awsx.Account{Region: s.GetRegion(), EndpointURL: s.GetEndpointUrl(), AccessKeyID: c.GetAccessKeyId(),
		RoleARN: c.GetRoleArn(), ExternalID: c.GetExternalId()}
	if c.GetSecretAccessKeySet() {
		key, err := rpc.Call(ctx, b.c, endpoints.CloudKeyRead, &secretsv1.ReadCloudKeyRequest{CloudAccountId: id})
		if err != nil {
			return acc, awsx.Account{}, fmt.Errorf("the secret key of cloud account %q: %w", acc.GetName(), err)
		}
		out.SecretAccessKey = key.GetValue()
	}
	return acc, out, nil
}

// Account is the AWS account network n launches its instances with.
func (b busAccounts) Account(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error) {
	if n.GetCloudAccountId() == "" {
		return awsx.Account{}, fmt.Errorf("network %q names no cloud account (cloudAccountId)", n.GetName())
	}
	_, a, err := b.account(ctx, n.GetCloudAccountId())
	return a, err
}

// verifyTimeout bounds the sign-in and the question a verification asks.
const verifyTimeout = 30 * time.Second

// verify signs in with the account's credentials and asks AWS who they
// are (STS GetCallerIdentity). A refusal is an answer (ok false, the AWS
// error code named), not an error.
func (b busAccounts) verify(ctx context.Context, id string) (*inventoryv1.CloudAccountVerification, error) {
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	_, a, err := b.account(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &inventoryv1.CloudAccountVerification{CloudAccountId: id, CheckTime: timestamppb.Now()}
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	cfg, err := awsx.Config(ctx, a)
	if err != nil {
		out.Message = err.Error()
		return out, nil
	}
	who, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		out.Message = awsx.Reason(err)
		return out, nil
	}
	out.Ok, out.Account, out.Identity = true, aws.ToString(who.Account), aws.ToString(who.Arn)
	return out, nil
}
