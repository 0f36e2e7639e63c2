// Command flotilla is Flotilla's command-line tool: `flotilla up` runs the
// whole of Flotilla in one process, `flotilla admin` bootstraps it, and
// `flotilla cluster` inspects a running one through its API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla:", err)
		stop()
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "Flotilla provisions and runs fleets of data-platform instances",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	agent.Version = version
	agentCmd := agent.NewCommand()
	agentCmd.Hidden = true // started by the local provider, not by operators
	root.AddCommand(newUp(), newAdmin(), newCluster(), agentCmd)
	return root
}
