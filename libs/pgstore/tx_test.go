package pgstore_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/testkit"
)

// sends counts what a connection sends to the server: each query or batch
// is one round trip.
type sends struct{ n atomic.Int64 }

func (s *sends) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	s.n.Add(1)
	return ctx
}
func (s *sends) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (s *sends) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	s.n.Add(1)
	return ctx
}
func (s *sends) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (s *sends) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// txPool is a one-connection pool on a fresh database with a table t (id
// unique) whose rows record the transaction that wrote them, and the
// counter of its round trips.
func txPool(t *testing.T) (*pgxpool.Pool, *sends) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	s := &sends{}
	cfg.ConnConfig.Tracer = s
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(t.Context(), `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL,
		xact xid8 NOT NULL DEFAULT pg_current_xact_id())`); err != nil {
		t.Fatal(err)
	}
	return pool, s
}

// accept names no error.
func accept(err error) error { return err }

// run runs f in a pgstore.Tx on pool (one connection, counted by s) and
// returns how many round trips it took and InTx's error.
func run(pool *pgxpool.Pool, s *sends, f func(tx *pgstore.Tx) error) (int64, error) {
	before := s.n.Load()
	err := pgstore.InTx(context.Background(), pool, f)
	return s.n.Load() - before, err
}

// wantRows fails the test unless table t holds rows rows, written by
// xacts transactions (xacts < 0: any number).
func wantRows(t *testing.T, pool *pgxpool.Pool, rows, xacts int) {
	t.Helper()
	var n, x int
	if err := pool.QueryRow(t.Context(), "SELECT count(*), count(DISTINCT xact) FROM t").Scan(&n, &x); err != nil {
		t.Fatal(err)
	}
	if n != rows || xacts >= 0 && x != xacts {
		t.Fatalf("%d rows from %d transactions, want %d from %d", n, x, rows, xacts)
	}
}

// A transaction that only writes is one round trip, and its writes are
// one transaction: they share its id, and a failing write keeps none.
func TestTxOfWritesAloneIsOneRoundTripAndAtomic(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, s := txPool(t)

	trips, err := run(pool, s, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (1, 'a')")
		return pgstore.ExecLater(ctx, tx, accept, "INSERT INTO t (id, v) VALUES (2, 'b')")
	})
	if err != nil || trips != 1 {
		t.Fatalf("a transaction of two writes: %v in %d round trips, want 1", err, trips)
	}
	wantRows(t, pool, 2, 1)

	// The second write breaks the key: the first is not kept, and the
	// check's verdict is the commit's error.
	refused := errors.New("id taken")
	_, err = run(pool, s, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (3, 'c')")
		tx.ExecLater(func(err error) error {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" {
				return refused
			}
			return err
		}, "INSERT INTO t (id, v) VALUES (1, 'again')")
		return nil
	})
	if !errors.Is(err, refused) {
		t.Fatalf("commit: %v, want the check's error", err)
	}
	wantRows(t, pool, 2, 1)

	// A check can refuse a write the server accepted (no row matched):
	// the COMMIT then waits for its verdict, one round trip more (the
	// writes, then COMMIT or ROLLBACK).
	stale := errors.New("stale")
	judged := func(where string) func(tx *pgstore.Tx) error {
		return func(tx *pgstore.Tx) error {
			tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (4, 'd')")
			tx.ExecLaterThen(func(tag pgconn.CommandTag, err error) error {
				if err == nil && tag.RowsAffected() != 1 {
					return stale
				}
				return err
			}, "UPDATE t SET v = 'x' WHERE "+where)
			return nil
		}
	}
	if trips, err := run(pool, s, judged("id = 99")); !errors.Is(err, stale) || trips != 2 {
		t.Fatalf("a judged write refused: %v in %d round trips, want the check's error in 2", err, trips)
	}
	wantRows(t, pool, 2, 1)
	if trips, err := run(pool, s, judged("id = 4")); err != nil || trips != 2 {
		t.Fatalf("a judged write accepted: %v in %d round trips, want 2", err, trips)
	}
	wantRows(t, pool, 3, 2)
}

