package app

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// AuditMessage is one record of the audit stream as it arrived: its
// message id, subject, headers and protobuf payload.
type AuditMessage struct {
	ID, Subject string
	Header      func(name string) string
	Data        []byte
}

// ErrMalformedAudit marks a record that can never be projected.
var ErrMalformedAudit = errors.New("malformed audit record")

// ProjectAudit writes one record of the audit stream into audit_records,
// in the one shape GET /api/v1/audit answers, whichever service wrote it;
// a record seen before (a redelivery) changes nothing. A record of a type
// this build does not know is kept with what its headers say. A record
// that cannot be decoded is ErrMalformedAudit.
func (a *App) ProjectAudit(ctx context.Context, m AuditMessage) error {
	row, err := auditRow(m)
	if err != nil {
		return fmt.Errorf("%w %s on %s: %v", ErrMalformedAudit, m.ID, m.Subject, err)
	}
	return a.auditRows.write(ctx, a, row)
}

// auditWriter writes the rows of concurrent ProjectAudit calls together:
// the first caller to find no write running writes every row waiting (up
// to adapters.MaxAuditRowsPerInsert at a time, in one statement and one
// commit) and then whatever arrived meanwhile; the others wait for the
// write that carried their row. Under load the audit trail costs one
// commit per batch rather than one per record.
type auditWriter struct {
	mu      sync.Mutex
	pending []*auditWait
	writing bool
}

type auditWait struct {
	row  *adapters.AuditRow
	done chan error
}

// auditWriteTimeout bounds one batch's write, whichever caller runs it.
const auditWriteTimeout = 30 * time.Second

func (w *auditWriter) write(ctx context.Context, a *App, row *adapters.AuditRow) error {
	me := &auditWait{row: row, done: make(chan error, 1)}
	w.mu.Lock()
	w.pending = append(w.pending, me)
	if w.writing {
		w.mu.Unlock()
		select {
		case err := <-me.done:
			return err
		case <-ctx.Done():
			return ctx.Err() // the row may still be written; a redelivery then changes nothing
		}
	}
	w.writing = true
	// The batch is everyone's: one caller's cancellation must not fail the
	// others' rows.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
	defer cancel()
	for len(w.pending) > 0 {
		batch := w.pending[:min(len(w.pending), adapters.MaxAuditRowsPerInsert)]
		w.pending = w.pending[len(batch):]
		w.mu.Unlock()
		rows := make([]*adapters.AuditRow, len(batch))
		for i, b := range batch {
			rows[i] = b.row
		}
		_, err := adapters.InsertAuditRows(wctx, a.pool, rows)
		for _, b := range batch {
			b.done <- err
		}
		w.mu.Lock()
	}
	w.writing = false
	w.pending = nil
	w.mu.Unlock()
	return <-me.done
}

