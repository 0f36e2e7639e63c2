package secrets

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// cloudKeyAuditName is the name a read of a cloud account's secret key has
// in its audit record.
const cloudKeyAuditName = "cloud-account-secret-key"

// MaxCloudKeySize bounds a cloud account's secret key, in bytes.
const MaxCloudKeySize = 4096

// cloudKeyBinding binds a stored cloud key's ciphertext to its account
// and version, its data key to its account.
func cloudKeyBinding(accountID string, version int64) binding {
	aad := append([]byte("flotilla cloud key v1\x00"), accountID...)
	aad = append(aad, 0)
	return binding{aad: binary.BigEndian.AppendUint64(aad, uint64(version)), ec: cloudKeyContext(accountID)}
}

// putCloudKey seals a cloud account's secret key, replacing the one kept
// (the next version). The inventory calls it inside the transaction that
// writes the account. Nothing of the key is logged.
func (s *Service) putCloudKey(ctx context.Context, _ vocab.Actor, r *secretsv1.PutCloudKeyRequest) (*secretsv1.PutCloudKeyResponse, error) {
	id, err := parseID("cloudAccountId", "a cloud account id", r.GetCloudAccountId())
	if err != nil {
		return nil, err
	}
	value := []byte(r.GetValue())
	defer clear(value)
	if len(value) == 0 {
		return nil, apierr.Invalid("value", "is required")
	}
	if len(value) > MaxCloudKeySize {
		return nil, apierr.Invalid("value", "must be at most %d bytes", MaxCloudKeySize)
	}
	var version int64
	var kmsKeyID string
	err = s.store.inTurn(ctx, cloudKeyLock(id), func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT version FROM cloud_keys WHERE cloud_account_id = $1`, id).Scan(&version)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read the key of cloud account %s: %w", id, err)
		}
		version++
		sl, err := seal(ctx, s.kms, value, cloudKeyBinding(id, version))
		if err != nil {
			return fmt.Errorf("seal the key of cloud account %s: %w", id, err)
		}
		kmsKeyID = sl.kmsKeyID
		now := s.now().UTC().Truncate(time.Microsecond)
		_, err = tx.Exec(ctx, `
			INSERT INTO cloud_keys AS k (cloud_account_id, version, ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
			ON CONFLICT (cloud_account_id) DO UPDATE SET
				version = EXCLUDED.version, ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce,
				wrapped_key = EXCLUDED.wrapped_key, kms_key_id = EXCLUDED.kms_key_id, updated_at = EXCLUDED.updated_at`,
			id, version, sl.ciphertext, sl.nonce, sl.wrappedKey, sl.kmsKeyID, now)
		if err != nil {
			return fmt.Errorf("store the key of cloud account %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "stored a cloud account's secret key", "cloud_account_id", id, "version", version, "kms_key_id", kmsKeyID)
	return &secretsv1.PutCloudKeyResponse{Version: version}, nil
}

// deleteCloudKey forgets a cloud account's secret key; none kept is fine.
// It takes its turn with the key's writers: a put under way stores its
// version before the key is forgotten, never after. The inventory asks it
// before it deletes any account (AccountDeleted), and it refuses to see
// the account its KMS key is reached through deleted: without it, no
// secret could be opened.
func (s *Service) deleteCloudKey(ctx context.Context, _ vocab.Actor, r *secretsv1.DeleteCloudKeyRequest) (*emptypb.Empty, error) {
	id, err := parseID("cloudAccountId", "a cloud account id", r.GetCloudAccountId())
	if err != nil {
		return nil, err
	}
	if r.GetAccountDeleted() && id == s.kmsAccount {
		return nil, apierr.Conflict(apierr.ReasonInUse, "cloud account %s is the one the secret brokers reach their KMS key through (kms.cloudAccountId, FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID): give the KMS key another account, or none, before deleting it", id)
	}
	err = s.store.inTurn(ctx, cloudKeyLock(id), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM cloud_keys WHERE cloud_account_id = $1`, id); err != nil {
			return fmt.Errorf("delete the key of cloud account %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// checkCloudAccountChange refuses a change of where the account its KMS
// key is reached through reaches its cloud (its region, its endpoint):
// the key would not be found there, and no secret could be opened once the
// brokers start again. Any other account may change.
func (s *Service) checkCloudAccountChange(_ context.Context, _ vocab.Actor, r *secretsv1.CheckCloudAccountChangeRequest) (*emptypb.Empty, error) {
	id, err := parseID("cloudAccountId", "a cloud account id", r.GetCloudAccountId())
	if err != nil {
		return nil, err
	}
	if id == s.kmsAccount && len(r.GetFields()) > 0 {
		return nil, apierr.Conflict(apierr.ReasonInUse, "cloud account %s is the one the secret brokers reach their KMS key through (kms.cloudAccountId, FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID): its %s cannot change, the key is there; give the KMS key another account first",
			id, strings.Join(r.GetFields(), " and "))
	}
	return &emptypb.Empty{}, nil
}

// cloudKeyLock names the turn of one cloud account's key's writers (see
// inTurn).
func cloudKeyLock(accountID string) string { return "cloud key " + accountID }

// readCloudKey opens a cloud account's secret key for the provisioner,
// which signs its calls to the cloud with it. Every read is audited.
func (s *Service) readCloudKey(ctx context.Context, actor vocab.Actor, r *secretsv1.ReadCloudKeyRequest) (*secretsv1.ReadCloudKeyResponse, error) {
	id, err := parseID("cloudAccountId", "a cloud account id", r.GetCloudAccountId())
	if err != nil {
		return nil, err
	}
	access := &secretsv1.SecretAccess{Name: cloudKeyAuditName, Time: timestamppb.New(s.now())}
	var (
		sl      sealed
		version int64
	)
	err = s.store.pool.QueryRow(ctx, `SELECT version, ciphertext, nonce, wrapped_key, kms_key_id FROM cloud_keys WHERE cloud_account_id = $1`, id).
		Scan(&version, &sl.ciphertext, &sl.nonce, &sl.wrappedKey, &sl.kmsKeyID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apierr.NotFound("secret key of cloud account", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read the key of cloud account %s: %w", id, err)
	}
	value, err := open(ctx, s.kms, sl, cloudKeyBinding(id, version))
	if err != nil {
		return nil, fmt.Errorf("read the key of cloud account %s: %w", id, err)
	}
	defer clear(value)
	access.Allowed, access.Reason = true, fmt.Sprintf("cloud account %s, read by %s", id, actor)
	if err := s.auditCloudKey(ctx, access, id, actor); err != nil {
		return nil, err
	}
	return &secretsv1.ReadCloudKeyResponse{Value: string(value), Version: version}, nil
}
