package secrets

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/timestamppb"

	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/libs/apierr"
)

// store reads and writes the secrets table. It never sees a plaintext value.
type store struct {
	pool *pgxpool.Pool
}

// storedSecret is one row of the secrets table: a sealed value, or a
// reference (ref, an AWS Secrets Manager secret) and nothing sealed.
type storedSecret struct {
	instanceID string
	name       string
	version    int64
	sealed     sealed
	ref        string
	createdAt  time.Time
	updatedAt  time.Time
}

// nullIfEmpty is v, or SQL NULL when it is empty.
func nullIfEmpty(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// metadata is the row as callers may see it: no value, no key material.
func (r storedSecret) metadata() *secretsv1.Secret {
	return &secretsv1.Secret{
		InstanceId:       r.instanceID,
		Name:             r.name,
		Version:          r.version,
		CreateTime:       timestamppb.New(r.createdAt),
		UpdateTime:       timestamppb.New(r.updatedAt),
		KmsKeyId:         r.sealed.kmsKeyID,
		SecretsManagerId: r.ref,
	}
}

// writerLockClass is the first key of the advisory locks under which the
// writers of one stored value take turns. PostgreSQL keeps two-key locks
// apart from the one-key locks of the migrations and the outbox.
const writerLockClass = 0x5ec0

// inTurn runs fn in a transaction holding the advisory lock named key, so
// that writers of one value queue behind each other instead of racing: each
// reads the version the last one wrote and writes the next. A waiting writer
// holds only its own connection; the holder needs no other.
func (st store) inTurn(ctx context.Context, key string, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, st.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, int32(writerLockClass), key); err != nil {
			return fmt.Errorf("wait for the writers of %s: %w", key, err)
		}
		return fn(tx)
	})
}

// secretLock names the turn of one secret's writers (see inTurn).
func secretLock(instanceID, name string) string { return "secret " + instanceID + "/" + name }

// replace stores the next version of a secret (1 when there is none),
// sealed by seal for that version, since the version is bound to the
// ciphertext, or (seal nil) the reference ref; over version over when it
// is not 0 (checkOver). Writers of one secret take turns, so none fails
// for racing another and no two get the same version.
func (st store) replace(ctx context.Context, instanceID, name string, over int64, at time.Time, ref string, seal func(version int64) (sealed, error)) (storedSecret, error) {
	r := storedSecret{instanceID: instanceID, name: name, ref: ref, updatedAt: at}
	err := st.inTurn(ctx, secretLock(instanceID, name), func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT version FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name).Scan(&r.version)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read version of secret %q of instance %s: %w", name, instanceID, err)
		}
		if err := checkOver(fmt.Sprintf("secret %q of instance %s", name, instanceID), r.version, over); err != nil {
			return err
		}
		r.version++
		if seal != nil {
			if r.sealed, err = seal(r.version); err != nil {
				return err
			}
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO secrets AS s (instance_id, name, version, ciphertext, nonce, wrapped_key, kms_key_id, secrets_manager_id, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
			ON CONFLICT (instance_id, name) DO UPDATE SET
				version            = EXCLUDED.version,
				ciphertext         = EXCLUDED.ciphertext,
				nonce              = EXCLUDED.nonce,
				wrapped_key        = EXCLUDED.wrapped_key,
				kms_key_id         = EXCLUDED.kms_key_id,
				secrets_manager_id = EXCLUDED.secrets_manager_id,
				updated_at         = EXCLUDED.updated_at
			RETURNING created_at`,
			r.instanceID, r.name, r.version, r.sealed.ciphertext, r.sealed.nonce, r.sealed.wrappedKey, nullIfEmpty(r.sealed.kmsKeyID), nullIfEmpty(r.ref), r.updatedAt,
		).Scan(&r.createdAt)
		if err != nil {
			return fmt.Errorf("store secret %q of instance %s: %w", name, instanceID, err)
		}
		return nil
	})
	return r, err
}

// checkOver refuses a write over version over (not 0) of what (now at
// version, 0 when there is none) when it is at another.
func checkOver(what string, version, over int64) error {
	switch {
	case over == 0 || over == version:
		return nil
	case version == 0:
		return apierr.Conflict(apierr.ReasonVersionMismatch, "%s does not exist, so it is not at version %d: read it again", what, over)
	}
	return apierr.Conflict(apierr.ReasonVersionMismatch, "%s is at version %d, not %d: read it again, and retry", what, version, over)
}

// get reads one secret, reporting false when there is none.
func (st store) get(ctx context.Context, instanceID, name string) (storedSecret, bool, error) {
	r := storedSecret{}
	err := st.pool.QueryRow(ctx, `
		SELECT instance_id::text, name, version, ciphertext, nonce, wrapped_key, COALESCE(kms_key_id, ''), COALESCE(secrets_manager_id, ''), created_at, updated_at
		FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name,
	).Scan(&r.instanceID, &r.name, &r.version, &r.sealed.ciphertext, &r.sealed.nonce, &r.sealed.wrappedKey, &r.sealed.kmsKeyID, &r.ref, &r.createdAt, &r.updatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return storedSecret{}, false, nil
	}
	if err != nil {
		return storedSecret{}, false, fmt.Errorf("read secret %q of instance %s: %w", name, instanceID, err)
	}
	return r, true, nil
}

// list returns the metadata of an instance's secrets, ordered by name (byte
// order, whatever the database's collation).
func (st store) list(ctx context.Context, instanceID string) ([]*secretsv1.Secret, error) {
	rows, err := st.pool.Query(ctx, `
		SELECT instance_id::text, name, version, COALESCE(kms_key_id, ''), COALESCE(secrets_manager_id, ''), created_at, updated_at
		FROM secrets WHERE instance_id = $1 ORDER BY name COLLATE "C"`, instanceID)
	if err != nil {
		return nil, fmt.Errorf("list secrets of instance %s: %w", instanceID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*secretsv1.Secret, error) {
		var r storedSecret
		if err := row.Scan(&r.instanceID, &r.name, &r.version, &r.sealed.kmsKeyID, &r.ref, &r.createdAt, &r.updatedAt); err != nil {
			return nil, err
		}
		return r.metadata(), nil
	})
	if err != nil {
		return nil, fmt.Errorf("list secrets of instance %s: %w", instanceID, err)
	}
	return out, nil
}

// delete removes one secret, reporting false when there was none.
func (st store) delete(ctx context.Context, instanceID, name string) (bool, error) {
	var deleted bool
	err := st.inTurn(ctx, secretLock(instanceID, name), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name)
		if err != nil {
			return fmt.Errorf("delete secret %q of instance %s: %w", name, instanceID, err)
		}
		deleted = tag.RowsAffected() > 0
		return nil
	})
	return deleted, err
}
