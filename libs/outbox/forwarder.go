package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/failpoint"
	"flotilla.dev/flotilla/libs/pgstore"
)

// forwarderLock is the advisory lock held while forwarding a batch, so that
// with several manager nodes one forwards at a time and order is kept.
const forwarderLock = 0x666c6f746f626f78 // "flotobox"

// FailpointPublished ends the process (see libs/failpoint) after JetStream
// has stored a batch and before its offset is committed.
const FailpointPublished = "outbox.published"

// Forwarder publishes committed outbox rows to JetStream.
type Forwarder struct {
	pool    *pgxpool.Pool
	js      jetstream.JetStream
	log     *slog.Logger
	batch   int
	schema  wmsql.DefaultPostgreSQLSchema
	timeout time.Duration
	wake    chan struct{}
}

// NewForwarder returns a forwarder publishing up to batch rows per
// transaction (0: DefaultBatch); call Run to start it.
func NewForwarder(pool *pgxpool.Pool, js jetstream.JetStream, log *slog.Logger, batch int) *Forwarder {
	if batch <= 0 {
		batch = DefaultBatch
	}
	return &Forwarder{pool: pool, js: js, log: log, batch: batch, schema: newSchema(batch), timeout: 10 * time.Second,
		wake: make(chan struct{}, 1)}
}

