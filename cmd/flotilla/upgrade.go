package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// upgradeAgentCommand is `flotilla instances upgrade-agent`: the agents of
// the instances named (or with --all, of every instance whose connected
// agent is behind the manager) replace themselves with the manager's
// version, a group at a time, in a rollout the managers drive.
func upgradeAgentCommand(opts *clientOptions) *cobra.Command {
	var (
		all bool
		f   rolloutFlags
	)
	cmd := &cobra.Command{
		Use:   "upgrade-agent NAME|ID... | --all",
		Short: "Have instances' agents replace themselves with the manager's version, a group at a time (the node software restarts)",
		Long: `Have instances' agents replace themselves with the agent of the manager's
version, on the VMs they run on: an agent takes the binary beside it if it is
already that version's (a local VM's, after its manager was upgraded), or
downloads it from the manager and checks its SHA-256, then stops the node
software, closes its stream and starts again as the new agent, which starts
the node software again (a few seconds without it). The instance must be
running (or failed) with its agent connected. An agent at the manager's
version already is left alone, so --all after each upgrade of the managers
is safe to run again.

The managers roll the upgrade out (flotilla rollouts): --parallel agents at
a time (10), each group waited for until its agents are connected at the new
version before the next group is asked; an upgrade that fails (or does not
come back within --instance-timeout) stops the rollout, so a bad release
reaches a few VMs, not all. The rollout goes on if this command ends, or a
manager restarts; --wait follows it to its end.`,
		Example: `  flotilla instances upgrade-agent web-1 --wait
  flotilla instances upgrade-agent --all --wait   # every agent behind the manager`,
		ValidArgsFunction: instances.completeNames(opts),
		Args: func(_ *cobra.Command, args []string) error {
			if all != (len(args) == 0) {
				return errors.New("name instances, or give --all (not both)")
			}
			if f.parallel < 1 {
				return fmt.Errorf("--parallel: %d is not a number of agents: at least 1", f.parallel)
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
			return startRollout(ctx, s, vocab.RolloutUpgradeAgent, targets, f, w, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every running or failed instance whose connected agent is at another version than the manager")
	f.add(cmd, 10, "agents upgrade", "until the rollout ends, showing each agent asked and connected")
	return cmd
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

// behind reports whether in's agent is one to upgrade to version.
func behind(in *inventoryv1.Instance, version string) bool {
	a := in.GetAgent()
	return vocab.AgentUpgradable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), version)
}
