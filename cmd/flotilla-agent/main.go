// Command flotilla-agent is Flotilla's node agent, run on every instance:
// `flotilla-agent --gateway ... --ca-file ... --token-file ...` runs the
// agent, and `flotilla-agent node` the node software of the local provider.
// See agent.NewCommand for every flag.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"flotilla.dev/flotilla/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	agent.Version = version
	cmd := agent.NewCommand()
	cmd.Use = "flotilla-agent"
	cmd.Version = version
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-agent:", err)
		stop()
		os.Exit(1)
	}
}
