package app

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/domain"
)

// CloudKeys keeps cloud accounts' secret keys: the secret broker. The
// inventory hands a key over inside the transaction that writes the
// account (a refusal undoes the write) and never stores or emits it.
type CloudKeys interface {
	Put(ctx context.Context, accountID, key string) error
	// Delete forgets the account's key; accountDeleted says the account
	// goes too (refused for the account the secret brokers' KMS key is
	// reached through).
	Delete(ctx context.Context, accountID string, accountDeleted bool) error
	// CheckChange says whether where the account reaches its cloud may
	// change (fields: "aws.region", "aws.endpointUrl"): refused for the
	// account the secret brokers' KMS key is reached through.
	CheckChange(ctx context.Context, accountID string, fields []string) error
}

// WithCloudKeys sets where cloud accounts' secret keys go. Without it an
// account with a secret key is refused.
func WithCloudKeys(k CloudKeys) Option { return func(a *App) { a.cloudKeys = k } }

// CloudAccountTable holds cloud accounts, never their secret keys.
var CloudAccountTable = adapters.Table{Name: "cloud_accounts", Noun: subjects.NounCloudAccount, Words: "cloud account"}

var cloudAccounts = kind[*inventoryv1.CloudAccount]{
	table: CloudAccountTable,
	new:   func() *inventoryv1.CloudAccount { return &inventoryv1.CloudAccount{} },
	beforeDelete: func(ctx context.Context, tx pgx.Tx, old *inventoryv1.CloudAccount) error {
		rows, err := tx.Query(ctx, "SELECT name FROM networks WHERE spec->>'cloudAccountId' = $1 ORDER BY name LIMIT 6", old.GetId())
		if err != nil {
			return fmt.Errorf("find networks of cloud account: %w", err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("find networks of cloud account: %w", err)
		}
		if len(names) > 0 {
			return apierr.Conflict(apierr.ReasonInUse, "cloud account %q is used by networks %s", old.GetName(), strings.Join(names, ", "))
		}
		return nil
	},
}

// takeKey removes the secret key from a (never stored, never emitted)
// and returns it.
func takeKey(a *inventoryv1.CloudAccount) string {
	c := a.GetAws().GetCredentials()
	key := c.GetSecretAccessKey()
	if c != nil {
		c.SecretAccessKey = ""
	}
	return key
}

// accountKind is cloudAccounts for one write: it checks the account
// knowing whether a secret key is given (key) or kept, and hands a given
// key to the secret broker once the row is written; an account that no
// longer uses keys has its key forgotten.
func (a *App) accountKind(key string) kind[*inventoryv1.CloudAccount] {
	k := cloudAccounts
	k.check = func(ctx context.Context, _ *App, tx pgx.Tx, old, v *inventoryv1.CloudAccount) error {
		c := v.GetAws().GetCredentials()
		kept := old.GetAws().GetCredentials().GetSecretAccessKeySet() && c.GetAccessKeyId() == old.GetAws().GetCredentials().GetAccessKeyId()
		if err := domain.ValidateCloudAccount(withKey(v, key), key != "" || kept); err != nil {
			return err
		}
		if old != nil && old.GetAws().GetRegion() != v.GetAws().GetRegion() {
			// The region holds the VMs and disks of the instances on the
			// account's networks: another would lose them.
			if err := usedWhere(ctx, tx, "cloud account", old.GetName(),
				"network_id IN (SELECT id FROM networks WHERE spec->>'cloudAccountId' = $1)", old.GetId(),
				"aws.region can change only while no instance is on a network of the account: their VMs and disks are in its region; create another account for another region"); err != nil {
				return err
			}
		}
		if moved := movedFields(old, v); len(moved) > 0 && a.cloudKeys != nil {
			if err := a.cloudKeys.CheckChange(ctx, old.GetId(), moved); err != nil {
				return err
			}
		}
		if c != nil {
			c.SecretAccessKeySet = c.GetAccessKeyId() != "" && (key != "" || kept)
		}
		if key != "" && a.cloudKeys == nil {
			return apierr.Unavailable("the secret broker is not configured: a cloud account's secret key cannot be kept")
		}
		return nil
	}
	if key != "" {
		k.stored = func(ctx context.Context, v *inventoryv1.CloudAccount) error {
			if err := a.cloudKeys.Put(ctx, v.GetId(), key); err != nil {
				return fmt.Errorf("keep the secret key of cloud account %q: %w", v.GetName(), err)
			}
			return nil
		}
	}
	return k
}

// movedFields names what changes, from old to v, of where an account
// reaches its cloud: its region, its endpoint (none for a new account).
func movedFields(old, v *inventoryv1.CloudAccount) []string {
	if old == nil {
		return nil
	}
	var moved []string
	if old.GetAws().GetRegion() != v.GetAws().GetRegion() {
		moved = append(moved, "aws.region")
	}
	if old.GetAws().GetEndpointUrl() != v.GetAws().GetEndpointUrl() {
		moved = append(moved, "aws.endpointUrl")
	}
	return moved
}

// withKey is v as the rules see it: with the key given.
func withKey(v *inventoryv1.CloudAccount, key string) *inventoryv1.CloudAccount {
	if key == "" {
		return v
	}
	c := proto.Clone(v).(*inventoryv1.CloudAccount)
	c.GetAws().GetCredentials().SecretAccessKey = key
	return c
}

// CreateCloudAccount creates a cloud account; its secret key goes to the
// secret broker in the same transaction.
func (a *App) CreateCloudAccount(ctx context.Context, actor vocab.Actor, acc *inventoryv1.CloudAccount) (*inventoryv1.CloudAccount, error) {
	acc = proto.Clone(acc).(*inventoryv1.CloudAccount)
	key := takeKey(acc)
	return create(ctx, a, a.accountKind(key), actor, acc)
}

// GetCloudAccount reads a cloud account.
func (a *App) GetCloudAccount(ctx context.Context, id string) (*inventoryv1.CloudAccount, error) {
	return get(ctx, a, cloudAccounts, id)
}

// ListCloudAccounts lists cloud accounts, oldest first.
func (a *App) ListCloudAccounts(ctx context.Context, pageSize int32, pageToken string) ([]*inventoryv1.CloudAccount, string, error) {
	return list(ctx, a, cloudAccounts, adapters.ListQuery{}, pageSize, pageToken)
}

// UpdateCloudAccount changes the masked fields of a cloud account at its
// version. A new secret key replaces the kept one; an account left without
// an access key id has its kept key forgotten.
func (a *App) UpdateCloudAccount(ctx context.Context, actor vocab.Actor, acc *inventoryv1.CloudAccount, mask []string) (*inventoryv1.CloudAccount, error) {
	acc = proto.Clone(acc).(*inventoryv1.CloudAccount)
	key := takeKey(acc)
	for i, p := range mask { // the key is not a stored field: it arrives through stored
		if p == "aws.credentials.secretAccessKey" || p == "aws.credentials.secret_access_key" {
			mask = append(mask[:i:i], mask[i+1:]...)
			break
		}
	}
	out, err := update(ctx, a, a.accountKind(key), actor, acc, mask)
	if err != nil {
		return nil, err
	}
	if out.GetAws().GetCredentials().GetAccessKeyId() == "" && a.cloudKeys != nil {
		// Keys no longer used: forget any kept (idempotent).
		if err := a.cloudKeys.Delete(ctx, out.GetId(), false); err != nil {
			a.log.WarnContext(ctx, "forget the secret key of a cloud account that no longer uses one", "cloudAccount", out.GetId(), "error", err)
		}
	}
	return out, nil
}

// DeleteCloudAccount deletes a cloud account no network uses; its secret
// key is forgotten in the same transaction. The secret broker is asked
// for every account, with a key or not: it refuses the one its KMS key is
// reached through, and the account stays.
func (a *App) DeleteCloudAccount(ctx context.Context, actor vocab.Actor, id string, version int64) error {
	k := cloudAccounts
	inner := k.beforeDelete
	k.beforeDelete = func(ctx context.Context, tx pgx.Tx, old *inventoryv1.CloudAccount) error {
		if err := inner(ctx, tx, old); err != nil {
			return err
		}
		if a.cloudKeys == nil {
			if old.GetAws().GetCredentials().GetSecretAccessKeySet() {
				return errors.New("the secret broker is not configured: the account's secret key cannot be forgotten")
			}
			return nil
		}
		return a.cloudKeys.Delete(ctx, old.GetId(), true)
	}
	return remove(ctx, a, k, actor, id, version)
}

// checkCloudAccount says whether a network may use the cloud account id.
func checkCloudAccount(ctx context.Context, tx pgx.Tx, n *inventoryv1.Network) error {
	id := n.GetCloudAccountId()
	if id == "" {
		return nil
	}
	acc := &inventoryv1.CloudAccount{}
	if err := CloudAccountTable.Get(ctx, tx, id, adapters.ForShare, acc); err != nil {
		if apierr.Is(err, apierr.KindNotFound) || apierr.Is(err, apierr.KindInvalid) {
			return apierr.Invalid("cloudAccountId", "cloud account %q does not exist", id)
		}
		return err
	}
	if acc.GetProvider() != n.GetProvider() {
		return apierr.Invalid("cloudAccountId", "cloud account %q is of provider %q, not %q", acc.GetName(), acc.GetProvider(), n.GetProvider())
	}
	return nil
}
