package rpc

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/natsx"
)

// ClientError turns a failed request to a service into an apierr error: the
// service's own error (kind and caller-safe message) as it was sent, and
// "unavailable" when nobody answers or the answer comes too late.
func ClientError(service string, err error) error {
	var se *natsx.ServiceError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return apierr.FromCode(se.Code, se.Message)
	case errors.Is(err, nats.ErrNoResponders):
		return apierr.Unavailable("the %s service is not available; try again shortly", service)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return apierr.Unavailable("the %s service did not answer in time; try again shortly", service)
	}
	return err
}