// auditRow maps a record to its row.
func auditRow(m AuditMessage) (*adapters.AuditRow, error) {
	if m.ID == "" {
		return nil, errors.New("no message id")
	}
	parts := strings.Split(m.Subject, ".")
	if len(parts) != 5 || parts[0] != subjects.Root || parts[1] != "audit" {
		return nil, errors.New("not an audit subject")
	}
	kind, subjectID, verb := parts[2], parts[3], parts[4]
	r := &adapters.AuditRow{ID: m.ID, Kind: kind, Action: m.Header(bus.HeaderType), Actor: m.Header(bus.HeaderActor),
		Target: subjectID, TraceID: traceIDOf(m.Header("traceparent"))}
	if r.Action == "" {
		r.Action = kind + "." + verb
	}
	if t, err := time.Parse(time.RFC3339Nano, m.Header(bus.HeaderTime)); err == nil {
		r.At = t.UTC()
	}
	var recTime *timestamppb.Timestamp
	switch m.Header(bus.HeaderType) {
	case subjects.EventType(subjects.NounAPI, subjects.VerbCall):
		rec := &auditv1.ApiCall{}
		if err := proto.Unmarshal(m.Data, rec); err != nil {
			return nil, err
		}
		recTime = rec.GetTime()
		r.Action, r.Username, r.UserID, r.Role, r.Target = rec.GetRoute(), rec.GetUsername(), rec.GetUserId(), rec.GetRole(), rec.GetTarget()
		r.Status, r.Result, r.Source = rec.GetStatus(), resultOf(rec.GetReason(), rec.GetStatus()), rec.GetSource()
		if rec.GetTraceId() != "" {
			r.TraceID = rec.GetTraceId()
		}
		r.Detail = joinDetail(rec.GetParams(), "method="+rec.GetMethod(), "token="+rec.GetTokenKind()+":"+rec.GetTokenId())
	case subjects.EventType(subjects.NounSecret, subjects.VerbRead), subjects.EventType(subjects.NounCloudKey, subjects.VerbRead):
		rec := &secretsv1.SecretAccess{}
		if err := proto.Unmarshal(m.Data, rec); err != nil {
			return nil, err
		}
		recTime = rec.GetTime()
		if rec.GetInstanceId() != "" {
			r.Target = rec.GetInstanceId()
		}
		r.Result = "ok"
		if !rec.GetAllowed() {
			r.Result = "denied: " + rec.GetReason()
		}
		fleet := ""
		if rec.GetFleet() {
			fleet = "fleet-secret"
		}
		r.Detail = joinDetail("name="+rec.GetName(), optional("requester=", rec.GetRequesterInstanceId()), fleet)
	case subjects.EventType(subjects.NounJoinToken, subjects.VerbCreate):
		rec := &cav1.JoinTokenAudit{}
		if err := proto.Unmarshal(m.Data, rec); err != nil {
			return nil, err
		}
		recTime = rec.GetTime()
		if rec.GetActor() != "" {
			r.Actor = rec.GetActor()
		}
		r.Target, r.Source, r.Result = rec.GetInstanceId(), rec.GetSource(), "ok"
		r.Detail = joinDetail("vm="+rec.GetVmId(), "token="+rec.GetTokenId(), "until="+rec.GetExpireTime().AsTime().UTC().Format(time.RFC3339))
	default:
		if kind != subjects.NounUser {
			break // a record this build does not know: what the headers say
		}
		rec := &authv1.AuthAudit{}
		if err := proto.Unmarshal(m.Data, rec); err != nil {
			return nil, err
		}
		recTime = rec.GetTime()
		r.Action, r.Source, r.Target = rec.GetAction(), rec.GetSource(), rec.GetUserId()
		if rec.GetApiTokenId() != "" {
			r.Target = rec.GetApiTokenId()
		}
		// Who acted: the admin (or owner) named as the actor, else the
		// user the record is about (a login, a logout).
		r.Username, r.UserID = rec.GetUsername(), rec.GetUserId()
		if actor := vocab.Actor(rec.GetActor()); actor.Kind() == vocab.ActorUser {
			r.Actor = string(actor)
			if actor.Name() != rec.GetUsername() {
				r.Username, r.UserID = actor.Name(), ""
			}
		}
		r.Result = "ok"
		if refusal(rec) {
			r.Result = rec.GetReason()
		}
		r.Detail = joinDetail(optional("user=", rec.GetUsername()), optional("role=", rec.GetRole()), optional("token=", rec.GetTokenId()),
			optional("", nonResult(rec)))
	}
	if actor := vocab.Actor(r.Actor); r.Username == "" && actor.Kind() == vocab.ActorUser {
		r.Username = actor.Name()
	}
	if r.At.IsZero() && recTime != nil {
		r.At = recTime.AsTime().UTC()
	}
	if r.At.IsZero() {
		return nil, errors.New("no time")
	}
	if id, err := uuid.Parse(r.UserID); err != nil || id == uuid.Nil {
		r.UserID = "" // "unknown" and the like
	}
	return r, nil
}

