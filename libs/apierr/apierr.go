// Package apierr defines the kinds of error Flotilla reports to callers and maps
// them, in one place, to gRPC status codes (and so to HTTP status codes through
// the REST gateway) and to bus reply codes.
//
// Code that rejects a request returns one of the constructors here; anything
// else is an internal error, which callers see only as an error id while the log
// carries the detail.
package apierr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
)

// Error is an error with a kind and a message safe to show the caller.
type Error struct {
	Kind Kind
	// Field names the offending request field, for KindInvalid.
	Field string
	// Message is shown to the caller as is.
	Message string
	// Err is the cause, kept for logs and errors.Is; never shown to callers.
	Err error
}

// Error returns the caller-facing message.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Invalid reports a request field that breaks a rule: the message reads "<field>: <rule>".
func Invalid(field, rule string, args ...any) *Error {
	r := fmt.Sprintf(rule, args...)
	msg := r
	if field != "" {
		msg = field + ": " + r
	}
	return &Error{Kind: KindInvalid, Field: field, Message: msg}
}

// NotFound reports that the named thing does not exist.
func NotFound(what, id string) *Error {
	return &Error{Kind: KindNotFound, Message: fmt.Sprintf("%s %q not found", what, id)}
}

// Conflict reports a clash with the current state (a stale version, a name in use, ...).
func Conflict(format string, args ...any) *Error {
	return &Error{Kind: KindConflict, Message: fmt.Sprintf(format, args...)}
}

// Unauthenticated reports a missing or invalid credential.
func Unauthenticated(format string, args ...any) *Error {
	return &Error{Kind: KindUnauthenticated, Message: fmt.Sprintf(format, args...)}
}

// PermissionDenied reports an authenticated caller that may not do this.
func PermissionDenied(format string, args ...any) *Error {
	return &Error{Kind: KindPermissionDenied, Message: fmt.Sprintf(format, args...)}
}

// Unavailable reports a dependency that cannot be reached now; retrying may work.
func Unavailable(format string, args ...any) *Error {
	return &Error{Kind: KindUnavailable, Message: fmt.Sprintf(format, args...)}
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

// Is reports whether err is an *Error of the given kind.
func Is(err error, kind Kind) bool { return err != nil && KindOf(err) == kind }

// Public returns what a caller may see of err: its kind and message. For an
// internal error it logs the detail with a fresh error id and returns a message
// carrying only that id.
func Public(ctx context.Context, log *slog.Logger, err error) (Kind, string) {
	var e *Error
	if errors.As(err, &e) && e.Kind != KindInternal {
		return e.Kind, e.Message
	}
	id := newErrorID()
	if log != nil {
		log.ErrorContext(ctx, "internal error", "error_id", id, "error", err)
	}
	return KindInternal, "internal error (error id " + id + ")"
}

func newErrorID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var grpcCodes = map[Kind]codes.Code{
	KindInternal:         codes.Internal,
	KindInvalid:          codes.InvalidArgument,
	KindNotFound:         codes.NotFound,
	KindConflict:         codes.Aborted, // 409 through the REST gateway
	KindUnauthenticated:  codes.Unauthenticated,
	KindPermissionDenied: codes.PermissionDenied,
	KindUnavailable:      codes.Unavailable,
}

// GRPCStatus converts err to a gRPC status error with only caller-safe text.
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
	kind, msg := Public(ctx, log, err)
	return status.Error(grpcCodes[kind], msg)
}

// FromCode rebuilds an error from a bus reply's code and message.
func FromCode(code, message string) *Error {
	k := Kind(code)
	if _, ok := grpcCodes[k]; !ok {
		k = KindInternal
	}
	return &Error{Kind: k, Message: message}
}
