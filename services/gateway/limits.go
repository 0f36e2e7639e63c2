package gateway

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"flotilla.dev/flotilla/libs/apierr"
)

// Defaults of the gateway's input limits.
const (
	// DefaultMaxRequestBytes caps a request body (REST) or message (gRPC):
	// the bus carries no message over 1 MiB either.
	DefaultMaxRequestBytes = 1 << 20
	// DefaultRequestReadTimeout bounds reading a request body, so a client
	// that sends slowly cannot hold a connection and its memory.
	DefaultRequestReadTimeout = 30 * time.Second
)

// limitBody reads a request's body whole before it is handled: at most
// g.maxRequestBytes (413 otherwise) within g.readTimeout (408 otherwise).
func (g *Gateway) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		refuse := func(status int, err error) {
			w.Header().Set("Connection", "close") // the rest of the body is not read
			g.writeError(w, r, &runtime.HTTPStatusError{HTTPStatus: status, Err: err})
		}
		tooLarge := apierr.TooLarge("", "the request body is larger than the %d bytes this server accepts", g.maxRequestBytes)
		if r.ContentLength > g.maxRequestBytes {
			refuse(http.StatusRequestEntityTooLarge, tooLarge)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(g.readTimeout)) // unsupported only off a real connection
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.maxRequestBytes))
		_ = rc.SetReadDeadline(time.Time{})
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			refuse(http.StatusRequestEntityTooLarge, tooLarge)
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			refuse(http.StatusRequestTimeout, &apierr.Error{Kind: apierr.KindInvalid, Reason: apierr.ReasonRequestTimeout,
				Message: "the request body did not arrive within " + g.readTimeout.String()})
			return
		case err != nil:
			refuse(http.StatusBadRequest, apierr.Malformed("request body: %v", err))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}
