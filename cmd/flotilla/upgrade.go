package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// upgradeAgentCommand is `flotilla instances upgrade-agent`: the agents of
// the instances named (or with --all, of every instance whose connected
// agent is behind the manager) replace themselves with the manager's
// version, a group at a time (rollAgents).
func upgradeAgentCommand(opts *clientOptions) *cobra.Command {
	var (
		all      bool
		parallel int
		wait     waitOptions
	)
	cmd := &cobra.Command{
		Use:   "upgrade-agent NAME|ID... | --all",
		Short: "Have instances' agents replace themselves with the manager's version (the node software restarts)",
		Long: `Have instances' agents replace themselves with the agent of the manager's
version, on the VMs they run on: an agent takes the binary beside it if it is
already that version's (a local VM's, after its manager was upgraded), or
downloads it from the manager and checks its SHA-256, then stops the node
software, closes its stream and starts again as the new agent, which starts
the node software again (a few seconds without it). The instance must be
running (or failed) with its agent connected. An agent at the manager's
version already is left alone, so --all after each upgrade of the managers
is safe to run again.

Agents upgrade --parallel at a time (10): each group is waited for until
its agents are connected at the new version before the next group is
asked, and an upgrade that fails (or does not come back within --timeout)
stops the groups after it, so a bad release reaches a few VMs, not all.
--wait waits for the last group too.`,
		Example: `  flotilla instances upgrade-agent web-1 --wait
  flotilla instances upgrade-agent --all --wait   # every agent behind the manager`,
		ValidArgsFunction: instances.completeNames(opts),
		Args: func(_ *cobra.Command, args []string) error {
			if all != (len(args) == 0) {
				return errors.New("name instances, or give --all (not both)")
			}
			if parallel < 1 {
				return fmt.Errorf("--parallel: %d is not a number of agents: at least 1", parallel)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx, w := cmd.Context(), cmd.OutOrStdout()
			var status systemv1.Status
			if err := s.call(ctx, http.MethodGet, "/api/v1/status", nil, &status); err != nil {
				return fmt.Errorf("the manager's version: %w", err)
			}
			version := status.GetVersion()
			targets, err := chosen(ctx, s, args, func(in *inventoryv1.Instance) bool { return behind(in, version) })
			if err != nil {
				return err
			}
			if len(targets) == 0 {
				fmt.Fprintf(w, "every connected agent is at version %s\n", version)
				return nil
			}
			return rollAgents(ctx, s, targets, version, parallel, wait, w, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every running or failed instance whose connected agent is at another version than the manager")
	cmd.Flags().IntVar(&parallel, "parallel", 10, "how many agents upgrade at once: each group is waited for before the next is asked")
	wait.flags(cmd, "until each new agent is connected (the last group too)")
	return cmd
}

// rollAgents asks the agents of targets to upgrade to version, parallel at
// a time: each group's agents are waited for until they are connected at
// version before the next group is asked (the last group too with --wait).
// An instance refused (its agent gone meanwhile, say) does not stop the
// others; an upgrade that fails or does not come back in time stops the
// groups after it, as a canary does. The error names every instance not
// upgraded.
func rollAgents(ctx context.Context, s *session, targets []*inventoryv1.Instance, version string, parallel int, wait waitOptions, w, errOut io.Writer) error {
	return roll(targets, parallel, wait.wait, errOut, "the agents of %s were not upgraded", func(in *inventoryv1.Instance) (bool, error) {
		if err := askUpgrade(ctx, s, in); err != nil {
			return false, fmt.Errorf("upgrade-agent %s: %w", in.GetName(), err)
		}
		if in.GetAgent().GetVersion() == version {
			fmt.Fprintf(w, "%s: the agent is at version %s already\n", in.GetName(), version)
			return false, nil
		}
		fmt.Fprintf(w, "%s: the agent upgrades from version %s to %s\n", in.GetName(), in.GetAgent().GetVersion(), version)
		return true, nil
	}, func(in *inventoryv1.Instance) error {
		return waitForAgent(ctx, s, in, version, wait.timeout, w)
	})
}

// roll asks of each of targets (ask: false when there is nothing to wait
// for), parallel at a time, and waits for each group's asked before the
// next group is asked (the last group too when waitLast). An instance
// refused does not stop the others; one whose wait fails stops the groups
// after it, as a canary does. The error names every instance not done
// (notDone, a format naming them) and those not asked.
func roll(targets []*inventoryv1.Instance, parallel int, waitLast bool, errOut io.Writer, notDone string,
	ask func(*inventoryv1.Instance) (bool, error), wait func(*inventoryv1.Instance) error) error {
	var refused, failed, skipped []string
	for start := 0; start < len(targets); start += parallel {
		group := targets[start:min(start+parallel, len(targets))]
		last := start+parallel >= len(targets)
		if len(failed) > 0 {
			for _, in := range group {
				skipped = append(skipped, in.GetName())
			}
			continue
		}
		var asked []*inventoryv1.Instance
		for _, in := range group {
			ok, err := ask(in)
			if err != nil {
				fmt.Fprintln(errOut, err)
				refused = append(refused, in.GetName())
				continue
			}
			if ok {
				asked = append(asked, in)
			}
		}
		if last && !waitLast {
			break
		}
		for _, in := range asked {
			if err := wait(in); err != nil {
				fmt.Fprintln(errOut, err)
				failed = append(failed, in.GetName())
			}
		}
	}
	var why []string
	if n := slices.Concat(refused, failed); len(n) > 0 {
		why = append(why, fmt.Sprintf(notDone, strings.Join(n, ", ")))
	}
	if len(skipped) > 0 {
		why = append(why, "those of "+strings.Join(skipped, ", ")+" were not asked, after the failure")
	}
	if len(why) > 0 {
		return fmt.Errorf("%s (see above)", strings.Join(why, "; "))
	}
	return nil
}

// chosen is the instances named in args or, with none named, every
// instance keep lets through.
func chosen(ctx context.Context, s *session, args []string, keep func(*inventoryv1.Instance) bool) ([]*inventoryv1.Instance, error) {
	var out []*inventoryv1.Instance
	for _, a := range args {
		found, err := s.find(ctx, instances, a)
		if err != nil {
			return nil, err
		}
		out = append(out, found.(*inventoryv1.Instance))
	}
	if len(args) > 0 {
		return out, nil
	}
	items, err := s.all(ctx, instances)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if in := it.(*inventoryv1.Instance); keep(in) {
			out = append(out, in)
		}
	}
	return out, nil
}

// askUpgrade posts :upgrade-agent for in, and reads the answer into it.
// Refused as unavailable (an agent reconnecting to a restarted manager, as
// just after the managers' upgrade), it asks again every second for up to
// reconnectWait.
func askUpgrade(ctx context.Context, s *session, in *inventoryv1.Instance) error {
	deadline := time.Now().Add(reconnectWait)
	for {
		err := s.call(ctx, http.MethodPost, instancesPath+"/"+in.GetId()+":upgrade-agent", []byte("{}"), in)
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// reconnectWait is how long an upgrade refused as unavailable is asked
// again: agents reconnect within 10 s of their gateway's restart.
const reconnectWait = 30 * time.Second

// behind reports whether in's agent is one to upgrade to version.
func behind(in *inventoryv1.Instance, version string) bool {
	a := in.GetAgent()
	return vocab.AgentUpgradable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), version)
}

// waitForAgent reads in until its agent is connected at version, or the
// agent reports that its upgrade failed (an error with its reason).
func waitForAgent(ctx context.Context, s *session, in *inventoryv1.Instance, version string, timeout time.Duration, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		read := &inventoryv1.Instance{}
		err := s.call(ctx, http.MethodGet, instancesPath+"/"+in.GetId(), nil, read)
		switch {
		case err != nil:
			// A manager restarting: read again on the next tick (or stop
			// below, at the timeout).
		case read.GetAgent().GetVersion() == version && vocab.AgentStatus(read.GetAgent().GetStatus()) == vocab.AgentConnected:
			fmt.Fprintf(w, "%s: agent %s connected\n", in.GetName(), version)
			return nil
		case read.GetAgentProgress() == vocab.AgentProgress(vocab.StepUpgradingAgent, vocab.ProgressFailed) && !proto.Equal(read.GetUpdateTime(), in.GetUpdateTime()):
			return fmt.Errorf("%s: the agent's upgrade failed: %s", in.GetName(), read.GetAgentProgressMessage())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting after %v: the agent of %s is not connected at version %s yet (flotilla instances get %s)",
				timeout, in.GetName(), version, in.GetName())
		case <-tick.C:
		}
	}
}