// refusal says whether an auth record is of something refused, its reason
// its result: a login failed or refused, a revoked token presented.
func refusal(rec *authv1.AuthAudit) bool {
	switch rec.GetAction() {
	case subjects.VerbLoginFailed, subjects.VerbLoginRefused, subjects.VerbTokenRefused:
		return true
	}
	return false
}

// nonResult is an auth record's reason where it is not its result.
func nonResult(rec *authv1.AuthAudit) string {
	if refusal(rec) {
		return ""
	}
	return rec.GetReason()
}

// resultOf is an API call's result: its error's reason, "ok", or "error"
// for a failure that named none.
func resultOf(reason string, status int32) string {
	switch {
	case reason != "":
		return reason
	case status >= 400:
		return "error"
	}
	return "ok"
}

func optional(prefix, v string) string {
	if v == "" {
		return ""
	}
	return prefix + v
}

func joinDetail(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" && !strings.HasSuffix(p, "=") && p != "token=:" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// traceIDOf is the trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>").
func traceIDOf(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 || len(parts[1]) != 32 {
		return ""
	}
	return parts[1]
}

// PurgeAudit forgets projected records the audit stream no longer keeps.
func (a *App) PurgeAudit(ctx context.Context) (int64, error) {
	return adapters.DeleteAuditRows(ctx, a.pool, a.now().Add(-bus.AuditMaxAge))
}

// ListAudit lists audit records, newest first, filtered by who acted (a
// user name or id), the target and a time range (RFC 3339).
func (a *App) ListAudit(ctx context.Context, r *auditv1.ListAuditRecordsRequest) (*auditv1.ListAuditRecordsResponse, error) {
	n, err := pageSizeOf(r.GetPageSize())
	if err != nil {
		return nil, err
	}
	f := adapters.AuditFilter{Target: r.GetTarget()}
	if u := r.GetUser(); u != "" {
		if id, err := uuid.Parse(u); err == nil && strings.EqualFold(id.String(), u) {
			f.UserID = id.String()
		} else {
			f.Username = u
		}
	}
	for _, t := range []struct {
		field, v string
		into     *time.Time
	}{{"since", r.GetSince(), &f.Since}, {"until", r.GetUntil(), &f.Until}} {
		if t.v == "" {
			continue
		}
		if *t.into, err = time.Parse(time.RFC3339Nano, t.v); err != nil {
			return nil, apierr.Invalid(t.field, "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", t.v)
		}
	}
	if tok := r.GetPageToken(); tok != "" {
		if f.BeforeAt, f.BeforeID, err = decodeAuditPage(tok); err != nil {
			return nil, err
		}
	}
	rows, err := adapters.ListAuditRows(ctx, a.pool, f, n+1)
	if err != nil {
		return nil, err
	}
	out := &auditv1.ListAuditRecordsResponse{}
	rows, out.NextPageToken = page(rows, n, func(last *adapters.AuditRow) string {
		return base64.RawURLEncoding.EncodeToString([]byte(last.At.UTC().Format(time.RFC3339Nano) + " " + last.ID))
	})
	for _, row := range rows {
		out.Records = append(out.Records, &auditv1.AuditRecord{Id: row.ID, Time: timestamppb.New(row.At), Kind: row.Kind,
			Action: row.Action, Actor: row.Actor, Username: row.Username, UserId: row.UserID, Role: row.Role, Target: row.Target,
			Status: row.Status, Result: row.Result, Source: row.Source, TraceId: row.TraceID, Detail: row.Detail})
	}
	return out, nil
}

func decodeAuditPage(tok string) (time.Time, string, error) {
	bad := apierr.Invalid("pageToken", "is not a token from a previous response")
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return time.Time{}, "", bad
	}
	at, id, ok := strings.Cut(string(raw), " ")
	t, err := time.Parse(time.RFC3339Nano, at)
	if !ok || err != nil || id == "" {
		return time.Time{}, "", bad
	}
	return t, id, nil
}
