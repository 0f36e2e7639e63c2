// Command flotilla is Flotilla's command-line tool: `flotilla up` runs the
// whole of Flotilla in one process, `flotilla admin` bootstraps it, and the
// client commands (`login`, `networks`, `templates`, `instances`,
// `cloud-accounts`, `users`, `tokens`, `audit`, `ca`, `cluster`, ...) drive a running one through its
// REST API.
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
		Use:     "flotilla",
		Short:   "Flotilla provisions and runs fleets of data-platform instances",
		Version: version,
		Example: `  flotilla up --data-dir ./.flotilla                       # run Flotilla here
  flotilla login --server http://127.0.0.1:7700 --username admin
  flotilla instances list`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	agent.Version = version
	agentCmd := agent.NewCommand()
	agentCmd.Hidden = true // started by the local provider, not by operators
	opts := &clientOptions{}
	root.AddCommand(newUp(), newAdmin(), newLogin(), newLogout(opts), newContext(), newCA(opts), newCluster(opts), agentCmd)
	root.AddCommand(newResourceCommands(opts)...)
	root.AddCommand(usersCommand(opts), tokensCommand(opts), auditCommand(opts), fleetEventsCommand(opts), overviewCommand(opts), passwordCommand(opts), whoamiCommand(opts),
		fleetSecretsCommand(opts), rolloutsCommand(opts))
	addCompletion(root)
	return root
}

// addCompletion adds cobra's `completion bash|zsh|fish|powershell`, with
// examples of installing each script.
func addCompletion(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	examples := map[string]string{
		"bash":       "  source <(flotilla completion bash)                       # this shell\n  flotilla completion bash > /etc/bash_completion.d/flotilla   # every new one",
		"zsh":        "  flotilla completion zsh > \"${fpath[1]}/_flotilla\"",
		"fish":       "  flotilla completion fish > ~/.config/fish/completions/flotilla.fish",
		"powershell": "  flotilla completion powershell | Out-String | Invoke-Expression",
	}
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(flotilla completion bash)\n  flotilla completion zsh > \"${fpath[1]}/_flotilla\""
		for _, sh := range c.Commands() {
			sh.Example = examples[sh.Name()]
		}
	}
}