// Wake tells the forwarder that a transaction that wrote to the outbox has
// committed; the writer calls it after the commit. (Not a PostgreSQL
// NOTIFY inside the transaction: every notifying commit takes one global
// lock, which would make the writers commit one at a time.) A write by
// another process is forwarded by that process's forwarder, or by this one
// within a second.
func (f *Forwarder) Wake() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run forwards until ctx ends: woken by Wake when a writer commits, and
// every second as a safety net. While rows wait behind a transaction that
// is still running it looks again soon, backing off to once a second.
func (f *Forwarder) Run(ctx context.Context) error {
	var backoff time.Duration
	for {
		wait := time.Second
		pending, err := f.drain(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			f.log.WarnContext(ctx, "outbox forward failed; will retry", "error", err)
		case pending:
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			wait = backoff
		default:
			backoff = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-f.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// drain forwards batches until a batch comes back short, then reports
// whether rows are left (written by transactions the snapshot could not
// yet see, or by one still running).
func (f *Forwarder) drain(ctx context.Context) (pending bool, err error) {
	for {
		n, err := f.Forward(ctx)
		if isSerializationFailure(err) {
			return true, nil // another manager forwarded meanwhile: look again
		}
		if err != nil {
			return false, err
		}
		if n < f.batch {
			break
		}
	}
	if err := f.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+MessagesTable+")").Scan(&pending); err != nil {
		return false, fmt.Errorf("look for waiting outbox rows: %w", err)
	}
	return pending, nil
}

// Forward publishes one batch and returns how many rows it forwarded. Rows
// are published without waiting for each acknowledgement; the offset of the
// last row of the acknowledged prefix is committed with the deletion of the
// forwarded rows. A publish that fails ends the batch there: the rest is
// published again next time (JetStream drops what it already has).
//
// The transaction is a pgstore.Tx: its BEGIN travels with the lock, and the
// offset and the deletion with its COMMIT, three round trips in all.
func (f *Forwarder) Forward(ctx context.Context) (n int, err error) {
	var pubErr error
	err = pgstore.InTxWith(ctx, f.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx *pgstore.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", int64(forwarderLock)).Scan(&locked); err != nil {
			return fmt.Errorf("forward outbox: %w", err)
		}
		if !locked {
			return nil // another forwarder is at work
		}
		rows, err := f.selectBatch(ctx, tx)
		if err != nil || len(rows) == 0 {
			return err
		}
		n, pubErr = f.publish(ctx, rows)
		if n == 0 {
			return pubErr
		}
		failpoint.Hit(FailpointPublished)

		ack, err := offsets.AckMessageQuery(wmsql.AckMessageQueryParams{Topic: topic, ConsumerGroup: consumerGroup,
			LastRow: rows[n-1], Rows: rows[:n]})
		if err != nil {
			return err
		}
		tx.ExecLater(func(err error) error { return fmt.Errorf("record outbox offset: %w", err) }, ack.Query, ack.Args...)
		// Every row up to the acknowledged one is on the stream: rows of
		// older transactions were all visible (they had ended) and came
		// earlier.
		tx.ExecLater(func(err error) error { return fmt.Errorf("delete forwarded outbox rows: %w", err) },
			`DELETE FROM `+MessagesTable+` m USING `+OffsetsTable+` o
			WHERE o.consumer_group = $1 AND (m.transaction_id < o.last_processed_transaction_id
				OR (m.transaction_id = o.last_processed_transaction_id AND m."offset" <= o.offset_acked))`, consumerGroup)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, pubErr
}

// selectBatch reads the next rows with watermill-sql's snapshot-safe query.
func (f *Forwarder) selectBatch(ctx context.Context, tx pgx.Tx) ([]wmsql.Row, error) {
	q, err := f.schema.SelectQuery(wmsql.SelectQueryParams{Topic: topic, ConsumerGroup: consumerGroup, OffsetsAdapter: offsets})
	if err != nil {
		return nil, err
	}
	rs, err := tx.Query(ctx, q.Query, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rs.Close()
	var rows []wmsql.Row
	for rs.Next() {
		r, err := f.schema.UnmarshalMessage(wmsql.UnmarshalMessageParams{Row: rs})
		if err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		rows = append(rows, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return rows, nil
}

// publish sends rows to JetStream without waiting between them and returns
// the length of the prefix JetStream acknowledged, and why it stopped short.
func (f *Forwarder) publish(ctx context.Context, rows []wmsql.Row) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(rows))
	var err error
	for _, r := range rows {
		var m *nats.Msg
		if m, err = natsMsg(r); err != nil {
			break
		}
		var fut jetstream.PubAckFuture
		if fut, err = f.js.PublishMsgAsync(m); err != nil {
			err = fmt.Errorf("publish %s: %w", m.Subject, err)
			break
		}
		futures = append(futures, fut)
	}
	timeout := time.NewTimer(f.timeout)
	defer timeout.Stop()
	for i, fut := range futures {
		select {
		case <-fut.Ok():
		case perr := <-fut.Err():
			return i, fmt.Errorf("publish %s: %w", fut.Msg().Subject, perr)
		case <-ctx.Done():
			return i, ctx.Err()
		case <-timeout.C:
			return i, fmt.Errorf("publish %s: no acknowledgement from JetStream in %v", fut.Msg().Subject, f.timeout)
		}
	}
	return len(futures), err
}

// natsMsg turns an outbox row back into the message it was written as.
func natsMsg(r wmsql.Row) (*nats.Msg, error) {
	md := map[string]string{}
	if len(r.Metadata) > 0 {
		if err := json.Unmarshal(r.Metadata, &md); err != nil {
			return nil, fmt.Errorf("outbox row %d: metadata: %w", r.Offset, err)
		}
	}
	m := nats.NewMsg(md[bus.HeaderSubject])
	if m.Subject == "" {
		return nil, fmt.Errorf("outbox row %d has no subject", r.Offset)
	}
	delete(md, bus.HeaderSubject)
	for k, v := range md {
		m.Header[k] = []string{v}
	}
	m.Header.Set(bus.HeaderMsgID, string(r.UUID))
	m.Data = r.Payload
	return m, nil
}

// isSerializationFailure reports a repeatable-read conflict: another
// forwarder committed an offset after this transaction's snapshot.
func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40001"
}

// Hold stops every forwarder of the database conn is connected to until
// release is called, or conn's session ends (should its holder die): it
// takes for the session the advisory lock a forwarder takes for each
// batch (a forwarder that finds it held forwards nothing, and looks again
// within a second), once the batch under way has ended. Writes go on; their
// rows wait in the outbox. A backup holds the forwarders while it copies
// the streams and then the database, so that every message in the streams'
// copy is of a change in the database's, and every change in the
// database's copy not yet forwarded is still in its outbox.
func Hold(ctx context.Context, conn *pgx.Conn) (release func(context.Context) error, err error) {
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(forwarderLock)); err != nil {
		return nil, fmt.Errorf("hold the outbox forwarders: %w", err)
	}
	return func(ctx context.Context) error {
		var released bool
		if err := conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", int64(forwarderLock)).Scan(&released); err != nil {
			return fmt.Errorf("release the outbox forwarders: %w", err)
		}
		if !released {
			return errors.New("release the outbox forwarders: the lock was not held")
		}
		return nil
	}, nil
}
