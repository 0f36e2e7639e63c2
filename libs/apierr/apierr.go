// Package apierr defines the errors Flotilla reports to callers and maps them,
// in one place, to gRPC statuses (and so to HTTP statuses and JSON bodies
// through the REST gateway) and to bus replies.
//
// Every error has a kind (what the caller should do: fix the request, retry,
// log in...), a stable machine-readable reason (which rule it broke:
// version_mismatch, in_use, lifecycle_busy...), a message for people and, for
// a bad field, the field's name. Clients branch on the reason, never on the
// message. Code that rejects a request returns one of the constructors here;
// anything else is an internal error, which callers see only as an error id
// while the log carries the detail.
package apierr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
)

// Kind classifies an error by what the caller should do about it.
type Kind string

// The kinds of error. Their string values are the codes used in bus replies.
const (
	KindInternal         Kind = "internal"
	KindInvalid          Kind = "invalid_argument"
	KindNotFound         Kind = "not_found"
	KindConflict         Kind = "conflict"
	KindUnauthenticated  Kind = "unauthenticated"
	KindPermissionDenied Kind = "permission_denied"
	KindUnavailable      Kind = "unavailable"
	KindExhausted        Kind = "resource_exhausted"
)

// Error is an error with a kind, a reason and a message safe to show the caller.
type Error struct {
	Kind   Kind
	Reason Reason
	// Field names the offending request field, for ReasonInvalidField.
	Field string
	// Message is shown to the caller as is.
	Message string
	// RetryAfter, when set, is how long the caller should wait before trying
	// again (Retry-After in HTTP, RetryInfo in gRPC).
	RetryAfter time.Duration
	// Err is the cause, kept for logs and errors.Is; never shown to callers.
	Err error
}

// Error returns the caller-facing message.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func newError(reason Reason, format string, args []any) *Error {
	return &Error{Kind: reason.Kind(), Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Invalid reports a request field that breaks a rule: the message reads
// "<field>: <rule>" and the reason is invalid_field. With no field it reports
// a request that is wrong as a whole (malformed_request).
func Invalid(field, rule string, args ...any) *Error {
	if field == "" {
		return newError(ReasonMalformedRequest, rule, args)
	}
	e := newError(ReasonInvalidField, rule, args)
	e.Field, e.Message = field, field+": "+e.Message
	return e
}

// CheckID reports, as an invalid field, an id that is not a resource id:
// every Flotilla resource is named by a UUID in its canonical lower-case
// form, which is also how it appears in bus subjects.
func CheckID(field, id string) error {
	if u, err := uuid.Parse(id); err != nil || u.String() != id {
		return Invalid(field, "%q is not an id: ids are UUIDs such as 0190c3e1-0000-7000-8000-000000000000", id)
	}
	return nil
}

// Malformed reports a request that cannot be decoded or is wrong as a whole.
func Malformed(format string, args ...any) *Error {
	return newError(ReasonMalformedRequest, format, args)
}

// TooLarge reports a request, or the field named (if any), larger than a
// limit the message states. A REST body over the gateway's cap is answered
// 413 with it; anything else too large is a 400.
func TooLarge(field, format string, args ...any) *Error {
	e := newError(ReasonTooLarge, format, args)
	if field != "" {
		e.Field, e.Message = field, field+": "+e.Message
	}
	return e
}

// Unsupported reports a request for something Flotilla does not do (yet).
func Unsupported(field, format string, args ...any) *Error {
	e := newError(ReasonUnsupported, format, args)
	if field != "" {
		e.Field, e.Message = field, field+": "+e.Message
	}
	return e
}

// NotFound reports that the named thing does not exist.
func NotFound(what, id string) *Error {
	return newError(ReasonNotFound, "%s %q not found", []any{what, id})
}

// Conflict reports a clash with the current state; reason says which
// (version_mismatch, already_exists, in_use, lifecycle_busy, invalid_state,
// concurrent_change). It panics on a reason of another kind, a programming
// error.
func Conflict(reason Reason, format string, args ...any) *Error {
	if reason.Kind() != KindConflict {
		panic(fmt.Sprintf("apierr: %q is not a conflict reason", reason))
	}
	return newError(reason, format, args)
}

// Unauthenticated reports a missing or invalid credential.
func Unauthenticated(format string, args ...any) *Error {
	return newError(ReasonUnauthenticated, format, args)
}

// PermissionDenied reports an authenticated caller that may not do this.
func PermissionDenied(format string, args ...any) *Error {
	return newError(ReasonPermissionDenied, format, args)
}

// PasswordChangeRequired reports a caller who must change the password an
// admin set before doing anything else.
func PasswordChangeRequired(format string, args ...any) *Error {
	return newError(ReasonPasswordChangeRequired, format, args)
}

// Unavailable reports a dependency that cannot be reached now; retrying may work.
func Unavailable(format string, args ...any) *Error {
	return newError(ReasonUnavailable, format, args)
}

// TooManyAttempts reports that the caller must wait retryAfter before
// trying again.
func TooManyAttempts(retryAfter time.Duration, format string, args ...any) *Error {
	e := newError(ReasonTooManyAttempts, format, args)
	e.RetryAfter = retryAfter
	return e
}

// KindOf returns the kind of err: the kind of the first *Error in its chain, or
// KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// ReasonOf returns the reason of err: that of the first *Error in its chain,
// or internal.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}

// Is reports whether err is an *Error of the given kind.
func Is(err error, kind Kind) bool { return err != nil && KindOf(err) == kind }

// Public returns what a caller may see of err: a copy of its *Error without
// the cause. For an internal error it logs the detail with a fresh error id
// and returns an error whose message carries only that id.
func Public(ctx context.Context, log *slog.Logger, err error) *Error {
	var e *Error
	if errors.As(err, &e) && e.Kind != KindInternal {
		return &Error{Kind: e.Kind, Reason: e.reason(), Field: e.Field, Message: e.Message, RetryAfter: e.RetryAfter}
	}
	id := newErrorID()
	if log != nil {
		log.ErrorContext(ctx, "internal error", "error_id", id, "error", err)
	}
	return &Error{Kind: KindInternal, Reason: ReasonInternal, Message: "internal error (error id " + id + ")"}
}

// reason is e's reason, or its kind's default when none was set.
func (e *Error) reason() Reason {
	if e.Reason != "" {
		return e.Reason
	}
	return defaultReason(e.Kind, e.Field)
}

func newErrorID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
