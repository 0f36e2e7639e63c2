package adapters

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditRow is one audit record as the audit_records table keeps it.
type AuditRow struct {
	ID, Kind, Action, Actor string
	At                      time.Time
	Username, UserID, Role  string
	Target                  string
	Status                  int32
	Result, Source, TraceID string
	Detail                  string
}

// auditColumns are the columns InsertAuditRows writes, in order.
const auditColumns = 14

// MaxAuditRowsPerInsert bounds one InsertAuditRows statement (PostgreSQL
// takes at most 65 535 parameters).
const MaxAuditRowsPerInsert = 1000

// InsertAuditRows writes records in one statement, skipping any whose id
// is there already (a redelivered record changes nothing), and returns how
// many it wrote. At most MaxAuditRowsPerInsert rows.
func InsertAuditRows(ctx context.Context, q Querier, rows []*AuditRow) (int64, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	if len(rows) > MaxAuditRowsPerInsert {
		return 0, fmt.Errorf("record audit: %d rows in one statement, at most %d", len(rows), MaxAuditRowsPerInsert)
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO audit_records (id, at, kind, action, actor, username, user_id, role, target, status, result, source, trace_id, detail) VALUES `)
	args := make([]any, 0, len(rows)*auditColumns)
	for i, r := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := range auditColumns {
			if c > 0 {
				b.WriteByte(',')
			}
			b.WriteString("$" + strconv.Itoa(i*auditColumns+c+1))
		}
		b.WriteByte(')')
		args = append(args, r.ID, r.At, r.Kind, r.Action, r.Actor, r.Username, r.UserID, r.Role, r.Target, r.Status, r.Result, r.Source, r.TraceID, r.Detail)
	}
	b.WriteString(` ON CONFLICT (id) DO NOTHING`)
	tag, err := q.Exec(ctx, b.String(), args...)
	if err != nil {
		return 0, fmt.Errorf("record %d audit records (first %s): %w", len(rows), rows[0].ID, err)
	}
	return tag.RowsAffected(), nil
}

// AuditFilter selects audit records: each set field narrows the list.
type AuditFilter struct {
	// Username or UserID: the user who acted.
	Username, UserID string
	Target           string
	// Since (inclusive) and Until (exclusive); zero: unbounded.
	Since, Until time.Time
	// Before: only records older than this one in the list's order
	// (newest first: by time, then id); zero: from the newest.
	BeforeAt time.Time
	BeforeID string
}

// ListAuditRows returns up to limit records matching f, newest first.
func ListAuditRows(ctx context.Context, q Querier, f AuditFilter, limit int) ([]*AuditRow, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if f.Username != "" {
		add("username = ?", f.Username)
	}
	if f.UserID != "" {
		add("user_id = ?", f.UserID)
	}
	if f.Target != "" {
		add("target = ?", f.Target)
	}
	if !f.Since.IsZero() {
		add("at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		add("at < ?", f.Until)
	}
	if !f.BeforeAt.IsZero() {
		args = append(args, f.BeforeAt, f.BeforeID)
		where = append(where, fmt.Sprintf("(at, id) < ($%d, $%d)", len(args)-1, len(args)))
	}
	sql := "SELECT id, at, kind, action, actor, username, user_id, role, target, status, result, source, trace_id, detail FROM audit_records"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	sql += fmt.Sprintf(" ORDER BY at DESC, id DESC LIMIT $%d", len(args))
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit records: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*AuditRow, error) {
		r := &AuditRow{}
		err := row.Scan(&r.ID, &r.At, &r.Kind, &r.Action, &r.Actor, &r.Username, &r.UserID, &r.Role, &r.Target,
			&r.Status, &r.Result, &r.Source, &r.TraceID, &r.Detail)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list audit records: %w", err)
	}
	return out, nil
}

// DeleteAuditRows removes records older than cutoff.
func DeleteAuditRows(ctx context.Context, q Querier, cutoff time.Time) (int64, error) {
	tag, err := q.Exec(ctx, "DELETE FROM audit_records WHERE at < $1", cutoff)
	if err != nil {
		return 0, fmt.Errorf("delete old audit records: %w", err)
	}
	return tag.RowsAffected(), nil
}
