package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// rollouts are the managers' rollouts: an agent upgrade or a configuration
// refresh taken to many instances a group at a time. `instances
// upgrade-agent` and `instances refresh-configuration` start them.
var rollouts = &resource{
	plural: "rollouts", singular: "rollout", aliases: []string{"rollout"},
	item: &inventoryv1.Rollout{}, list: &inventoryv1.ListRolloutsResponse{}, noUpdate: true,
	columns: columns("NAME=name", "ACTION=action", "STATE=state", "INSTANCES=instances", "AT ONCE=parallel", "MESSAGE=message",
		"STARTED=createTime", "ID=id"),
	filters: []listFilter{
		{flag: "state", param: "state", usage: "only rollouts in this state (running, paused, stopped, cancelled or done)"},
	},
	listExample: "  flotilla rollouts list --state stopped",
}

// rolloutsCommand is `flotilla rollouts`: list, show, watch, pause, resume
// and cancel rollouts.
func rolloutsCommand(opts *clientOptions) *cobra.Command {
	control := func(verb, short string) *cobra.Command {
		return rollouts.actionCommand(opts, action{verb: verb, short: short,
			example: "  flotilla rollouts " + verb + " upgrade-agent-20261205-101500-3f9c", answer: &inventoryv1.Rollout{},
			line: func(_, m proto.Message) string {
				r := m.(*inventoryv1.Rollout)
				return fmt.Sprintf("rollout %s: %s (%s)", r.GetName(), r.GetState(), r.GetMessage())
			}})
	}
	return rollouts.group(opts, "Rollouts: an agent upgrade or a configuration refresh taken to many instances a group at a time, by the managers",
		`  flotilla instances upgrade-agent --all          # starts one
  flotilla rollouts list
  flotilla rollouts watch upgrade-agent-20261205-101500-3f9c
  flotilla rollouts resume upgrade-agent-20261205-101500-3f9c   # after a failure stopped it`,
		rollouts.listCommand(opts), rollouts.getCommand(opts), watchRolloutCommand(opts),
		control("pause", "Pause rollouts: no more instances are asked (those asked finish)"),
		control("resume", "Resume paused rollouts, or rollouts a failure stopped (the failed instances stay failed; the next are asked)"),
		control("cancel", "Cancel rollouts: the instances not asked yet are not"))
}

