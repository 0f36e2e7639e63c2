package telemetry

import (
	"context"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys added by the handler NewLogger builds.
const (
	// TraceIDKey is the attribute holding the active span's trace id (32 hex digits).
	TraceIDKey = "trace_id"
	// SpanIDKey is the attribute holding the active span's span id (16 hex digits).
	SpanIDKey = "span_id"
)

// NewLogger returns a logger writing text (or JSON when json is true) records
// at level and above to w. Records logged with the *Context methods
// (InfoContext, ErrorContext, …) whose context holds a valid span context get
// trace_id and span_id attributes, so a log line can be found from a trace and
// back. Attributes are added where the record is handled: under
// Logger.WithGroup they land inside the group.
func NewLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if json {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(NewTraceHandler(h))
}

// NewTraceHandler wraps h so that records handled with a context holding a
// valid span context get trace_id and span_id attributes.
func NewTraceHandler(h slog.Handler) slog.Handler {
	return traceHandler{inner: h}
}

type traceHandler struct {
	inner slog.Handler
}

func (h traceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(
			slog.String(TraceIDKey, sc.TraceID().String()),
			slog.String(SpanIDKey, sc.SpanID().String()),
		)
	}
	return h.inner.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{inner: h.inner.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{inner: h.inner.WithGroup(name)}
}
