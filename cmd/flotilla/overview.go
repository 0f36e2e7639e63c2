package main

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// overviewCommand shows the fleet overview (GET /api/v1/overview).
func overviewCommand(opts *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "overview",
		Short: "Show the fleet at a glance: instances by state, agents connected, failed instances, certificates ending soon, rollouts open (GET /api/v1/overview)",
		Example: `  flotilla overview
  flotilla overview -o json | jq .states`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			ov := &systemv1.Overview{}
			if err := s.call(cmd.Context(), http.MethodGet, "/api/v1/overview", nil, ov); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, ov)
			}
			// The manager's version, for the agents at another (its
			// answer needs no login; an old server's may lack it).
			var status systemv1.Status
			_ = s.call(cmd.Context(), http.MethodGet, "/api/v1/status", nil, &status)
			var open []*inventoryv1.Rollout
			for _, st := range []vocab.RolloutState{vocab.RolloutStopped, vocab.RolloutPaused, vocab.RolloutRunning} {
				list := &inventoryv1.ListRolloutsResponse{}
				if err := s.call(cmd.Context(), http.MethodGet, rollouts.path()+"?pageSize=20&state="+string(st), nil, list); err != nil {
					return err
				}
				open = append(open, list.GetRollouts()...)
			}
			if err := printOverview(cmd.OutOrStdout(), ov, status.GetVersion()); err != nil {
				return err
			}
			return printOpenRollouts(cmd.OutOrStdout(), open)
		},
	}
	opts.flags(cmd)
	return cmd
}

// printOverview writes the overview as a line and up to four tables:
// every state's count, the connected agents by version (when one is not
// version, the manager's), the failed instances with why, and the
// instances whose node certificate ends soon.
func printOverview(w io.Writer, ov *systemv1.Overview, version string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	noun := "instances"
	if ov.GetInstances() == 1 {
		noun = "instance"
	}
	fmt.Fprintf(tw, "%d %s; agents: %d of %d connected\n\nSTATE\tINSTANCES\n", ov.GetInstances(), noun, ov.GetAgentsConnected(), ov.GetAgentsExpected())
	for _, st := range vocab.States {
		if st != vocab.StateDeleted {
			fmt.Fprintf(tw, "%s\t%d\n", st, ov.GetStates()[string(st)])
		}
	}
	if behind := agentsBehind(ov.GetAgentVersions(), version); behind > 0 {
		fmt.Fprintln(tw, "\nAGENT VERSION\tCONNECTED")
		for _, v := range slices.Sorted(maps.Keys(ov.GetAgentVersions())) {
			mark := ""
			if v == version {
				mark = " (the manager's)"
			}
			fmt.Fprintf(tw, "%s%s\t%d\n", v, mark, ov.GetAgentVersions()[v])
		}
		fmt.Fprintf(tw, "(%d at another version than the manager's %s: flotilla instances upgrade-agent --all)\n", behind, version)
	}
	if len(ov.GetFailures()) > 0 {
		fmt.Fprintln(tw, "\nFAILED\tWHY")
		for _, f := range ov.GetFailures() {
			fmt.Fprintf(tw, "%s\t%s\n", f.GetName(), f.GetStateDetail())
		}
		if more := ov.GetStates()[string(vocab.StateFailed)] - int64(len(ov.GetFailures())); more > 0 {
			fmt.Fprintf(tw, "(and %d more)\n", more)
		}
	}
	if len(ov.GetCertificatesEnding()) > 0 {
		fmt.Fprintln(tw, "\nCERTIFICATE ENDS\tINSTANCE")
		for _, c := range ov.GetCertificatesEnding() {
			end := c.GetNotAfter().AsTime()
			fmt.Fprintf(tw, "%s (%s)\t%s\n", ago(end), end.UTC().Format("2006-01-02 15:04 UTC"), c.GetName())
		}
		if more := ov.GetCertificatesEndingCount() - int64(len(ov.GetCertificatesEnding())); more > 0 {
			fmt.Fprintf(tw, "(and %d more)\n", more)
		}
	}
	return tw.Flush()
}

// printOpenRollouts writes the rollouts still open, if any, with what a
// stopped one waits for.
func printOpenRollouts(w io.Writer, open []*inventoryv1.Rollout) error {
	if len(open) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nROLLOUT\tSTATE\tINSTANCES\tMESSAGE")
	for _, r := range open {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.GetName(), r.GetState(), vocab.RolloutTally(r.GetInstances()), r.GetMessage())
	}
	return tw.Flush()
}

// agentsBehind counts the connected agents of versions at another version
// than the manager's (none when it is unknown).
func agentsBehind(versions map[string]int64, version string) int64 {
	var n int64
	for v, c := range versions {
		if version != "" && v != version {
			n += c
		}
	}
	return n
}
