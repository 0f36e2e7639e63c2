package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/kms"
)

// DefaultRewrapBatch is how many secrets Rewrap reads at once by default.
const DefaultRewrapBatch = 100

// RewrapReport counts what Rewrap did.
type RewrapReport struct {
	// Rewrapped is how many data keys it wrapped again under the current key.
	Rewrapped int64
	// Changed is how many secrets were written again, or deleted, between
	// Rewrap reading them and updating them: their new rows were left
	// alone (never overwritten).
	Changed int64
	// Failed is how many data keys could not be unwrapped (a master key
	// this manager does not hold, or a tampered row); each is logged.
	Failed int64
	// Remaining is how many secrets are still under another key than the
	// current one when Rewrap ends: the failed ones, and those written
	// meanwhile by a broker still wrapping under an old key. Zero means
	// the previous keys are no longer needed.
	Remaining int64
}

// RewrapOptions tune Rewrap.
type RewrapOptions struct {
	// BatchSize is how many secrets it reads at once (0: DefaultRewrapBatch).
	BatchSize int
	// Log receives a line per batch and per failure (nil: none). It never
	// sees a value or a key.
	Log *slog.Logger
}

// Rewrap wraps the data key of every secret not under k's current master
// key (k.KeyID()) again under it, through k (a kms.Keyring holding the
// previous keys too): it unwraps the data key and wraps it again, with the
// same encryption context, and never decrypts a value. Secrets already
// under the current key are skipped, so it is idempotent, and it resumes
// after a crash where it stopped, as each secret is updated on its own.
//
// Brokers keep serving meanwhile: a secret is updated only if it is still
// the row Rewrap read (same version, nonce and key id), so a concurrent
// replacement or deletion is never lost; such secrets count as Changed.
// It returns an error only when it cannot go on (the database, a
// cancelled ctx); see RewrapReport for what is left.
func Rewrap(ctx context.Context, pool *pgxpool.Pool, k kms.KMS, o RewrapOptions) (RewrapReport, error) {
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultRewrapBatch
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	target := k.KeyID()
	var rep RewrapReport
	// Keyset pagination over the primary key: rows that fail, or that a
	// broker writes under an old key behind the cursor, are not read again
	// in this run.
	cursorID, cursorName := "00000000-0000-0000-0000-000000000000", ""
	for {
		rows, err := pool.Query(ctx, `
			SELECT instance_id::text, name, version, nonce, wrapped_key, kms_key_id
			FROM secrets
			WHERE kms_key_id <> $1 AND (instance_id, name) > ($2::uuid, $3)
			ORDER BY instance_id, name
			LIMIT $4`, target, cursorID, cursorName, o.BatchSize)
		if err != nil {
			return rep, fmt.Errorf("rewrap: read secrets: %w", err)
		}
		batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (storedSecret, error) {
			var r storedSecret
			err := row.Scan(&r.instanceID, &r.name, &r.version, &r.sealed.nonce, &r.sealed.wrappedKey, &r.sealed.kmsKeyID)
			return r, err
		})
		if err != nil {
			return rep, fmt.Errorf("rewrap: read secrets: %w", err)
		}
		for _, r := range batch {
			updated, err := rewrapOne(ctx, pool, k, r)
			switch {
			case ctx.Err() != nil:
				return rep, fmt.Errorf("rewrap: %w", ctx.Err())
			case errors.Is(err, kms.ErrWrongKey) || errors.Is(err, kms.ErrTampered):
				rep.Failed++
				o.Log.ErrorContext(ctx, "cannot rewrap a secret's data key", "instance_id", r.instanceID, "secret", r.name, "kms_key_id", r.sealed.kmsKeyID, "error", err)
			case err != nil:
				return rep, err
			case updated:
				rep.Rewrapped++
			default:
				rep.Changed++
			}
		}
		if len(batch) > 0 {
			last := batch[len(batch)-1]
			cursorID, cursorName = last.instanceID, last.name
			o.Log.InfoContext(ctx, "rewrapped a batch of data keys", "kms_key_id", target, "rewrapped", rep.Rewrapped, "changed", rep.Changed, "failed", rep.Failed)
		}
		if len(batch) < o.BatchSize {
			break
		}
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM secrets WHERE kms_key_id <> $1`, target).Scan(&rep.Remaining); err != nil {
		return rep, fmt.Errorf("rewrap: count secrets left: %w", err)
	}
	return rep, nil
}

// rewrapOne wraps r's data key again under k's current key and stores it if
// r is still the stored row, reporting whether it was. Errors name the
// secret, never the key.
func rewrapOne(ctx context.Context, pool *pgxpool.Pool, k kms.KMS, r storedSecret) (bool, error) {
	ec := dataKeyContext(r.instanceID, r.name)
	dataKey, err := k.Decrypt(ctx, r.sealed.kmsKeyID, r.sealed.wrappedKey, ec)
	if err != nil {
		return false, fmt.Errorf("rewrap secret %q of instance %s: unwrap its data key: %w", r.name, r.instanceID, err)
	}
	wrapped, err := k.Encrypt(ctx, dataKey, ec)
	clear(dataKey)
	if err != nil {
		return false, fmt.Errorf("rewrap secret %q of instance %s: wrap its data key with %s: %w", r.name, r.instanceID, k.KeyID(), err)
	}
	tag, err := pool.Exec(ctx, `
		UPDATE secrets SET wrapped_key = $1, kms_key_id = $2
		WHERE instance_id = $3 AND name = $4 AND version = $5 AND nonce = $6 AND kms_key_id = $7`,
		wrapped, k.KeyID(), r.instanceID, r.name, r.version, r.sealed.nonce, r.sealed.kmsKeyID)
	if err != nil {
		return false, fmt.Errorf("rewrap secret %q of instance %s: %w", r.name, r.instanceID, err)
	}
	return tag.RowsAffected() == 1, nil
}
