package provisioner

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/cloudaccount"
)

// busAccounts resolves cloud accounts over the bus (cloudaccount.Resolver)
// for the drivers and verifies them.
type busAccounts struct{ r cloudaccount.Resolver }

// Account is the AWS account network n launches its instances with.
func (b busAccounts) Account(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error) {
	return b.r.OfNetwork(ctx, n)
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
	_, a, err := b.r.Get(ctx, id)
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
