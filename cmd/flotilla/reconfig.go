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

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// refreshConfigurationCommand is `flotilla instances
// refresh-configuration`: the agents of the instances named (or of every
// running instance of a template) write their template's files and
// environment again and restart the node software, a group at a time
// (roll).
func refreshConfigurationCommand(opts *clientOptions) *cobra.Command {
	var (
		tpls     []string
		parallel int
		wait     waitOptions
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

Instances are refreshed --parallel at a time (1), each group waited for
until its agents say how it went before the next is asked, so the nodes
restart one after another; a refresh that fails (or says nothing within
--timeout) stops the groups after it. --wait waits for the last group too.`,
		Example: `  flotilla instances secrets set web-1 db-password          # a new value, then:
  flotilla instances refresh-configuration web-1 --wait
  flotilla secrets set registry-token --template small   # a new fleet value, then:
  flotilla instances refresh-configuration --template small --wait`,
		ValidArgsFunction: instances.completeNames(opts),
		Args: func(_ *cobra.Command, args []string) error {
			if (len(tpls) == 0) == (len(args) == 0) {
				return errors.New("name instances, or give --template (not both)")
			}
			if parallel < 1 {
				return fmt.Errorf("--parallel: %d is not a number of instances: at least 1", parallel)
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
			return roll(targets, parallel, wait.wait, cmd.ErrOrStderr(), "the configurations of %s were not refreshed",
				func(in *inventoryv1.Instance) (bool, error) {
					if err := s.call(ctx, http.MethodPost, instancesPath+"/"+in.GetId()+":refresh-configuration", []byte("{}"), in); err != nil {
						return false, fmt.Errorf("refresh-configuration %s: %w", in.GetName(), err)
					}
					fmt.Fprintf(w, "%s: the agent writes the template's files and environment again and restarts the node software\n", in.GetName())
					return true, nil
				}, func(in *inventoryv1.Instance) error {
					return waitForRefresh(ctx, s, in, wait.timeout, w)
				})
		},
	}
	cmd.Flags().StringArrayVar(&tpls, "template", nil, "every running instance of this template (name or id); repeat for more")
	cmd.Flags().IntVar(&parallel, "parallel", 1, "how many instances refresh at once: each group is waited for before the next is asked")
	wait.flags(cmd, "until each agent says how its refresh went (the last group too)")
	return cmd
}

// waitForRefresh reads in until its agent reports the configuration
// refresh asked after in was read: succeeded, or failed (an error).
func waitForRefresh(ctx context.Context, s *session, in *inventoryv1.Instance, timeout time.Duration, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	asked := in.GetUpdateTime().AsTime()
	for {
		read := &inventoryv1.Instance{}
		err := s.call(ctx, http.MethodGet, instancesPath+"/"+in.GetId(), nil, read)
		if err == nil && read.GetUpdateTime().AsTime().After(asked) {
			switch read.GetAgentProgress() {
			case vocab.AgentProgress(vocab.StepRefreshingConfiguration, vocab.ProgressSucceeded):
				fmt.Fprintf(w, "%s: configuration refreshed, the node software serving again\n", in.GetName())
				return nil
			case vocab.AgentProgress(vocab.StepRefreshingConfiguration, vocab.ProgressFailed):
				return fmt.Errorf("%s: the configuration refresh failed: %s; the instance runs on", in.GetName(), read.GetAgentProgressMessage())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting after %v: the agent of %s has not said how its configuration refresh went (flotilla instances events %s)",
				timeout, in.GetName(), in.GetName())
		case <-tick.C:
		}
	}
}

// templateIDs finds the templates --template names, by name or id.
func templateIDs(ctx context.Context, s *session, names []string) ([]string, error) {
	var ids []string
	for _, name := range names {
		t, err := s.find(ctx, templates, name)
		if err != nil {
			return nil, fmt.Errorf("--template %s: %w", name, err)
		}
		ids = append(ids, stringField(t, "id"))
	}
	return ids, nil
}
