package adapters

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Beat is an agent's latest heartbeat as the liveness table keeps it, and
// when its newest stream began if that stream's connect was taken as a
// heartbeat (zero: none since the instance row was written).
type Beat struct {
	InstanceID  string
	At          time.Time
	DiskUsed    int64
	DiskTotal   int64
	ConnectedAt time.Time
}

// UpsertBeats writes a batch of heartbeats in one statement; a beat older
// than the one stored, or of an instance that no longer exists, is skipped.
// A stream's start is kept until a newer one's.
func UpsertBeats(ctx context.Context, q Querier, beats []Beat) error {
	if len(beats) == 0 {
		return nil
	}
	ids, at := make([]string, len(beats)), make([]time.Time, len(beats))
	used, total := make([]int64, len(beats)), make([]int64, len(beats))
	connected := make([]*time.Time, len(beats))
	for i, b := range beats {
		ids[i], at[i], used[i], total[i] = b.InstanceID, b.At, b.DiskUsed, b.DiskTotal
		if !b.ConnectedAt.IsZero() {
			connected[i] = &beats[i].ConnectedAt
		}
	}
	_, err := q.Exec(ctx, `INSERT INTO instance_liveness (instance_id, last_heartbeat, disk_used, disk_total, connected_at)
		SELECT b.id, b.at, b.used, b.total, b.connected
		FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::timestamptz[]) AS b(id, at, used, total, connected)
		JOIN instances i ON i.id = b.id
		ON CONFLICT (instance_id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat,
			disk_used = excluded.disk_used, disk_total = excluded.disk_total,
			connected_at = GREATEST(instance_liveness.connected_at, excluded.connected_at)
		WHERE instance_liveness.last_heartbeat < excluded.last_heartbeat`, ids, at, used, total, connected)
	if err != nil {
		return fmt.Errorf("write %d heartbeats: %w", len(beats), err)
	}
	return nil
}

// Beats reads the stored heartbeats of the instances ids, by instance id.
func Beats(ctx context.Context, q Querier, ids []string) (map[string]Beat, error) {
	out := map[string]Beat{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT instance_id::text, last_heartbeat, disk_used, disk_total, connected_at
		FROM instance_liveness WHERE instance_id = ANY($1::uuid[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("read heartbeats: %w", err)
	}
	beats, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Beat, error) {
		var (
			b         Beat
			connected *time.Time
		)
		err := row.Scan(&b.InstanceID, &b.At, &b.DiskUsed, &b.DiskTotal, &connected)
		if connected != nil {
			b.ConnectedAt = *connected
		}
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("read heartbeats: %w", err)
	}
	for _, b := range beats {
		out[b.InstanceID] = b
	}
	return out, nil
}

// StaleAgents returns the instances whose agent is shown as connected but
// whose latest heartbeat, in the row or the liveness table, is before t.
func StaleAgents(ctx context.Context, q Querier, connected string, t time.Time) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT i.id::text FROM instances i
		LEFT JOIN instance_liveness l ON l.instance_id = i.id
		WHERE i.spec->'agent'->>'status' = $1
		  AND GREATEST((i.spec->'agent'->>'lastHeartbeat')::timestamptz, l.last_heartbeat) < $2
		ORDER BY i.id`, connected, t)
	if err != nil {
		return nil, fmt.Errorf("find stale agents: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find stale agents: %w", err)
	}
	return ids, nil
}

// DeleteOrphanBeats removes the heartbeats of instances that were deleted.
func DeleteOrphanBeats(ctx context.Context, q Querier) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM instance_liveness l
		WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = l.instance_id)`)
	if err != nil {
		return 0, fmt.Errorf("sweep heartbeats of deleted instances: %w", err)
	}
	return tag.RowsAffected(), nil
}

// UpdateTimes reads when the instances ids' rows were last written, by
// instance id; an instance that no longer exists is left out.
func UpdateTimes(ctx context.Context, q Querier, ids []string) (map[string]time.Time, error) {
	out := make(map[string]time.Time, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT id::text, updated_at FROM instances WHERE id = ANY($1::uuid[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("read when %d instances changed: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			return nil, fmt.Errorf("read when %d instances changed: %w", len(ids), err)
		}
		out[id] = at
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read when %d instances changed: %w", len(ids), err)
	}
	return out, nil
}
