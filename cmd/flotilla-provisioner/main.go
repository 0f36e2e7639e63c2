// Command flotilla-provisioner runs Flotilla's provisioner on its own, against
// an external NATS (FLOTILLA_NATS_URL). FLOTILLA_LOCAL_ROOT enables the local
// provider; new agents are told to reach FLOTILLA_AGENT_GATEWAY_ADDR. See
// libs/svcmain for every setting.
package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/provisioner"
	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("provisioner", version, svcmain.Needs{}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		var drivers []driver.Driver
		if d.Config.LocalRoot != "" {
			cmd := strings.Fields(d.Config.AgentCommand)
			if len(cmd) == 0 {
				exe, err := os.Executable()
				if err != nil {
					return nil, err
				}
				cmd = []string{filepath.Join(filepath.Dir(exe), "flotilla-agent")}
			}
			drv, err := local.New(local.Config{Root: d.Config.LocalRoot, AgentCommand: cmd, Log: d.Log.With("provider", local.Name)})
			if err != nil {
				return nil, err
			}
			drivers = append(drivers, drv)
		}
		return provisioner.New(ctx, provisioner.Deps{NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider, Version: d.Version,
			Drivers: drivers, AgentGatewayAddr: d.Config.AgentGatewayAddr, StreamReplicas: d.Config.StreamReplicas})
	})
}
