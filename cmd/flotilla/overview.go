package main

import (
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"

	"github.com/spf13/cobra"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// overviewCommand shows the fleet overview (GET /api/v1/overview).
func overviewCommand(opts *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "overview",
		Short: "Show the fleet at a glance: instances by state, agents connected, failed instances, certificates ending soon (GET /api/v1/overview)",
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
			return printOverview(cmd.OutOrStdout(), ov)
		},
	}
	opts.flags(cmd)
	return cmd
}

// printOverview writes the overview as a line and up to three tables:
// every state's count, the failed instances with why, and the instances
// whose node certificate ends soon.
func printOverview(w io.Writer, ov *systemv1.Overview) error {
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
