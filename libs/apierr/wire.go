package apierr

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Domain is the ErrorInfo domain of Flotilla's gRPC errors.
const Domain = "flotilla.dev"

// Bus reply headers carrying an error's reason and field beside nats micro's
// error code (the kind) and description (the message).
const (
	HeaderReason     = "Flotilla-Error-Reason"
	HeaderField      = "Flotilla-Error-Field"
	HeaderRetryAfter = "Flotilla-Retry-After" // a Go duration
)

var grpcCodes = map[Kind]codes.Code{
	KindInternal:         codes.Internal,
	KindInvalid:          codes.InvalidArgument,
	KindNotFound:         codes.NotFound,
	KindConflict:         codes.Aborted, // 409 through the REST gateway
	KindUnauthenticated:  codes.Unauthenticated,
	KindPermissionDenied: codes.PermissionDenied,
	KindUnavailable:      codes.Unavailable,
	KindExhausted:        codes.ResourceExhausted, // 429
}

// GRPCStatus converts err to a gRPC status error with only caller-safe text
// and an ErrorInfo detail {reason, domain "flotilla.dev", metadata {field}};
// a bad field also gets a BadRequest field violation.
func GRPCStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if !errors.As(err, &e) {
		if _, ok := status.FromError(err); ok {
			return err // already a status with caller-safe text
		}
	}
	return GRPCStatusOf(Public(ctx, log, err)).Err()
}

// GRPCStatusOf returns the status of a caller-safe error (see Public).
func GRPCStatusOf(e *Error) *status.Status {
	st := status.New(grpcCodes[e.Kind], e.Message)
	info := &errdetails.ErrorInfo{Reason: string(e.reason()), Domain: Domain}
	if e.Field != "" {
		info.Metadata = map[string]string{"field": e.Field}
	}
	details := []protoadapt.MessageV1{info}
	if e.Field != "" {
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: e.Field, Description: e.Message}}})
	}
	if e.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	withDetails, derr := st.WithDetails(details...)
	if derr != nil {
		return st
	}
	return withDetails
}

// FromStatus rebuilds an error from a gRPC status: its reason and field from
// the ErrorInfo detail, or the defaults of the code's kind.
func FromStatus(st *status.Status) *Error {
	e := &Error{Kind: KindInternal, Message: st.Message()}
	for k, c := range grpcCodes {
		if c == st.Code() {
			e.Kind = k
		}
	}
	if st.Code() == codes.Unimplemented {
		e.Kind, e.Reason = KindInvalid, ReasonUnsupported
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == Domain {
				e.Reason, e.Field = Reason(d.GetReason()), d.GetMetadata()["field"]
			}
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	e.Reason = e.reason()
	return e
}

// FromBus rebuilds an error from a bus reply: the code (a kind), the
// message and the Flotilla headers (none from an older peer).
func FromBus(code, message string, header map[string][]string) *Error {
	k := Kind(code)
	if _, ok := grpcCodes[k]; !ok {
		k = KindInternal
	}
	get := func(name string) string {
		if v := header[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	reason, field := get(HeaderReason), get(HeaderField)
	e := &Error{Kind: k, Reason: Reason(reason), Field: field, Message: message}
	if d, err := time.ParseDuration(get(HeaderRetryAfter)); err == nil && d > 0 {
		e.RetryAfter = d
	}
	if e.Reason == "" || e.Reason.Kind() != k {
		e.Reason = defaultReason(k, field)
	}
	return e
}

// BusHeaders are the headers a bus reply carries for a caller-safe error,
// besides micro's code and description.
func (e *Error) BusHeaders() map[string][]string {
	h := map[string][]string{HeaderReason: {string(e.reason())}}
	if e.Field != "" {
		h[HeaderField] = []string{e.Field}
	}
	if e.RetryAfter > 0 {
		h[HeaderRetryAfter] = []string{e.RetryAfter.String()}
	}
	return h
}

// ItemParts is err as one item of a batch's answer says it (kind, reason
// and message; the endpoints that take many items answer each so): all
// empty for nil, and an internal error logged and named by an id, as
// Public does.
func ItemParts(ctx context.Context, log *slog.Logger, err error) (kind, reason, message string) {
	if err == nil {
		return "", "", ""
	}
	e := Public(ctx, log, err)
	return string(e.Kind), string(e.Reason), e.Message
}

// FromItem rebuilds one item's error from a batch's answer (see
// ItemParts): nil when kind is empty.
func FromItem(kind, reason, message string) error {
	if kind == "" {
		return nil
	}
	return FromBus(kind, message, map[string][]string{HeaderReason: {reason}})
}