// The options of InTxWith hold for a transaction of writes alone too,
// though it needs no read: here a read-only one refuses them.
func TestTxOptionsHoldWithoutARead(t *testing.T) {
	t.Parallel()
	pool, _ := txPool(t)
	err := pgstore.InTxWith(t.Context(), pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (1, 'a')")
		return nil
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" { // read_only_sql_transaction
		t.Fatalf("a write in a read-only transaction: %v, want refused", err)
	}
	wantRows(t, pool, 0, 0)
}

// A read goes with BEGIN and the writes queued before it, sees them, and
// the writes after it go with the COMMIT: two round trips in all.
func TestTxReadSeesQueuedWritesAndCommitCarriesTheRest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, s := txPool(t)

	trips, err := run(pool, s, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (1, 'a')")
		var v string
		if err := tx.QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v); err != nil {
			return err
		}
		if v != "a" {
			t.Errorf("read %q, want the queued write's a", v)
		}
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (2, 'b')")
		return nil
	})
	if err != nil || trips != 2 {
		t.Fatalf("write, read, write: %v in %d round trips, want 2", err, trips)
	}
	wantRows(t, pool, 2, 1)

	// Statements of every kind after queued writes see them; a read that
	// finds nothing says so.
	if err := pgstore.InTx(ctx, pool, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (3, 'c')")
		tag, err := tx.Exec(ctx, "UPDATE t SET v = 'C' WHERE id = 3")
		if err != nil || tag.RowsAffected() != 1 {
			t.Errorf("update of a queued row: %v, %v", tag, err)
		}
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (4, 'd')")
		rows, err := tx.Query(ctx, "SELECT v FROM t WHERE id >= 3 ORDER BY id")
		if err != nil {
			return err
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(vs) != 2 || vs[0] != "C" || vs[1] != "d" {
			t.Errorf("read %q, want [C d]", vs)
		}
		if err := tx.QueryRow(ctx, "SELECT v FROM t WHERE id = 99").Scan(new(string)); !errors.Is(err, pgx.ErrNoRows) {
			t.Errorf("reading a missing row: %v, want ErrNoRows", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A write refused while a read waits behind it fails the read, and
	// nothing of the transaction is kept.
	refused := errors.New("refused")
	err = pgstore.InTx(ctx, pool, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (5, 'e')")
		tx.ExecLater(func(error) error { return refused }, "INSERT INTO t (id, v) VALUES (1, 'again')")
		return tx.QueryRow(ctx, "SELECT v FROM t WHERE id = 5").Scan(new(string))
	})
	if !errors.Is(err, refused) {
		t.Fatalf("read behind a refused write: %v, want the check's error", err)
	}
	wantRows(t, pool, 4, -1)
	// The connection is clean again: the pool's one connection serves
	// the next transaction.
	if err := pgstore.InTx(ctx, pool, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (5, 'e')")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A transaction whose function fails keeps nothing, whether its writes
// were still queued or already sent.
func TestTxRollsBackQueuedAndSentWrites(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := txPool(t)
	failed := errors.New("changed my mind")
	err := pgstore.InTx(ctx, pool, func(tx *pgstore.Tx) error {
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (1, 'a')")
		if _, err := tx.Exec(ctx, "INSERT INTO t (id, v) VALUES (2, 'b')"); err != nil {
			return err
		}
		tx.ExecLater(accept, "INSERT INTO t (id, v) VALUES (3, 'c')")
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("InTx: %v, want the function's error", err)
	}
	wantRows(t, pool, 0, 0)
	// Used after its end, a Tx says so.
	var kept *pgstore.Tx
	if err := pgstore.InTx(ctx, pool, func(tx *pgstore.Tx) error { kept = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := kept.Exec(ctx, "SELECT 1"); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Exec after commit: %v, want ErrTxClosed", err)
	}
}
