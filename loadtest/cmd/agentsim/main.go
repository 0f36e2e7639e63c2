// Command agentsim simulates many Flotilla agents from this machine, for
// load tests of the agent gateway (see package agentsim): it creates
// instances of provider external through the API, provisions them, mints
// each a join token, joins each simulated agent through the real agent
// gateway with a real key and CSR, holds one mutual-TLS stream per agent
// sending heartbeats and log lines for --duration, reconnects after a
// gateway restart, reads back how many lines were stored, removes what it
// created (unless --keep) and prints one JSON summary line on standard
// output. Progress goes to standard error. It refuses any target outside
// the loopback range.
//
//	token=$(curl -s -XPOST http://127.0.0.1:7700/api/v1/login -d '{"username":"admin","password":"..."}' | jq -r .token)
//	go run ./loadtest/cmd/agentsim --api http://127.0.0.1:7700 --token "$token" --agents 1000 --duration 2m --log-rate 1
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"flotilla.dev/flotilla/loadtest/agentsim"
)

func main() {
	var cfg agentsim.Config
	flag.StringVar(&cfg.API, "api", "http://127.0.0.1:7700", "Flotilla's API base URL (loopback only)")
	flag.StringVar(&cfg.Token, "token", os.Getenv("FLOTILLA_TOKEN"), "an operator's bearer token (default $FLOTILLA_TOKEN)")
	flag.IntVar(&cfg.Agents, "agents", 10, fmt.Sprintf("agents to simulate (at most %d)", agentsim.MaxAgents))
	flag.DurationVar(&cfg.Duration, "duration", time.Minute, "how long the agents send heartbeats and lines once all are connected (at most 1h)")
	flag.Float64Var(&cfg.LogRate, "log-rate", 1, fmt.Sprintf("log lines per second per agent (at most %d lines per agent in all)", agentsim.MaxLinesPerAgent))
	flag.DurationVar(&cfg.Heartbeat, "heartbeat", agentsim.DefaultHeartbeat, "heartbeat interval")
	flag.StringVar(&cfg.Network, "network", "", "an existing network of provider external (default: one of the run's own)")
	flag.StringVar(&cfg.Template, "template", "", "an existing template of provider external (with --network)")
	flag.BoolVar(&cfg.Keep, "keep", false, "leave the instances (and the run's network and template) in place")
	flag.IntVar(&cfg.Concurrency, "concurrency", agentsim.DefaultConcurrency, "API calls and joins in flight")
	flag.IntVar(&cfg.Opening, "opening", 0, "agents opening their stream (dial, TLS handshake, hello) at once; 0: no bound")
	flag.DurationVar(&cfg.SetupTimeout, "setup-timeout", agentsim.DefaultSetupTimeout, "bound on setting every agent up, and on removing them")
	flag.Parse()
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := agentsim.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentsim:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(sum); err != nil {
		fmt.Fprintln(os.Stderr, "agentsim:", err)
		os.Exit(1)
	}
}
