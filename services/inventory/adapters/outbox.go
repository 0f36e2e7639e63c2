package adapters

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/bus"
)

// outboxChannel is the PostgreSQL NOTIFY channel that wakes the forwarder.
const outboxChannel = "flotilla_outbox"

// outboxLock is the advisory lock key held while forwarding, so that with
// several inventory instances one forwards at a time and order is kept.
const outboxLock = 0x666c6f746f626f78 // "flotobox"

// AddToOutbox records msg in the same transaction as the change it describes.
// It is published only if the transaction commits.
func AddToOutbox(ctx context.Context, tx pgx.Tx, msg bus.Message) error {
	hdr, err := json.Marshal(msg.Header)
	if err != nil {
		return fmt.Errorf("encode headers: %w", err)
	}
	if _, err := tx.Exec(ctx,
		"INSERT INTO outbox (msg_id, subject, headers, payload) VALUES ($1, $2, $3, $4)",
		msg.ID(), msg.Subject, hdr, msg.Data); err != nil {
		return fmt.Errorf("write outbox: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", outboxChannel); err != nil {
		return fmt.Errorf("notify outbox: %w", err)
	}
	return nil
}

// Forwarder publishes committed outbox rows to JetStream, oldest first, and
// deletes them once JetStream has acknowledged them. A crash between publish
// and delete republishes with the same message id, which JetStream drops.
type Forwarder struct {
	pool  *pgxpool.Pool
	js    jetstream.JetStream
	log   *slog.Logger
	batch int
}

// NewForwarder returns a forwarder; call Run to start it.
func NewForwarder(pool *pgxpool.Pool, js jetstream.JetStream, log *slog.Logger) *Forwarder {
	return &Forwarder{pool: pool, js: js, log: log, batch: 100}
}

// Run forwards until ctx ends, woken by NOTIFY and, as a safety net, every second.
func (f *Forwarder) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go f.listen(ctx, wake)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for {
			n, err := f.Forward(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				f.log.WarnContext(ctx, "outbox forward failed; will retry", "error", err)
				break
			}
			if n < f.batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-tick.C:
		}
	}
}

func (f *Forwarder) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		conn, err := f.pool.Acquire(ctx)
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		if _, err := conn.Exec(ctx, "LISTEN "+outboxChannel); err != nil {
			conn.Release()
			sleep(ctx, time.Second)
			continue
		}
		for {
			if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
				break
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		// The connection may be mid-LISTEN; do not return it to the pool.
		_ = conn.Hijack().Close(context.Background())
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Forward publishes one batch of outbox rows and returns how many it published.
func (f *Forwarder) Forward(ctx context.Context) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", int64(outboxLock)).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			return nil // another forwarder is at work
		}
		rows, err := tx.Query(ctx, "SELECT seq, subject, headers, payload FROM outbox ORDER BY seq LIMIT $1", f.batch)
		if err != nil {
			return err
		}
		type row struct {
			seq  int64
			msg  *nats.Msg
			hdrs []byte
		}
		var batch []row
		for rows.Next() {
			var r row
			r.msg = &nats.Msg{}
			if err := rows.Scan(&r.seq, &r.msg.Subject, &r.hdrs, &r.msg.Data); err != nil {
				rows.Close()
				return err
			}
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var last int64
		for _, r := range batch {
			if err := json.Unmarshal(r.hdrs, &r.msg.Header); err != nil {
				return fmt.Errorf("decode outbox headers %d: %w", r.seq, err)
			}
			if _, err := f.js.PublishMsg(ctx, r.msg); err != nil {
				if last == 0 {
					return fmt.Errorf("publish %s: %w", r.msg.Subject, err)
				}
				break // keep what was published; retry the rest
			}
			last = r.seq
			n++
		}
		if last > 0 {
			if _, err := tx.Exec(ctx, "DELETE FROM outbox WHERE seq <= $1", last); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("forward outbox: %w", err)
	}
	return n, nil
}
