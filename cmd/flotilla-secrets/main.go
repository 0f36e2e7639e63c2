// Command flotilla-secrets runs Flotilla's secret broker on its own, against
// an external NATS (FLOTILLA_NATS_URL) and PostgreSQL (FLOTILLA_DATABASE_URL),
// with the master key in FLOTILLA_KMS_KEY_FILE (shared by every manager; it is
// never created here). See libs/svcmain for every setting.
package main

import (
	"context"

	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/secrets"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("secrets", version, svcmain.Needs{Database: true, KMS: true}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		k, err := kms.LoadLocal(d.Config.KMSKeyFile)
		if err != nil {
			return nil, err
		}
		return secrets.New(ctx, secrets.Deps{Pool: d.Pool, NATS: d.NATS, KMS: k, Log: d.Log, TracerProvider: d.TracerProvider,
			Version: d.Version, StreamReplicas: d.Config.StreamReplicas})
	})
}
