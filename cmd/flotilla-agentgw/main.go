// Command flotilla-agentgw runs Flotilla's agent gateway on its own, against
// an external NATS (FLOTILLA_NATS_URL), taking agents on FLOTILLA_AGENT_ADDR
// with a certificate for FLOTILLA_AGENT_SERVER_NAMES. See libs/svcmain for
// every setting.
package main

import (
	"context"
	"errors"
	"net"

	"flotilla.dev/flotilla/libs/svcmain"
	"flotilla.dev/flotilla/services/agentgw"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	svcmain.Main("agentgw", version, svcmain.Needs{AgentListen: true}, func(ctx context.Context, d svcmain.Deps) (svcmain.Runner, error) {
		l, err := net.Listen("tcp", d.Config.AgentAddr)
		if err != nil {
			return nil, err
		}
		gw, err := agentgw.New(ctx, agentgw.Deps{NATS: d.NATS, Log: d.Log, TracerProvider: d.TracerProvider, Version: d.Version,
			Listener: l, ServerNames: d.Config.AgentServerNames})
		if err != nil {
			return nil, errors.Join(err, l.Close())
		}
		return gw, nil
	})
}
