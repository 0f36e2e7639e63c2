package adapters

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pgstore"
)

// Querier is what reads need: a pool, a connection or a transaction.
type Querier = pgstore.Querier

// Column is an extra column a table keeps beside spec, derived from the resource.
type Column struct {
	Name  string
	Value any
}

// Table stores one kind of resource (a protobuf message with id, name, version,
// create_time and update_time fields) in a table with a jsonb spec column.
type Table struct {
	// Name is the SQL table name, e.g. "networks".
	Name string
	// Noun is the entity's word on the bus, e.g. "network", "cloudaccount".
	Noun string
	// Words name a resource in messages when the noun will not ("cloud
	// account"); empty: the noun.
	Words string
	// Extra returns the extra columns to write for a resource, if the table has any.
	Extra func(proto.Message) []Column
}

// What names a resource of the table in messages: "network", "cloud account".
func (t Table) What() string {
	if t.Words != "" {
		return t.Words
	}
	return t.Noun
}

var (
	jsonOut = protojson.MarshalOptions{}
	jsonIn  = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// NewID returns a fresh, time-ordered resource id.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// Insert writes a new resource. It sets id (if empty), version 1 and both times.
func (t Table) Insert(ctx context.Context, tx pgx.Tx, m proto.Message, now time.Time) error {
	if getString(m, "id") == "" {
		setField(m, "id", protoreflect.ValueOfString(NewID()))
	}
	setField(m, "version", protoreflect.ValueOfInt64(1))
	ts := timestamppb.New(now)
	setField(m, "create_time", protoreflect.ValueOfMessage(ts.ProtoReflect()))
	setField(m, "update_time", protoreflect.ValueOfMessage(proto.Clone(ts).ProtoReflect()))
	spec, err := jsonOut.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t.What(), err)
	}
	cols := []string{"id", "name", "spec", "version", "created_at", "updated_at"}
	args := []any{getString(m, "id"), getString(m, "name"), spec, int64(1), now, now}
	for _, c := range t.extra(m) {
		cols = append(cols, c.Name)
		args = append(args, c.Value)
	}
	ph := make([]string, len(cols))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	sql := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", t.Name, strings.Join(cols, ", "), strings.Join(ph, ", "))
	name, id := getString(m, "name"), getString(m, "id")
	return pgstore.ExecLater(ctx, tx, func(err error) error { return t.writeError(err, name, id) }, sql, args...)
}

// Lock is how Get locks the row it reads, until the transaction ends.
type Lock string

// The locks Get takes.
const (
	// NoLock (the zero Lock) reads the row as it is.
	NoLock Lock = ""
	// ForUpdate locks the row against every other lock and change: for a
	// read before a write of the row.
	ForUpdate Lock = " FOR UPDATE"
	// ForShare lets others read and share the row but not change it: for
	// a write that relies on what the row says (an instance on its
	// template), so a change of the row waits for it and then sees it.
	ForShare Lock = " FOR SHARE"
)

// Get reads one resource into m, locking its row as lock says. A malformed
// id is invalid input; a missing one is not found.
func (t Table) Get(ctx context.Context, q Querier, id string, lock Lock, m proto.Message) error {
	if err := apierr.CheckID("id", id); err != nil {
		return err
	}
	sql := "SELECT spec, id::text, version, created_at, updated_at FROM " + t.Name + " WHERE id = $1" + string(lock)
	if err := t.scan(q.QueryRow(ctx, sql, id), m); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return apierr.NotFound(t.What(), id)
		}
		return fmt.Errorf("read %s %s: %w", t.What(), id, err)
	}
	return nil
}

