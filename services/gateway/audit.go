package gateway

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// callNote collects, while a REST call is served, what its audit record
// needs and only the response or the error shows.
type callNote struct {
	// created is the id of what the call created (its answer's "id").
	created string
	// reason is the error's reason, when it failed.
	reason apierr.Reason
}

type noteKey struct{}

func noteFrom(ctx context.Context) *callNote {
	n, _ := ctx.Value(noteKey{}).(*callNote)
	return n
}

// noteResponse is a grpc-gateway forward-response option: it notes the id
// of what a REST call answered.
func noteResponse(ctx context.Context, _ http.ResponseWriter, m proto.Message) error {
	if n := noteFrom(ctx); n != nil {
		n.created = idOf(m)
	}
	return nil
}

// noteError notes the reason of a REST call's error.
func noteError(ctx context.Context, reason apierr.Reason) {
	if n := noteFrom(ctx); n != nil {
		n.reason = reason
	}
}

// idOf is the "id" of a message, or of the first message field that has
// one (CreateTokenResponse's api_token).
func idOf(m proto.Message) string {
	if m == nil {
		return ""
	}
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	if f := fields.ByName("id"); f != nil && f.Kind() == protoreflect.StringKind {
		return r.Get(f).String()
	}
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Kind() == protoreflect.MessageKind && !f.IsList() && !f.IsMap() && r.Has(f) {
			if id := idOf(r.Get(f).Message().Interface()); id != "" {
				return id
			}
		}
	}
	return ""
}

// callRecord is what an audit record says of one call.
type callRecord struct {
	rt *route
	// values are the path variables' values, in rt.vars' order.
	values []string
	// created: the id the answer names.
	created string
	status  int
	reason  apierr.Reason
}

// audit writes the record of a mutating call to FLOTILLA_AUDIT and waits
// for JetStream to store it, whatever became of the call (a refusal
// included), for up to AuditWait; a record not stored by then, or made
// while records are late or another's store has stalled, is stored later
// (lateAudits). The record names who called with which token and role,
// the route and its target, the result, the client's address and the
// trace; never a body, so never a password, token or secret. A record that
// is late, or cannot be written, is logged with everything it holds.
func (g *Gateway) audit(ctx context.Context, c callRecord) {
	if !c.rt.mutating || c.rt.rule.public {
		return
	}
	u := userFrom(ctx)
	if u == nil {
		return // not authenticated: nobody to name (logins are audited by the inventory)
	}
	now := time.Now()
	rec := &auditv1.ApiCall{UserId: u.GetUserId(), Username: u.GetUsername(), Role: u.GetRole(), TokenKind: u.GetKind(),
		TokenId: u.GetTokenId(), Route: c.rt.key, Method: c.rt.method, Status: int32(c.status), Reason: string(c.reason),
		Source: clientAddr(ctx), Time: timestamppb.New(now)}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		rec.TraceId = sc.TraceID().String()
	}
	var params []string
	for i, v := range c.values {
		if i == 0 {
			rec.Target = v
		} else if i < len(c.rt.vars) {
			params = append(params, c.rt.vars[i]+"="+v)
		}
	}
	switch {
	case rec.Target != "":
	case c.rt.self:
		rec.Target = u.GetUserId()
	default:
		rec.Target = c.created
	}
	rec.Params = strings.Join(params, " ")
	ctx = context.WithoutCancel(ctx) // a client gone does not spare the record
	msg, err := bus.NewMessage(ctx, subjects.Audit(subjects.NounAPI, u.GetUserId(), subjects.VerbCall),
		subjects.EventType(subjects.NounAPI, subjects.VerbCall), vocab.User(u.GetUsername()), now, rec)
	if err != nil {
		g.late.notWritten(ctx, rec, err)
		return
	}
	a := lateAudit{msg: msg.NATS(), rec: rec}
	if behind := g.late.behind(); behind > 0 && g.late.add(a) {
		g.log.WarnContext(ctx, "audit record late: storing it in the background", append(recordAttrs(rec), "behind", behind)...)
		return
	}
	err = g.late.storeNow(ctx, a.msg)
	switch {
	case err == nil:
	case bus.StoreAgain(err) && g.late.add(a):
		g.log.WarnContext(ctx, "audit record late: storing it in the background", append(recordAttrs(rec), "error", err)...)
	default:
		g.late.notWritten(ctx, rec, err)
	}
}

// grpcResult is the HTTP status and reason an RPC's error stands for.
func grpcResult(err error) (int, apierr.Reason) {
	if err == nil {
		return http.StatusOK, ""
	}
	st := status.Convert(err)
	return runtime.HTTPStatusFromCode(st.Code()), apierr.FromStatus(st).Reason
}

// fieldValue reads a field path ("network.id") of a request message as a
// string.
func fieldValue(m proto.Message, path string) string {
	r := m.ProtoReflect()
	names := strings.Split(path, ".")
	for i, name := range names {
		f := r.Descriptor().Fields().ByName(protoreflect.Name(name))
		if f == nil {
			return ""
		}
		if i == len(names)-1 {
			if f.Kind() == protoreflect.MessageKind {
				return ""
			}
			return r.Get(f).String()
		}
		if f.Kind() != protoreflect.MessageKind || !r.Has(f) {
			return ""
		}
		r = r.Get(f).Message()
	}
	return ""
}
