package pgstore

import (
	"context"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tx is a transaction that spares round trips to PostgreSQL, each of which
// costs a server process wake-up and the client's wait. Its BEGIN is not
// sent on its own: it travels with the first statement that needs an
// answer. Writes queued with ExecLater travel with the next statement or
// with the COMMIT. So a transaction that only writes (a row and its outbox
// message) is one round trip, against four as BEGIN, INSERT, INSERT,
// COMMIT; one that reads a row first and then writes is two (three when a
// write's result must be judged before the COMMIT, see ExecLaterThen).
//
// Tx implements pgx.Tx, so code written for a pgx transaction runs on it
// unchanged and sees its own earlier writes: every statement sent at once
// goes after the queued writes, in the same pipeline. Savepoints and large
// objects are not supported.
type Tx struct {
	conn  *pgx.Conn
	opts  pgx.TxOptions
	tx    pgx.Tx // the begun transaction; nil while BEGIN waits
	queue []later
	done  bool
}

// later is a queued write and the function that judges its result.
type later struct {
	sql   string
	args  []any
	check func(pgconn.CommandTag, error) error
	// then: check may refuse a write the server accepted, so the COMMIT
	// must wait for its verdict.
	then bool
}

// InTx runs f in a Tx on a connection of pool and commits it unless f
// fails; on failure it rolls back and returns f's error.
func InTx(ctx context.Context, pool *pgxpool.Pool, f func(tx *Tx) error) error {
	return InTxWith(ctx, pool, pgx.TxOptions{}, f)
}

// InTxWith is InTx with a transaction of opts (its isolation level, say).
func InTxWith(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, f func(tx *Tx) error) error {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The pool closes a connection released inside a transaction, so
	// one whose rollback failed is not reused.
	defer c.Release()
	t := &Tx{conn: c.Conn(), opts: opts}
	if err := f(t); err != nil {
		_ = t.Rollback(ctx)
		return err
	}
	return t.Commit(ctx)
}

// ExecLater runs a write whose result can wait: on a Tx it is queued (see
// Tx.ExecLater), on any other transaction it runs at once.
func ExecLater(ctx context.Context, tx pgx.Tx, onErr func(error) error, sql string, args ...any) error {
	if t, ok := tx.(*Tx); ok {
		t.ExecLater(onErr, sql, args...)
		return nil
	}
	_, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		return onErr(err)
	}
	return nil
}

// ExecLaterThen is ExecLater for a write whose result check judges: on a Tx
// it is queued (see Tx.ExecLaterThen), on any other transaction it runs at
// once.
func ExecLaterThen(ctx context.Context, tx pgx.Tx, check func(pgconn.CommandTag, error) error, sql string, args ...any) error {
	if t, ok := tx.(*Tx); ok {
		t.ExecLaterThen(check, sql, args...)
		return nil
	}
	return check(tx.Exec(ctx, sql, args...))
}

// ExecLater queues a write that can fail only by the server's error. It is
// sent with the next statement that needs an answer, or with the COMMIT;
// its error fails that statement or the commit, as onErr names it. The
// args must not change until then.
func (t *Tx) ExecLater(onErr func(error) error, sql string, args ...any) {
	t.queue = append(t.queue, later{sql: sql, args: args, check: func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return onErr(err)
		}
		return nil
	}})
}

// ExecLaterThen queues a write whose result check judges (nil error: the
// server accepted it), such as an update that must have matched a row. It
// travels like ExecLater's, and what check returns (nil: accepted) fails
// the statement it went with, or the commit. Since check can refuse what
// the server accepted, a COMMIT waits for its verdict: one round trip more.
func (t *Tx) ExecLaterThen(check func(pgconn.CommandTag, error) error, sql string, args ...any) {
	t.queue = append(t.queue, later{sql: sql, args: args, check: check, then: true})
}

// send sends, as one pipeline, BEGIN if begin, the queued writes and then
// sql (unless ""). It reads BEGIN's result and judges the writes', and
// returns the results with sql's next to read; the caller closes them.
// On a failure it closes them itself.
func (t *Tx) send(ctx context.Context, begin bool, sql string, args ...any) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	if begin {
		b.BeginTx(t.opts)
	}
	q := t.queue
	t.queue = nil
	for _, w := range q {
		b.Queue(w.sql, w.args...)
	}
	if sql != "" {
		b.Queue(sql, args...)
	}
	br := t.conn.SendBatch(ctx, b)
	err := func() error {
		if begin {
			if _, err := br.Exec(); err != nil {
				return err
			}
			t.tx = br.Tx()
		}
		for _, w := range q {
			if err := w.check(br.Exec()); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		_ = br.Close() // its error repeats err
		return nil, err
	}
	return br, nil
}

