package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// refreshConfigurationCommand is `flotilla instances
// refresh-configuration`: the agents of the instances named (or of every
// running instance of a template) write their template's files and
// environment again and restart the node software, a group at a time, in a
// rollout the managers drive.
func refreshConfigurationCommand(opts *clientOptions) *cobra.Command {
	var (
		tpls []string
		f    rolloutFlags
	)
	cmd := &cobra.Command{
		Use:   "refresh-configuration NAME|ID... | --template TEMPLATE...",
		Short: "Have running instances' agents write their template's files and environment again, secrets read anew, and restart the node software, on the same VM",
		Long: `Have running instances' agents write the file and env actions of their
template as it is now again, their secrets read anew (a rotated instance or
fleet secret, a changed file), and restart the node software on the same VM:
a second or so without it. Scripts and packages are not run again: an agent
refuses, changing nothing, when the template's are not those its VM's setup
ran (reprovision those instances).

The managers roll the refresh out (flotilla rollouts): --parallel instances
at a time (1), each group waited for until its agents say how it went before
the next is asked, so the nodes restart one after another; a refresh that
fails (or says nothing within --instance-timeout) stops the rollout. The
rollout goes on if this command ends, or a manager restarts; --wait follows
it to its end.`,
		Example: `  flotilla instances secrets set web-1 db-password          # a new value, then:
  flotilla instances refresh-configuration web-1 --wait
  flotilla secrets set registry-token --template small   # a new fleet value, then:
  flotilla instances refresh-configuration --template small --wait`,
		ValidArgsFunction: instances.completeNames(opts),
		Args: func(_ *cobra.Command, args []string) error {
			if (len(tpls) == 0) == (len(args) == 0) {
				return errors.New("name instances, or give --template (not both)")
			}
			if f.parallel < 1 {
				return fmt.Errorf("--parallel: %d is not a number of instances: at least 1", f.parallel)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx, w := cmd.Context(), cmd.OutOrStdout()
			ids, err := templateIDs(ctx, s, tpls)
			if err != nil {
				return err
			}
			targets, err := chosen(ctx, s, args, func(in *inventoryv1.Instance) bool {
				return slices.Contains(ids, in.GetTemplateId()) && vocab.State(in.GetState()) == vocab.StateRunning
			})
			if err != nil {
				return err
			}
			if len(targets) == 0 {
				fmt.Fprintf(w, "no instance of %s is running\n", strings.Join(tpls, ", "))
				return nil
			}
			return startRollout(ctx, s, vocab.RolloutRefreshConfiguration, targets, f, w, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringArrayVar(&tpls, "template", nil, "every running instance of this template (name or id); repeat for more")
	f.add(cmd, 1, "instances refresh", "until the rollout ends, showing each instance asked and refreshed")
	return cmd
}

// templateIDs finds the templates --template names, by name or id.
func templateIDs(ctx context.Context, s *session, names []string) ([]string, error) {
	return idsOf(ctx, s, templates, "--template", names)
}

// idsOf finds the ids of r's items named (names or ids), for flag.
func idsOf(ctx context.Context, s *session, r *resource, flag string, names []string) ([]string, error) {
	var ids []string
	for _, name := range names {
		t, err := s.find(ctx, r, name)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, name, err)
		}
		ids = append(ids, stringField(t, "id"))
	}
	return ids, nil
}
