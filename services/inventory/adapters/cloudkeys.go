package adapters

import (
	"context"

	"flotilla.dev/flotilla/api/endpoints"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/libs/rpc"
)

// CloudKeys hands cloud accounts' secret keys to the secret broker over
// the bus (app.CloudKeys).
type CloudKeys struct{ Client *rpc.Client }

// Put stores or replaces the account's key.
func (k CloudKeys) Put(ctx context.Context, accountID, key string) error {
	_, err := rpc.Call(ctx, k.Client, endpoints.CloudKeyPut, &secretsv1.PutCloudKeyRequest{CloudAccountId: accountID, Value: key})
	return err
}

// Delete forgets the account's key; a missing key is not an error.
// accountDeleted says the account goes too, which the broker refuses for
// the account its KMS key is reached through.
func (k CloudKeys) Delete(ctx context.Context, accountID string, accountDeleted bool) error {
	_, err := rpc.Call(ctx, k.Client, endpoints.CloudKeyDelete, &secretsv1.DeleteCloudKeyRequest{CloudAccountId: accountID, AccountDeleted: accountDeleted})
	return err
}

// CheckChange asks whether where the account reaches its cloud may change
// (fields: "aws.region", "aws.endpointUrl"); the broker refuses it for
// the account its KMS key is reached through.
func (k CloudKeys) CheckChange(ctx context.Context, accountID string, fields []string) error {
	_, err := rpc.Call(ctx, k.Client, endpoints.CloudKeyCheckChange, &secretsv1.CheckCloudAccountChangeRequest{CloudAccountId: accountID, Fields: fields})
	return err
}
