// Package app holds the inventory's use cases: each runs in one PostgreSQL
// transaction that also writes the event describing the change to the outbox,
// so a committed change always reaches the events stream and a rolled-back one
// never does.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/msgcheck"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// Page sizes for list calls.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// Sizes, encoded, that keep every resource, event and list page well under
// the bus's 1 MiB message limit: one resource may take MaxResourceBytes, and
// a list page stops before MaxPageBytes (with at least one resource in it).
const (
	MaxResourceBytes = 256 << 10
	MaxPageBytes     = 512 << 10
)

// checkSize refuses a resource too large to travel the bus, naming the field
// that makes it so.
func checkSize(noun string, v proto.Message) error {
	if n := proto.Size(v); n > MaxResourceBytes {
		return apierr.TooLarge(msgcheck.Largest(v), "the %s would be %d bytes; at most %d are allowed (%d KiB), including every script and file", noun, n, MaxResourceBytes, MaxResourceBytes>>10)
	}
	return nil
}

// App is the inventory's application layer.
type App struct {
	pool     *pgxpool.Pool
	log      *slog.Logger
	now      func() time.Time
	tokenTTL time.Duration
	// loginPolicy slows logins after failures (LoginPolicy).
	loginPolicy attempts.Policy
	// reservedNames are the agent gateway's, which no instance may claim.
	reservedNames []string
	// afterWrite runs inside every write transaction after the change and its
	// event are written; tests use it to force a rollback.
	afterWrite func(ctx context.Context, tx pgx.Tx) error
	// live keeps heartbeats off the instance rows (liveness.go).
	live *liveness
	// auditRows writes projected audit records in batches (audit.go).
	auditRows auditWriter
	// committed runs after every write transaction commits (the outbox
	// forwarder's Wake).
	committed func()
	// cloudKeys keeps cloud accounts' secret keys (WithCloudKeys).
	cloudKeys CloudKeys
	// keys keeps uploaded TLS private keys (certkeys.go); dropKey forgets
	// those no record names any more.
	keys    KeyStore
	dropKey KeyDrop
	// tokenUse holds API tokens' last uses until they are written.
	tokenUse tokenUses
	// refused holds the revoked tokens presented and recorded lately
	// (auditRefused).
	refused *attempts.Limiter
}

// Option configures an App.
type Option func(*App)

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) Option { return func(a *App) { a.now = now } }

// WithTokenTTL sets how long a login token lives.
func WithTokenTTL(d time.Duration) Option { return func(a *App) { a.tokenTTL = d } }

// WithLoginPolicy sets how failed logins slow the next (LoginPolicy).
func WithLoginPolicy(p attempts.Policy) Option { return func(a *App) { a.loginPolicy = p } }

// WithReservedNames sets the agent gateway's names, which no instance's
// ssl.sans may hold.
func WithReservedNames(names []string) Option { return func(a *App) { a.reservedNames = names } }

// WithCommitted runs f after every write transaction commits: the outbox
// forwarder's Wake, so what a transaction wrote to the outbox goes out at
// once.
func WithCommitted(f func()) Option { return func(a *App) { a.committed = f } }

// WithAfterWrite runs f inside every write transaction, after the change and
// its outbox row; an error from f rolls both back. For tests.
func WithAfterWrite(f func(ctx context.Context, tx pgx.Tx) error) Option {
	return func(a *App) { a.afterWrite = f }
}

// New returns the inventory application over a migrated database.
func New(pool *pgxpool.Pool, log *slog.Logger, opts ...Option) *App {
	// PostgreSQL keeps microseconds: a value read back equals the one written.
	now := func() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
	a := &App{pool: pool, log: log, now: now, tokenTTL: 24 * time.Hour, loginPolicy: LoginPolicy, live: newLiveness()}
	for _, o := range opts {
		o(a)
	}
	a.refused = attempts.NewLimiter(refusedTokenPolicy, 4096, a.now)
	return a
}

