// Package cloudaccount resolves a cloud account over the bus into what an
// AWS client needs (awsx.Account): the account from the inventory, its
// secret key, if it keeps one, from the secret broker. Only the services
// that call clouds may (the provisioner; the CA, for certificate keys in
// AWS Secrets Manager; the secret broker itself, for secrets there); the
// key lives only in memory.
package cloudaccount

import (
	"context"
	"fmt"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/rpc"
)

// Resolver reads cloud accounts as its client's service. Key, when set,
// reads an account's secret key instead of the secret broker's
// cloudkey.read (the broker's own).
type Resolver struct {
	Client *rpc.Client
	Key    func(ctx context.Context, accountID string) (string, error)
}

// Get is the account with id, and how to reach it with AWS.
func (r Resolver) Get(ctx context.Context, id string) (*inventoryv1.CloudAccount, awsx.Account, error) {
	acc, err := rpc.Call(ctx, r.Client, endpoints.CloudAccountGet, &inventoryv1.GetCloudAccountRequest{Id: id})
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
		read := r.Key
		if read == nil {
			read = func(ctx context.Context, id string) (string, error) {
				key, err := rpc.Call(ctx, r.Client, endpoints.CloudKeyRead, &secretsv1.ReadCloudKeyRequest{CloudAccountId: id})
				return key.GetValue(), err
			}
		}
		key, err := read(ctx, id)
		if err != nil {
			return acc, awsx.Account{}, fmt.Errorf("the secret key of cloud account %q: %w", acc.GetName(), err)
		}
		out.SecretAccessKey = key
	}
	return acc, out, nil
}

// OfNetwork is the AWS account network n names (cloudAccountId).
func (r Resolver) OfNetwork(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error) {
	if n.GetCloudAccountId() == "" {
		return awsx.Account{}, fmt.Errorf("network %q names no cloud account (cloudAccountId)", n.GetName())
	}
	_, a, err := r.Get(ctx, n.GetCloudAccountId())
	return a, err
}
