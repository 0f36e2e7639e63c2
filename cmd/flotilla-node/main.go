// Command flotilla-node is the node software of the local provider: an HTTP
// (or HTTPS) server whose page names the instance, started and supervised by
// the agent of every local VM. It is node.Run on the standard library's flag
// package, nothing more, so that a hundred local VMs starting at once spend
// their CPU on the agents, not on starting a large binary a hundred times.
// `flotilla-agent node` runs the same server.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"flotilla.dev/flotilla/agent/node"
)

func main() {
	var cfg node.Config
	f := flag.NewFlagSet("flotilla-node", flag.ExitOnError)
	cfg.Bind(f)
	_ = f.Parse(os.Args[1:]) // ExitOnError
	if f.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "flotilla-node: unexpected argument %q\n", f.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := node.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-node:", err)
		stop()
		os.Exit(1)
	}
}