// resource is what every stored resource message offers.
type resource interface {
	proto.Message
	GetId() string
	GetName() string
	GetVersion() int64
}

// kind describes one resource kind's rules.
type kind[T resource] struct {
	table adapters.Table
	new   func() T
	// prepare sets server-chosen fields of a new resource.
	prepare func(v T)
	// check validates v (old is nil on create), with lookups inside tx.
	check func(ctx context.Context, a *App, tx pgx.Tx, old, v T) error
	// beforeDelete refuses to delete old while something depends on it.
	beforeDelete func(ctx context.Context, tx pgx.Tx, old T) error
	// stored, if set, runs in the transaction after the row's write
	// (create or change) is queued, before the commit: its error undoes
	// the write.
	stored func(ctx context.Context, v T) error
}

// inTx runs f in a transaction and commits unless f or the test hook fails.
// The transaction is a pgstore.Tx: the row writes and the outbox message
// travel with its commit (or its next read), so a write is one or two
// round trips to PostgreSQL rather than four or five.
func (a *App) inTx(ctx context.Context, f func(tx pgx.Tx) error) error {
	err := pgstore.InTx(ctx, a.pool, func(tx *pgstore.Tx) error {
		if err := f(tx); err != nil {
			return err
		}
		if a.afterWrite != nil {
			return a.afterWrite(ctx, tx)
		}
		return nil
	})
	if err == nil && a.committed != nil {
		a.committed()
	}
	return err
}

// emit writes the event for a change of v to the outbox, inside tx.
func (a *App) emit(ctx context.Context, tx pgx.Tx, noun string, verb vocab.Verb, actor vocab.Actor, v resource, now time.Time) error {
	msg, err := bus.NewEvent(ctx, noun, v.GetId(), verb, actor, v.GetVersion(), now, v)
	if err != nil {
		return err
	}
	return outbox.Write(ctx, tx, msg)
}

func create[T resource](ctx context.Context, a *App, k kind[T], actor vocab.Actor, v T) (T, error) {
	var zero T
	if !v.ProtoReflect().IsValid() {
		return zero, apierr.Invalid(k.table.Noun, "is required")
	}
	v = proto.Clone(v).(T)
	clearServerOwned(v)
	if k.prepare != nil {
		k.prepare(v)
	}
	now := a.now()
	if err := checkSize(k.table.Noun, v); err != nil {
		return zero, err
	}
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		if err := k.check(ctx, a, tx, zero, v); err != nil {
			return err
		}
		if err := k.table.Insert(ctx, tx, v, now); err != nil {
			return err
		}
		if k.stored != nil {
			if err := k.stored(ctx, v); err != nil {
				return err
			}
		}
		return a.emit(ctx, tx, k.table.Noun, vocab.VerbCreated, actor, v, now)
	})
	if err != nil {
		return zero, err
	}
	return v, nil
}

