package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

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
	var rep RewrapReport
	for _, t := range sealedTables {
		if err := rewrapTable(ctx, pool, k, o, t, &rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// sealedTable is a table of sealed values whose data keys Rewrap wraps
// again: its key columns (text, in order) and the encryption context its
// data keys are wrapped with, from those columns.
type sealedTable struct {
	name    string
	key     []string
	context func(key []string) kms.EncryptionContext
}

// sealedTables are every table the broker seals values in.
var sealedTables = []sealedTable{
	{name: "secrets", key: []string{"instance_id", "name"},
		context: func(k []string) kms.EncryptionContext { return dataKeyContext(k[0], k[1]) }},
	{name: "fleet_secrets", key: []string{"name"},
		context: func(k []string) kms.EncryptionContext { return fleetSecretContext(k[0]) }},
	{name: "cloud_keys", key: []string{"cloud_account_id"},
		context: func(k []string) kms.EncryptionContext { return cloudKeyContext(k[0]) }},
	{name: "certificate_keys", key: []string{"id"},
		context: func(k []string) kms.EncryptionContext { return certKeyContext(k[0]) }},
	{name: "acme_accounts", key: []string{"network_id"},
		context: func(k []string) kms.EncryptionContext { return acmeAccountContext(k[0]) }},
	{name: "acme_certificates", key: []string{"instance_id"},
		context: func(k []string) kms.EncryptionContext { return acmeCertContext(k[0]) }},
}

// sealedRow is what Rewrap reads of a row: its key, and what it rewrites
// or checks.
type sealedRow struct {
	key []string
	sealed
}

// rewrapTable rewraps the rows of t not under k's current key.
func rewrapTable(ctx context.Context, pool *pgxpool.Pool, k kms.KMS, o RewrapOptions, t sealedTable, rep *RewrapReport) error {
	target := k.KeyID()
	keyText := make([]string, len(t.key))
	params := make([]string, len(t.key))
	for i, c := range t.key {
		keyText[i] = c + "::text"
		params[i] = fmt.Sprintf("$%d", i+2)
	}
	cols := strings.Join(keyText, ", ")
	// Keyset pagination over the key: rows that fail, or that a broker
	// writes under an old key behind the cursor, are not read again in
	// this run.
	query := fmt.Sprintf(`SELECT %s, nonce, wrapped_key, kms_key_id FROM %s
		WHERE kms_key_id <> $1 AND (%s) > (%s) ORDER BY %s LIMIT $%d`,
		cols, t.name, cols, strings.Join(params, ", "), cols, len(t.key)+2)
	cursor := make([]any, len(t.key))
	for i := range cursor {
		cursor[i] = ""
	}
	for {
		rows, err := pool.Query(ctx, query, append(append([]any{target}, cursor...), o.BatchSize)...)
		if err != nil {
			return fmt.Errorf("rewrap: read %s: %w", t.name, err)
		}
		batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (sealedRow, error) {
			r := sealedRow{key: make([]string, len(t.key))}
			dest := make([]any, 0, len(t.key)+3)
			for i := range r.key {
				dest = append(dest, &r.key[i])
			}
			err := row.Scan(append(dest, &r.nonce, &r.wrappedKey, &r.kmsKeyID)...)
			return r, err
		})
		if err != nil {
			return fmt.Errorf("rewrap: read %s: %w", t.name, err)
		}
		for _, r := range batch {
			updated, err := rewrapOne(ctx, pool, k, t, r)
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("rewrap: %w", ctx.Err())
			case errors.Is(err, kms.ErrWrongKey) || errors.Is(err, kms.ErrTampered):
				rep.Failed++
				o.Log.ErrorContext(ctx, "cannot rewrap a data key", "table", t.name, "key", strings.Join(r.key, "/"), "kms_key_id", r.kmsKeyID, "error", err)
			case err != nil:
				return err
			case updated:
				rep.Rewrapped++
			default:
				rep.Changed++
			}
		}
		if len(batch) > 0 {
			for i, v := range batch[len(batch)-1].key {
				cursor[i] = v
			}
			o.Log.InfoContext(ctx, "rewrapped a batch of data keys", "table", t.name, "kms_key_id", target, "rewrapped", rep.Rewrapped, "changed", rep.Changed, "failed", rep.Failed)
		}
		if len(batch) < o.BatchSize {
			break
		}
	}
	var left int64
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+t.name+" WHERE kms_key_id <> $1", target).Scan(&left); err != nil {
		return fmt.Errorf("rewrap: count %s left: %w", t.name, err)
	}
	rep.Remaining += left
	return nil
}

// rewrapOne wraps r's data key again under k's current key and stores it if
// r is still the stored row (same nonce, which every write draws anew, and
// key id), reporting whether it was. Errors name the row, never the key.
func rewrapOne(ctx context.Context, pool *pgxpool.Pool, k kms.KMS, t sealedTable, r sealedRow) (bool, error) {
	ec := t.context(r.key)
	name := t.name + " " + strings.Join(r.key, "/")
	dataKey, err := k.Decrypt(ctx, r.kmsKeyID, r.wrappedKey, ec)
	if err != nil {
		return false, fmt.Errorf("rewrap %s: unwrap its data key: %w", name, err)
	}
	wrapped, err := k.Encrypt(ctx, dataKey, ec)
	clear(dataKey)
	if err != nil {
		return false, fmt.Errorf("rewrap %s: wrap its data key with %s: %w", name, k.KeyID(), err)
	}
	where := make([]string, len(t.key))
	args := []any{wrapped, k.KeyID(), r.nonce, r.kmsKeyID}
	for i, c := range t.key {
		where[i] = fmt.Sprintf("%s::text = $%d", c, i+5)
		args = append(args, r.key[i])
	}
	tag, err := pool.Exec(ctx, fmt.Sprintf(`UPDATE %s SET wrapped_key = $1, kms_key_id = $2
		WHERE nonce = $3 AND kms_key_id = $4 AND %s`, t.name, strings.Join(where, " AND ")), args...)
	if err != nil {
		return false, fmt.Errorf("rewrap %s: %w", name, err)
	}
	return tag.RowsAffected() == 1, nil
}
