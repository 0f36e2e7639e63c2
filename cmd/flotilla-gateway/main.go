// Command flotilla-gateway runs Flotilla's public API on its own, against an external
// NATS (FLOTILLA_NATS_URL); it listens on FLOTILLA_HTTP_ADDR and
// FLOTILLA_GRPC_ADDR. See libs/svcmain for every setting.
package main

import (
	"context"
	"errors"
	"net"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/gateway"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("gateway", version, svcmain.Needs{Listen: true}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		httpL, err := net.Listen("tcp", d.Config.HTTPAddr)
		if err != nil {
			return nil, err
		}
		grpcL, err := net.Listen("tcp", d.Config.GRPCAddr)
		if err != nil {
			return nil, errors.Join(err, httpL.Close())
		}
		return gateway.New(ctx, gateway.Deps{NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider, Version: d.Version,
			HTTPListener: httpL, GRPCListener: grpcL})
	})
}