// flush sends BEGIN (unless sent) and the queued writes, if any wait.
func (t *Tx) flush(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	if t.tx != nil && len(t.queue) == 0 {
		return nil
	}
	br, err := t.send(ctx, t.tx == nil, "")
	if err != nil {
		return err
	}
	return br.Close()
}

// Exec runs sql after the queued writes, in the same round trip.
func (t *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.done {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	if t.tx != nil && len(t.queue) == 0 {
		return t.tx.Exec(ctx, sql, args...)
	}
	br, err := t.send(ctx, t.tx == nil, sql, args...)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	ct, err := br.Exec()
	return ct, closeAfter(br, err)
}

// closeAfter closes br and returns err, or else br's error (after a
// failure, br's error repeats it).
func closeAfter(br pgx.BatchResults, err error) error {
	if cerr := br.Close(); err == nil {
		return cerr
	}
	return err
}

// QueryRow reads one row after the queued writes, in the same round trip.
func (t *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.done {
		return errRow{pgx.ErrTxClosed}
	}
	if t.tx != nil && len(t.queue) == 0 {
		return t.tx.QueryRow(ctx, sql, args...)
	}
	br, err := t.send(ctx, t.tx == nil, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return batchRow{br}
}

// batchRow is the row that QueryRow sent behind BEGIN or queued writes.
type batchRow struct{ br pgx.BatchResults }

func (r batchRow) Scan(dest ...any) error {
	return closeAfter(r.br, r.br.QueryRow().Scan(dest...))
}

// errRow is a row that fails.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// Query sends the queued writes, then sql.
func (t *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Query(ctx, sql, args...)
}

// SendBatch sends the queued writes, then b.
func (t *Tx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.flush(ctx); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return t.tx.SendBatch(ctx, b)
}

// CopyFrom sends the queued writes, then copies.
func (t *Tx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.tx.CopyFrom(ctx, table, cols, src)
}

// Prepare sends the queued writes, then prepares sql.
func (t *Tx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Prepare(ctx, name, sql)
}

// Begin would start a savepoint: not supported.
func (t *Tx) Begin(context.Context) (pgx.Tx, error) {
	return nil, errors.New("pgstore.Tx: savepoints are not supported")
}

// LargeObjects is not supported.
func (t *Tx) LargeObjects() pgx.LargeObjects {
	panic("pgstore.Tx: large objects are not supported")
}

// Conn is the transaction's connection.
func (t *Tx) Conn() *pgx.Conn { return t.conn }

// Commit sends the queued writes and COMMIT in one round trip; with nothing
// begun, the writes alone, which PostgreSQL runs as one implicit
// transaction (everything of a pipeline up to its Sync). A queued write
// judged by ExecLaterThen's check is sent first, with BEGIN, and COMMIT
// follows its verdict. A write refused fails the commit, and nothing of
// the transaction is kept.
func (t *Tx) Commit(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	if slices.ContainsFunc(t.queue, func(w later) bool { return w.then }) {
		if err := t.flush(ctx); err != nil {
			t.done = true
			_ = t.abort(ctx)
			return err
		}
	}
	t.done = true
	if t.tx == nil && len(t.queue) == 0 {
		return nil
	}
	// Writes alone run as the implicit transaction of their pipeline,
	// unless opts ask for something else of the transaction.
	begin := t.tx == nil && t.opts != (pgx.TxOptions{})
	commit := ""
	if begin || t.tx != nil {
		commit = "COMMIT"
	}
	br, err := t.send(ctx, begin, commit)
	if err == nil {
		var cerr error
		if commit != "" {
			cerr = committed(br.Exec())
		}
		err = closeAfter(br, cerr)
	}
	if err != nil {
		_ = t.abort(ctx)
	}
	return err
}

// committed is COMMIT's result: a transaction that had failed answers
// ROLLBACK.
func committed(ct pgconn.CommandTag, err error) error {
	if err == nil && ct.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return err
}

// Rollback drops the queued writes and ends the transaction.
func (t *Tx) Rollback(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	t.done = true
	t.queue = nil
	return t.abort(ctx)
}

// abort rolls back whatever the server has open.
func (t *Tx) abort(ctx context.Context) error {
	if t.conn.PgConn().TxStatus() == 'I' {
		return nil
	}
	_, err := t.conn.Exec(ctx, "ROLLBACK")
	return err
}

var _ pgx.Tx = (*Tx)(nil)
