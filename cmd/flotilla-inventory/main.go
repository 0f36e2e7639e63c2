// Command flotilla-inventory runs Flotilla's inventory service on its own, against an
// external NATS (FLOTILLA_NATS_URL) and PostgreSQL (FLOTILLA_DATABASE_URL);
// see libs/svcmain for every setting.
package main

import (
	"context"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/inventory"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("inventory", version, svcmain.Needs{Database: true}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		return inventory.New(ctx, inventory.Deps{Pool: d.Pool, NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider,
			Version: d.Version, StreamReplicas: d.Config.StreamReplicas})
	})
}