// GetMany reads the resources named by ids, leaving out those that do not
// exist, in no particular order.
func (t Table) GetMany(ctx context.Context, q Querier, ids []string, newMsg func() proto.Message) ([]proto.Message, error) {
	for i, id := range ids {
		if err := apierr.CheckID(fmt.Sprintf("ids[%d]", i), id); err != nil {
			return nil, err
		}
	}
	rows, err := q.Query(ctx, "SELECT spec, id::text, version, created_at, updated_at FROM "+t.Name+" WHERE id = ANY($1::uuid[])", ids)
	if err != nil {
		return nil, fmt.Errorf("read %d %ss: %w", len(ids), t.What(), err)
	}
	defer rows.Close()
	var out []proto.Message
	for rows.Next() {
		m := newMsg()
		if err := t.scan(rows, m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %d %ss: %w", len(ids), t.What(), err)
	}
	return out, nil
}

func (t Table) scan(row pgx.Row, m proto.Message) error {
	var (
		spec                 []byte
		id                   string
		version              int64
		created, updatedTime time.Time
	)
	if err := row.Scan(&spec, &id, &version, &created, &updatedTime); err != nil {
		return err
	}
	if err := jsonIn.Unmarshal(spec, m); err != nil {
		return fmt.Errorf("decode %s %s: %w", t.What(), id, err)
	}
	setField(m, "id", protoreflect.ValueOfString(id))
	setField(m, "version", protoreflect.ValueOfInt64(version))
	setField(m, "create_time", protoreflect.ValueOfMessage(timestamppb.New(created).ProtoReflect()))
	setField(m, "update_time", protoreflect.ValueOfMessage(timestamppb.New(updatedTime).ProtoReflect()))
	return nil
}

// Update writes m over the stored resource if the stored version is still
// m's version; it then sets m's version to the next one and its update time.
func (t Table) Update(ctx context.Context, tx pgx.Tx, m proto.Message, now time.Time) error {
	id := getString(m, "id")
	prev := getInt(m, "version")
	setField(m, "version", protoreflect.ValueOfInt64(prev+1))
	setField(m, "update_time", protoreflect.ValueOfMessage(timestamppb.New(now).ProtoReflect()))
	spec, err := jsonOut.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t.What(), err)
	}
	sets := []string{"name = $3", "spec = $4", "version = $5", "updated_at = $6"}
	args := []any{id, prev, getString(m, "name"), spec, prev + 1, now}
	for _, c := range t.extra(m) {
		args = append(args, c.Value)
		sets = append(sets, fmt.Sprintf("%s = $%d", c.Name, len(args)))
	}
	sql := fmt.Sprintf("UPDATE %s SET %s WHERE id = $1 AND version = $2", t.Name, strings.Join(sets, ", "))
	name := getString(m, "name")
	return pgstore.ExecLaterThen(ctx, tx, func(tag pgconn.CommandTag, err error) error {
		if err != nil {
			return t.writeError(err, name, id)
		}
		if tag.RowsAffected() == 0 {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "%s %q changed since version %d: read it again and retry", t.What(), id, prev)
		}
		return nil
	}, sql, args...)
}

// UpdateObserved writes m over the stored resource without a new version:
// for what the system observes (agent heartbeats, provisioning progress),
// which must not make an operator's update at the version they read fail.
// The caller holds the row lock (Get with forUpdate) in tx.
func (t Table) UpdateObserved(ctx context.Context, tx pgx.Tx, m proto.Message, now time.Time) error {
	setField(m, "update_time", protoreflect.ValueOfMessage(timestamppb.New(now).ProtoReflect()))
	spec, err := jsonOut.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t.What(), err)
	}
	sets := []string{"spec = $2", "updated_at = $3"}
	args := []any{getString(m, "id"), spec, now}
	for _, c := range t.extra(m) {
		args = append(args, c.Value)
		sets = append(sets, fmt.Sprintf("%s = $%d", c.Name, len(args)))
	}
	name, id := getString(m, "name"), getString(m, "id")
	return pgstore.ExecLater(ctx, tx, func(err error) error { return t.writeError(err, name, id) }, fmt.Sprintf("UPDATE %s SET %s WHERE id = $1", t.Name, strings.Join(sets, ", ")), args...)
}

// Delete removes a resource if it is still at the given version (0: any version).
func (t Table) Delete(ctx context.Context, tx pgx.Tx, id string, version int64) error {
	return pgstore.ExecLaterThen(ctx, tx, func(tag pgconn.CommandTag, err error) error {
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23503" {
				return apierr.Conflict(apierr.ReasonInUse, "%s %q is in use", t.What(), id)
			}
			return fmt.Errorf("delete %s %s: %w", t.What(), id, err)
		}
		if tag.RowsAffected() == 0 {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "%s %q changed since version %d: read it again and retry", t.What(), id, version)
		}
		return nil
	}, "DELETE FROM "+t.Name+" WHERE id = $1 AND ($2 = 0 OR version = $2)", id, version)
}

