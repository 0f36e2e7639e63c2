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
)

// store reads and writes the secrets table. It never sees a plaintext value.
type store struct {
	pool *pgxpool.Pool
}

// storedSecret is one row of the secrets table.
type storedSecret struct {
	instanceID string
	name       string
	version    int64
	sealed     sealed
	createdAt  time.Time
	updatedAt  time.Time
}

// metadata is the row as callers may see it: no value, no key material.
func (r storedSecret) metadata() *secretsv1.Secret {
	return &secretsv1.Secret{
		InstanceId: r.instanceID,
		Name:       r.name,
		Version:    r.version,
		CreateTime: timestamppb.New(r.createdAt),
		UpdateTime: timestamppb.New(r.updatedAt),
		KmsKeyId:   r.sealed.kmsKeyID,
	}
}

// version returns the current version of a secret, or 0 when there is none.
func (st store) version(ctx context.Context, instanceID, name string) (int64, error) {
	var v int64
	err := st.pool.QueryRow(ctx, `SELECT version FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read version of secret %q of instance %s: %w", name, instanceID, err)
	}
	return v, nil
}

// put writes r if r.version is one more than the stored version (or 1 and
// there is none), setting r.createdAt. It reports false, writing nothing,
// when another writer got there first; the caller re-reads the version and
// seals again, since the version is bound to the ciphertext.
func (st store) put(ctx context.Context, r *storedSecret) (bool, error) {
	err := st.pool.QueryRow(ctx, `
		INSERT INTO secrets AS s (instance_id, name, version, ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
		ON CONFLICT (instance_id, name) DO UPDATE SET
			version     = EXCLUDED.version,
			ciphertext  = EXCLUDED.ciphertext,
			nonce       = EXCLUDED.nonce,
			wrapped_key = EXCLUDED.wrapped_key,
			kms_key_id  = EXCLUDED.kms_key_id,
			updated_at  = EXCLUDED.updated_at
		WHERE s.version = EXCLUDED.version - 1
		RETURNING created_at`,
		r.instanceID, r.name, r.version, r.sealed.ciphertext, r.sealed.nonce, r.sealed.wrappedKey, r.sealed.kmsKeyID, r.updatedAt,
	).Scan(&r.createdAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store secret %q of instance %s: %w", r.name, r.instanceID, err)
	}
	return true, nil
}

// get reads one secret, reporting false when there is none.
func (st store) get(ctx context.Context, instanceID, name string) (storedSecret, bool, error) {
	r := storedSecret{}
	err := st.pool.QueryRow(ctx, `
		SELECT instance_id::text, name, version, ciphertext, nonce, wrapped_key, kms_key_id, created_at, updated_at
		FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name,
	).Scan(&r.instanceID, &r.name, &r.version, &r.sealed.ciphertext, &r.sealed.nonce, &r.sealed.wrappedKey, &r.sealed.kmsKeyID, &r.createdAt, &r.updatedAt)
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
		SELECT instance_id::text, name, version, kms_key_id, created_at, updated_at
		FROM secrets WHERE instance_id = $1 ORDER BY name COLLATE "C"`, instanceID)
	if err != nil {
		return nil, fmt.Errorf("list secrets of instance %s: %w", instanceID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*secretsv1.Secret, error) {
		var r storedSecret
		if err := row.Scan(&r.instanceID, &r.name, &r.version, &r.sealed.kmsKeyID, &r.createdAt, &r.updatedAt); err != nil {
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
	tag, err := st.pool.Exec(ctx, `DELETE FROM secrets WHERE instance_id = $1 AND name = $2`, instanceID, name)
	if err != nil {
		return false, fmt.Errorf("delete secret %q of instance %s: %w", name, instanceID, err)
	}
	return tag.RowsAffected() > 0, nil
}