// watchRolloutCommand is `flotilla rollouts watch`: follow a rollout,
// a line for each instance asked and each that ended, until it ends.
func watchRolloutCommand(opts *clientOptions) *cobra.Command {
	var timeout time.Duration = 20 * time.Minute
	cmd := &cobra.Command{
		Use:   "watch NAME|ID",
		Short: "Follow a rollout until it ends (or pauses): a line for each instance asked and each that ended; non-zero if any was not done",
		Example: `  flotilla rollouts watch upgrade-agent-20261205-101500-3f9c
  flotilla rollouts watch $(flotilla rollouts list --state running -o json | jq -r '.rollouts[0].id')`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: rollouts.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			it, err := s.find(cmd.Context(), rollouts, args[0])
			if err != nil {
				return err
			}
			return followRollout(cmd.Context(), s, it.(*inventoryv1.Rollout), nil, timeout, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().Var(durationFlag{&timeout}, "timeout", "give up watching after this long (the rollout goes on)")
	return cmd
}

// rolloutFlags are the flags of the commands that start a rollout.
type rolloutFlags struct {
	parallel        int
	instanceTimeout time.Duration
	wait            waitOptions
}

func (f *rolloutFlags) add(cmd *cobra.Command, parallel int, what, until string) {
	cmd.Flags().IntVar(&f.parallel, "parallel", parallel, "how many "+what+" at once: each group is waited for before the next is asked")
	f.instanceTimeout = 10 * time.Minute
	cmd.Flags().Var(durationFlag{&f.instanceTimeout}, "instance-timeout", "how long an instance asked may take before it counts as failed (30s to 24h)")
	f.wait.flags(cmd, until)
}

// startRollout has the managers roll action out to targets (in this order),
// f.parallel at a time, and with --wait follows it (followRollout). from
// says, for an asked line, what an instance had before (its agent's
// version), by id.
func startRollout(ctx context.Context, s *session, action vocab.RolloutAction, targets []*inventoryv1.Instance, f rolloutFlags, w, errOut io.Writer) error {
	req := &inventoryv1.CreateRolloutRequest{Action: string(action), Parallel: int32(f.parallel), TimeoutSeconds: int32(f.instanceTimeout / time.Second)}
	before := map[string]*inventoryv1.Instance{}
	for _, in := range targets {
		req.InstanceIds = append(req.InstanceIds, in.GetId())
		before[in.GetId()] = in
	}
	body, err := protojson.Marshal(req)
	if err != nil {
		return err
	}
	ro := &inventoryv1.Rollout{}
	if err := s.call(ctx, http.MethodPost, rollouts.path(), body, ro); err != nil {
		return err
	}
	fmt.Fprintf(w, "rollout %s: %d %s, %d at a time\n", ro.GetName(), len(ro.GetInstances()), plural(len(ro.GetInstances()), "instance", "instances"), ro.GetParallel())
	if !f.wait.wait {
		fmt.Fprintf(w, "the managers roll it out; follow it with: flotilla rollouts watch %s\n", ro.GetName())
		return nil
	}
	return followRollout(ctx, s, ro, before, f.wait.timeout, w, errOut)
}

// plural is one or many, by n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// followRollout reads ro until it ends (done, cancelled, or stopped or
// paused with no instance still asked), printing a line as each instance
// is asked and as it ends (refusals and failures on errOut). The error
// names the instances not done, and those not asked after a failure.
// before, if not nil, is the instances as they were, by id.
func followRollout(ctx context.Context, s *session, ro *inventoryv1.Rollout, before map[string]*inventoryv1.Instance, timeout time.Duration, w, errOut io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	shown := map[string]int{} // instance id → 1: its asked line shown, 2: its end too
	action := vocab.RolloutAction(ro.GetAction())
	for {
		for _, e := range ro.GetInstances() {
			st := vocab.RolloutInstanceState(e.GetState())
			if shown[e.GetInstanceId()] == 0 && (st == vocab.RolloutAsked || st == vocab.RolloutSucceeded || st == vocab.RolloutFailed) {
				fmt.Fprintln(w, rolloutAsked(ro, e, before[e.GetInstanceId()]))
				shown[e.GetInstanceId()] = 1
			}
			if shown[e.GetInstanceId()] == 2 {
				continue
			}
			switch st {
			case vocab.RolloutSucceeded:
				if action == vocab.RolloutUpgradeAgent {
					fmt.Fprintf(w, "%s: agent %s connected\n", e.GetInstanceName(), ro.GetAgentVersion())
				} else {
					fmt.Fprintf(w, "%s: configuration refreshed, the node software serving again\n", e.GetInstanceName())
				}
			case vocab.RolloutSkipped:
				fmt.Fprintf(w, "%s: %s\n", e.GetInstanceName(), e.GetMessage())
			case vocab.RolloutRefused:
				fmt.Fprintf(errOut, "%s %s: %s\n", action, e.GetInstanceName(), e.GetMessage())
			case vocab.RolloutFailed:
				if action == vocab.RolloutUpgradeAgent {
					fmt.Fprintf(errOut, "%s: the agent's upgrade failed: %s\n", e.GetInstanceName(), e.GetMessage())
				} else {
					fmt.Fprintf(errOut, "%s: the configuration refresh failed: %s; the instance runs on\n", e.GetInstanceName(), e.GetMessage())
				}
			default:
				continue
			}
			shown[e.GetInstanceId()] = 2
		}
		if rolloutOver(ro) {
			return rolloutResult(ro)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up watching after %v: rollout %s goes on (flotilla rollouts watch %s)", timeout, ro.GetName(), ro.GetName())
		case <-tick.C:
		}
		read := &inventoryv1.Rollout{}
		if err := s.call(ctx, http.MethodGet, rollouts.path()+"/"+ro.GetId(), nil, read); err == nil {
			ro = read
		} // else a manager restarting: read again on the next tick
	}
}

// rolloutAsked is the line of an instance asked: what it is asked to do.
func rolloutAsked(ro *inventoryv1.Rollout, e *inventoryv1.RolloutInstance, before *inventoryv1.Instance) string {
	if vocab.RolloutAction(ro.GetAction()) == vocab.RolloutUpgradeAgent {
		if v := before.GetAgent().GetVersion(); v != "" {
			return fmt.Sprintf("%s: the agent upgrades from version %s to %s", e.GetInstanceName(), v, ro.GetAgentVersion())
		}
		return fmt.Sprintf("%s: the agent upgrades to version %s", e.GetInstanceName(), ro.GetAgentVersion())
	}
	return e.GetInstanceName() + ": the agent writes the template's files and environment again and restarts the node software"
}

// rolloutOver says whether the rollout has ended for a watcher: done or
// cancelled, or stopped or paused with no instance still asked.
func rolloutOver(ro *inventoryv1.Rollout) bool {
	switch vocab.RolloutState(ro.GetState()) {
	case vocab.RolloutRunning:
		return false
	case vocab.RolloutDone, vocab.RolloutCancelled:
		return true
	}
	for _, e := range ro.GetInstances() {
		if vocab.RolloutInstanceState(e.GetState()) == vocab.RolloutAsked {
			return false
		}
	}
	return true
}

// rolloutResult is nil when every instance of an ended rollout was done (or
// had nothing to do), else an error naming those not done, those not asked,
// and what to do about them.
func rolloutResult(ro *inventoryv1.Rollout) error {
	var notDone, notAsked []string
	for _, e := range ro.GetInstances() {
		switch vocab.RolloutInstanceState(e.GetState()) {
		case vocab.RolloutRefused, vocab.RolloutFailed:
			notDone = append(notDone, e.GetInstanceName())
		case vocab.RolloutPending, vocab.RolloutNotAsked:
			notAsked = append(notAsked, e.GetInstanceName())
		}
	}
	var why []string
	if len(notDone) > 0 {
		f := "the configurations of %s were not refreshed"
		if vocab.RolloutAction(ro.GetAction()) == vocab.RolloutUpgradeAgent {
			f = "the agents of %s were not upgraded"
		}
		why = append(why, fmt.Sprintf(f, strings.Join(notDone, ", ")))
	}
	if len(notAsked) > 0 {
		after := "after the failure"
		if st := vocab.RolloutState(ro.GetState()); st != vocab.RolloutStopped {
			after = "the rollout is " + string(st)
		}
		why = append(why, fmt.Sprintf("those of %s were not asked, %s", strings.Join(notAsked, ", "), after))
	}
	if len(why) == 0 {
		return nil
	}
	msg := strings.Join(why, "; ") + " (see above)"
	switch vocab.RolloutState(ro.GetState()) {
	case vocab.RolloutStopped, vocab.RolloutPaused:
		msg += fmt.Sprintf("; rollout %s is %s: flotilla rollouts resume %s goes on with the others, flotilla rollouts cancel %s ends it",
			ro.GetName(), ro.GetState(), ro.GetName(), ro.GetName())
	}
	return errors.New(msg)
}
