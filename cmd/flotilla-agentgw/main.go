// Command flotilla-agentgw runs Flotilla's agentgw service on its own, against an external
// NATS (FLOTILLA_NATS_URL); see libs/svcmain for every setting.
package main

import (
	"context"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/agentgw"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("agentgw", version, svcmain.Needs{}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		return agentgw.New(ctx, agentgw.Deps{NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider, Version: d.Version})
	})
}
