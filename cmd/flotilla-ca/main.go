// Command flotilla-ca runs Flotilla's fleet CA on its own, against an external
// NATS (FLOTILLA_NATS_URL), signing with FLOTILLA_CA_CERT_FILE and
// FLOTILLA_CA_KEY_FILE (created if neither exists). See libs/svcmain for every
// setting.
package main

import (
	"context"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/ca"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("ca", version, svcmain.Needs{CA: true}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		return ca.New(ctx, ca.Deps{NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider, Version: d.Version,
			CertFile: d.Config.CACertFile, KeyFile: d.Config.CAKeyFile, Replicas: d.Config.StreamReplicas})
	})
}
