// Package ca is the fleet certificate authority: agent identity certificates from CSRs, instance server certificates, renewal and revocation. This build answers readiness checks; issuing arrives with the provisioning path.
package ca

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/rpc"
)

// Deps are what the service is built from; the caller owns them.
type Deps struct {
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
}

// Service is the running ca service.
type Service struct {
	rpc *rpc.Service
}

// New registers the service's endpoints on the bus.
func New(_ context.Context, d Deps) (*Service, error) {
	if d.NATS == nil || d.Log == nil || d.TracerProvider == nil {
		return nil, errors.New("ca: NATS, Log and TracerProvider are required")
	}
	s, err := rpc.New(d.NATS, subjects.CA, d.Version, "Flotilla certificate authority", d.Log.With("service", subjects.CA), d.TracerProvider, nil)
	if err != nil {
		return nil, err
	}
	return &Service{rpc: s}, nil
}

// Run serves until ctx ends, then stops taking requests.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return s.rpc.Stop()
}
