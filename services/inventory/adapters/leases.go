package adapters

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Lease is a provisioner's lease of an instance as a fencing token: a lease
// taken later is greater, by epoch first, then revision.
type Lease struct {
	Epoch    int64
	Revision int64
}

// FenceLease records that a write of instance id comes under lease l, in
// q's transaction, which must hold the instance's row lock. It returns
// ok=false, writing nothing, when a newer lease was recorded before (and
// that lease); an equal or newer l becomes the instance's newest.
func FenceLease(ctx context.Context, q Querier, id string, l Lease) (ok bool, newest Lease, err error) {
	err = q.QueryRow(ctx, `INSERT INTO instance_leases AS f (instance_id, epoch, revision) VALUES ($1, $2, $3)
		ON CONFLICT (instance_id) DO UPDATE SET epoch = excluded.epoch, revision = excluded.revision
		WHERE (f.epoch, f.revision) <= (excluded.epoch, excluded.revision)
		RETURNING true`, id, l.Epoch, l.Revision).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		if err := q.QueryRow(ctx, `SELECT epoch, revision FROM instance_leases WHERE instance_id = $1`, id).Scan(&newest.Epoch, &newest.Revision); err != nil {
			return false, Lease{}, fmt.Errorf("read the newest lease of %s: %w", id, err)
		}
		return false, newest, nil
	}
	if err != nil {
		return false, Lease{}, fmt.Errorf("fence the lease of %s: %w", id, err)
	}
	return true, l, nil
}
