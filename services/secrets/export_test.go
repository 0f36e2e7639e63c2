package secrets

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/kms"
)

// RewrapStale reads a secret's row as Rewrap does, runs between (a
// concurrent writer), then rewraps the row it read, reporting whether it
// was updated.
func RewrapStale(ctx context.Context, pool *pgxpool.Pool, k kms.KMS, instanceID, name string, between func()) (bool, error) {
	r := sealedRow{key: make([]string, 2)}
	err := pool.QueryRow(ctx, `SELECT instance_id::text, name, nonce, wrapped_key, kms_key_id FROM secrets WHERE instance_id = $1 AND name = $2`,
		instanceID, name).Scan(&r.key[0], &r.key[1], &r.nonce, &r.wrappedKey, &r.kmsKeyID)
	if err != nil {
		return false, err
	}
	between()
	return rewrapOne(ctx, pool, k, sealedTables[0], r)
}

// HoldCloudKeyTurn takes the turn of a cloud account's key's writers, as a
// put under way holds it, until the returned function is called.
func HoldCloudKeyTurn(ctx context.Context, pool *pgxpool.Pool, accountID string) (release func(), err error) {
	held, done, ended := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		ended <- store{pool: pool}.inTurn(ctx, cloudKeyLock(accountID), func(pgx.Tx) error {
			close(held)
			<-done
			return nil
		})
	}()
	select {
	case <-held:
		return func() { close(done); <-ended }, nil
	case err := <-ended:
		return nil, err
	}
}