func get[T resource](ctx context.Context, a *App, k kind[T], id string) (T, error) {
	v := k.new()
	if err := k.table.Get(ctx, a.pool, id, adapters.NoLock, v); err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

func list[T resource](ctx context.Context, a *App, k kind[T], q adapters.ListQuery, pageSize int32, pageToken string) ([]T, string, error) {
	n, err := pageSizeOf(pageSize)
	if err != nil {
		return nil, "", err
	}
	ms, next, err := k.table.List(ctx, a.pool, q, pageToken, n, MaxPageBytes, func() proto.Message { return k.new() })
	return as[T](ms), next, err
}

// getMany reads the resources of kind k named by ids, leaving out those
// that do not exist.
func getMany[T resource](ctx context.Context, a *App, k kind[T], ids []string) ([]T, error) {
	ms, err := k.table.GetMany(ctx, a.pool, ids, func() proto.Message { return k.new() })
	return as[T](ms), err
}

// as types the messages read from k's table.
func as[T resource](ms []proto.Message) []T {
	out := make([]T, len(ms))
	for i, m := range ms {
		out[i] = m.(T)
	}
	return out
}

func update[T resource](ctx context.Context, a *App, k kind[T], actor vocab.Actor, v T, mask []string) (T, error) {
	var zero T
	if !v.ProtoReflect().IsValid() {
		return zero, apierr.Invalid(k.table.Noun, "is required")
	}
	if v.GetVersion() == 0 {
		return zero, apierr.Invalid("version", "is required: send the version you read, so a concurrent change is not overwritten")
	}
	now := a.now()
	var out T
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		cur := k.new()
		if err := k.table.Get(ctx, tx, v.GetId(), adapters.ForUpdate, cur); err != nil {
			return err
		}
		next := proto.Clone(cur).(T)
		maskErr := applyMask(next, v, mask)
		// What is already so is no change, at any version (the same file
		// applied twice): nothing is written, no new version, no event.
		// Anything else at a stale version was read before a change it
		// would undo.
		unchanged := maskErr == nil && proto.Equal(cur, next) && k.stored == nil
		if cur.GetVersion() != v.GetVersion() && !unchanged {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "%s %q is at version %d, not %d: read it again and retry",
				k.table.What(), v.GetId(), cur.GetVersion(), v.GetVersion())
		}
		if maskErr != nil {
			return maskErr
		}
		if unchanged {
			out = cur
			return nil
		}
		if err := checkSize(k.table.Noun, next); err != nil {
			return err
		}
		if err := k.check(ctx, a, tx, cur, next); err != nil {
			return err
		}
		if err := k.table.Update(ctx, tx, next, now); err != nil {
			return err
		}
		if k.stored != nil {
			if err := k.stored(ctx, next); err != nil {
				return err
			}
		}
		out = next
		return a.emit(ctx, tx, k.table.Noun, vocab.VerbUpdated, actor, next, now)
	})
	if err != nil {
		return zero, err
	}
	return out, nil
}

func remove[T resource](ctx context.Context, a *App, k kind[T], actor vocab.Actor, id string, version int64) error {
	now := a.now()
	return a.inTx(ctx, func(tx pgx.Tx) error {
		cur := k.new()
		if err := k.table.Get(ctx, tx, id, adapters.ForUpdate, cur); err != nil {
			return err
		}
		if version != 0 && cur.GetVersion() != version {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "%s %q is at version %d, not %d: read it again and retry",
				k.table.What(), id, cur.GetVersion(), version)
		}
		if k.beforeDelete != nil {
			if err := k.beforeDelete(ctx, tx, cur); err != nil {
				return err
			}
		}
		if err := k.table.Delete(ctx, tx, id, cur.GetVersion()); err != nil {
			return err
		}
		return a.emit(ctx, tx, k.table.Noun, vocab.VerbDeleted, actor, cur, now)
	})
}

// usedBy refuses a delete while instances refer to the row through column.
func usedBy(ctx context.Context, tx pgx.Tx, noun, name, column, id string) error {
	return usedWhere(ctx, tx, noun, name, column+" = $1", id, "")
}

// usedWhere refuses a change of the row named name (why says what is
// refused) while there are instances that cond (SQL on the instances
// table, with arg as $1) selects, naming up to five of them.
func usedWhere(ctx context.Context, tx pgx.Tx, noun, name, cond string, arg any, why string) error {
	rows, err := tx.Query(ctx, "SELECT name FROM instances WHERE "+cond+" ORDER BY name LIMIT 6", arg)
	if err != nil {
		return fmt.Errorf("find users of %s: %w", noun, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("find users of %s: %w", noun, err)
	}
	if len(names) == 0 {
		return nil
	}
	more := ""
	if len(names) > 5 {
		names, more = names[:5], " and more"
	}
	if why != "" {
		why = ": " + why
	}
	return apierr.Conflict(apierr.ReasonInUse, "%s %q is used by instances %s%s%s", noun, name, strings.Join(names, ", "), more, why)
}