// ListQuery narrows and orders a list (Table.List); its zero value lists
// every resource, oldest first.
type ListQuery struct {
	// Where are conditions on the table's columns, all of which a resource
	// must meet.
	Where []Cond
	// ByName orders by name, byte by byte, instead of oldest first.
	ByName bool
	// Skip leaves out this many resources before the page (after the page
	// token's).
	Skip int
}

// Cond is one SQL condition; it writes each of its Args as ?.
type Cond struct {
	SQL  string
	Args []any
}

// where is q's conditions as SQL (with "WHERE" if there are any) and their
// arguments, numbered from $(len(args)+1).
func (q ListQuery) where(args []any) (string, []any) {
	var parts []string
	for _, c := range q.Where {
		sql := c.SQL
		for _, a := range c.Args {
			args = append(args, a)
			sql = strings.Replace(sql, "?", fmt.Sprintf("$%d", len(args)), 1)
		}
		parts = append(parts, "("+sql+")")
	}
	if len(parts) == 0 {
		return "", args
	}
	return " WHERE " + strings.Join(parts, " AND "), args
}

// digest names q's conditions and order (not its Skip) in its page tokens,
// so a token is not taken for a list it did not come from. "" for the zero
// query, whose tokens are the resource's id alone.
func (q ListQuery) digest() string {
	if len(q.Where) == 0 && !q.ByName {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%t", q.ByName)
	for _, c := range q.Where {
		fmt.Fprintf(h, "\x00%s", c.SQL)
		for _, a := range c.Args {
			fmt.Fprintf(h, "\x00%v", a)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// List returns up to limit resources that meet q after the page token, in
// q's order, and the token of the next page ("" on the last page). A page
// also ends before the resource that would take its encoded size over
// maxBytes; it holds at least one.
func (t Table) List(ctx context.Context, db Querier, q ListQuery, pageToken string, limit, maxBytes int, newMsg func() proto.Message) ([]proto.Message, string, error) {
	sql, args, err := t.listSQL(q, pageToken, limit+1)
	if err != nil {
		return nil, "", err
	}
	order := "id"
	if q.ByName {
		order = "name"
	}
	rows, err := db.Query(ctx, sql, planned(args)...)
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", t.Name, err)
	}
	defer rows.Close()
	var out []proto.Message
	size, full := 0, false
	for rows.Next() {
		m := newMsg()
		if err := t.scan(rows, m); err != nil {
			return nil, "", err
		}
		// Each resource is a repeated field of the response: its size, a
		// tag and a length.
		if size += proto.Size(m) + 8; len(out) > 0 && size > maxBytes {
			full = true
			break
		}
		out = append(out, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list %s: %w", t.Name, err)
	}
	next := ""
	if len(out) > limit {
		out, full = out[:limit], true
	}
	if full {
		next = tokenAfter(getString(out[len(out)-1], order), q.digest())
	}
	return out, next, nil
}

// listSQL is the query of a list page: up to limit resources that meet q
// after the page token's, in q's order.
func (t Table) listSQL(q ListQuery, pageToken string, limit int) (string, []any, error) {
	// The key names the table's column: a bare "id" in ORDER BY would be
	// the output column id::text, which no index orders, so every page
	// would sort the whole table.
	key := t.Name + ".id"
	if q.ByName {
		key = t.Name + `.name COLLATE "C"`
	}
	if pageToken != "" {
		after, err := pageAfter(pageToken, q.digest())
		if err != nil {
			return "", nil, err
		}
		q.Where = append(slices.Clip(q.Where), Cond{SQL: key + " > ?", Args: []any{after}})
	}
	where, args := q.where(nil)
	if q.Skip > 0 {
		// The page starts at the key Skip resources on, which a walk of
		// the key's index finds without reading the rows it passes (where
		// no condition needs them), instead of an OFFSET that reads each.
		args = append(args, q.Skip)
		start := fmt.Sprintf("%s >= (SELECT %s FROM %s%s ORDER BY %s OFFSET $%d LIMIT 1)", key, key, t.Name, where, key, len(args))
		if where == "" {
			where = " WHERE " + start
		} else {
			where += " AND " + start
		}
	}
	args = append(args, limit)
	return fmt.Sprintf("SELECT spec, id::text, version, created_at, updated_at FROM %s%s ORDER BY %s LIMIT $%d",
		t.Name, where, key, len(args)), args, nil
}

// planned has a list's query planned for the values of args each time (an
// unnamed statement, described first for its parameters' types), not by a
// plan cached for the statement: how a search is best answered depends on
// how many rows its text matches, and a generic plan cached after texts
// that match many (walk the name index, stop at a page) read the whole
// table for a text that matches one.
func planned(args []any) []any {
	return append([]any{pgx.QueryExecModeDescribeExec}, args...)
}

// Count is how many resources meet q's conditions.
func (t Table) Count(ctx context.Context, db Querier, q ListQuery) (int64, error) {
	where, args := q.where(nil)
	var n int64
	if err := db.QueryRow(ctx, "SELECT count(*) FROM "+t.Name+where, planned(args)...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s: %w", t.Name, err)
	}
	return n, nil
}

// PageAfter is the id a list page token says to go on after (the nil
// UUID for the first page); a token not from a previous answer is invalid
// input naming pageToken.
func PageAfter(pageToken string) (string, error) {
	if pageToken == "" {
		return "00000000-0000-0000-0000-000000000000", nil
	}
	return pageAfter(pageToken, "")
}

// pageAfter is the key a page token of the list named by digest says to go
// on after.
func pageAfter(token, digest string) (string, error) {
	bad := apierr.Invalid("pageToken", "is not a token from a previous response")
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", bad
	}
	key := string(raw)
	if digest == "" {
		if _, err := uuid.Parse(key); err != nil {
			return "", bad
		}
		return key, nil
	}
	d, key, ok := strings.Cut(key, ":")
	if !ok {
		return "", bad
	}
	if d != digest {
		return "", apierr.Invalid("pageToken", "comes from a list with other filters or another order: ask again with the same ones, or without the token")
	}
	return key, nil
}

// PageToken is the token of the page after the item with this id.
func PageToken(lastID string) string { return tokenAfter(lastID, "") }

// tokenAfter is the token of the page after key in the list named by digest.
func tokenAfter(key, digest string) string {
	if digest != "" {
		key = digest + ":" + key
	}
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

func (t Table) extra(m proto.Message) []Column {
	if t.Extra == nil {
		return nil
	}
	return t.Extra(m)
}

// writeError names what a failed write of the resource with this name
// and id ran into.
func (t Table) writeError(err error, name, id string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505": // unique_violation
			if strings.Contains(pgErr.ConstraintName, "name") {
				return apierr.Conflict(apierr.ReasonAlreadyExists, "%s name %q is already in use", t.What(), name)
			}
			return apierr.Conflict(apierr.ReasonAlreadyExists, "%s %q already exists", t.What(), id)
		case "23503": // foreign_key_violation: a referenced row vanished meanwhile
			return apierr.Conflict(apierr.ReasonConcurrentChange, "%s %q refers to something that no longer exists: %s", t.What(), name, pgErr.ConstraintName)
		}
	}
	return fmt.Errorf("write %s: %w", t.What(), err)
}

func field(m proto.Message, name string) protoreflect.FieldDescriptor {
	fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		panic(fmt.Sprintf("%s has no field %s", m.ProtoReflect().Descriptor().FullName(), name))
	}
	return fd
}

func setField(m proto.Message, name string, v protoreflect.Value) {
	m.ProtoReflect().Set(field(m, name), v)
}

func getString(m proto.Message, name string) string {
	return m.ProtoReflect().Get(field(m, name)).String()
}

func getInt(m proto.Message, name string) int64 {
	return m.ProtoReflect().Get(field(m, name)).Int()
}
