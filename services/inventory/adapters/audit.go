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

// InsertAuditRow writes a record unless one with its id is there already
// (a redelivery), and reports whether it wrote it.
func InsertAuditRow(ctx context.Context, q Querier, r *AuditRow) (bool, error) {
	tag, err := q.Exec(ctx, `INSERT INTO audit_records (id, at, kind, action, actor, username, user_id, role, target, status, result, source, trace_id, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING`,
		r.ID, r.At, r.Kind, r.Action, r.Actor, r.Username, r.UserID, r.Role, r.Target, r.Status, r.Result, r.Source, r.TraceID, r.Detail)
	if err != nil {
		return false, fmt.Errorf("record audit %s: %w", r.ID, err)
	}
	return tag.RowsAffected() == 1, nil
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
