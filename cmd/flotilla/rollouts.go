package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	detail:      rolloutInstances,
}

// rolloutInstances is a rollout's instances as get shows them: each one's
// state, when it was asked and ended, and why it was refused or failed.
func rolloutInstances(w io.Writer, it proto.Message) error {
	r := it.(*inventoryv1.Rollout)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\n%s: %s\nINSTANCE\tSTATE\tASKED\tENDED\tWHY\n", r.GetName(), dash(r.GetMessage()))
	when := func(t *timestamppb.Timestamp) string {
		if t == nil {
			return "-"
		}
		return ago(t.AsTime())
	}
	for _, e := range r.GetInstances() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.GetInstanceName(), e.GetState(), when(e.GetAskTime()), when(e.GetEndTime()), dash(e.GetMessage()))
	}
	return tw.Flush()
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
	return rollouts.group(opts, "Rollouts: an agent upgrade, a configuration refresh or a reprovision taken to many instances a group at a time, by the managers",
		`  flotilla instances upgrade-agent --all          # starts one
  flotilla rollouts start reprovision --template small --wait
  flotilla rollouts list
  flotilla rollouts watch upgrade-agent-20261205-101500-3f9c
  flotilla rollouts resume upgrade-agent-20261205-101500-3f9c   # after a failure stopped it`,
		startRolloutCommand(opts), rollouts.listCommand(opts), rollouts.getCommand(opts), watchRolloutCommand(opts),
		control("pause", "Pause rollouts: no more instances are asked (those asked finish)"),
		control("resume", "Resume paused rollouts, or rollouts a failure stopped (the failed instances stay failed; the next are asked)"),
		control("cancel", "Cancel rollouts: the instances not asked yet never are (those asked finish)"))
}

// startRolloutCommand is `flotilla rollouts start`: a rollout of an
// action to the instances named, those of templates, or all, chosen by the
// managers.
func startRolloutCommand(opts *clientOptions) *cobra.Command {
	var (
		tpls []string
		all  bool
		f    rolloutFlags
	)
	cmd := &cobra.Command{
		Use:   "start upgrade-agent|refresh-configuration|reprovision NAME|ID... | --template TEMPLATE... | --all",
		Short: "Start a rollout: an action taken to many instances by the managers, a group at a time, a failure stopping it",
		Long: `Start a rollout of an action to the instances named (in that order), or to
those of the templates given (or all) that it applies to now:

  upgrade-agent          running or failed instances whose connected agent is
                         at another version than the managers'
  refresh-configuration  running instances whose agent is connected
  reprovision            running instances made from an older version of
                         their template: each gets a new VM from the template
                         as it is now (its data disk kept)

--parallel instances at a time (10 for upgrade-agent, 1 for the others),
each group waited for until it is done before the next is asked; a failure
(or an instance that takes longer than --instance-timeout) stops the
rollout. The managers drive it: it goes on if this command ends, and a
manager's restart; --wait follows it to its end.`,
		Example: `  flotilla templates apply -f small.yaml                                # a new image, say; then:
  flotilla rollouts start reprovision --template small --wait             # its instances, one at a time
  flotilla rollouts start refresh-configuration web-1 web-2 --parallel 2`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("name the action: upgrade-agent, refresh-configuration or reprovision")
			}
			given := 0
			for _, g := range []bool{len(args) > 1, len(tpls) > 0, all} {
				if g {
					given++
				}
			}
			if given != 1 {
				return errors.New("name instances, or give --template or --all (one of them)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			req := &inventoryv1.CreateRolloutRequest{Action: args[0], All: all, Parallel: int32(f.parallel), TimeoutSeconds: int32(f.instanceTimeout / time.Second)}
			if req.TemplateIds, err = templateIDs(ctx, s, tpls); err != nil {
				return err
			}
			before := map[string]*inventoryv1.Instance{}
			for _, name := range args[1:] {
				it, err := s.find(ctx, instances, name)
				if err != nil {
					return err
				}
				in := it.(*inventoryv1.Instance)
				req.InstanceIds = append(req.InstanceIds, in.GetId())
				before[in.GetId()] = in
			}
			return runRollout(ctx, s, req, before, f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringArrayVar(&tpls, "template", nil, "the instances of this template (name or id) the action applies to; repeat for more")
	cmd.Flags().BoolVar(&all, "all", false, "every instance the action applies to")
	f.add(cmd, 0, "instances", "until the rollout ends, showing each instance asked and done")
	return cmd
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
	usage := "how many " + what + " at once: each group is waited for before the next is asked"
	if parallel == 0 {
		usage += " (default 10 for upgrade-agent, 1 for the others)"
	}
	cmd.Flags().IntVar(&f.parallel, "parallel", parallel, usage)
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
	return runRollout(ctx, s, req, before, f, w, errOut)
}

// runRollout has the managers start the rollout req asks for and, with
// --wait, follows it (followRollout).
func runRollout(ctx context.Context, s *session, req *inventoryv1.CreateRolloutRequest, before map[string]*inventoryv1.Instance, f rolloutFlags, w, errOut io.Writer) error {
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
			case vocab.RolloutSucceeded, vocab.RolloutSkipped:
				fmt.Fprintln(w, rolloutEnded(ro, e))
			case vocab.RolloutRefused, vocab.RolloutFailed:
				fmt.Fprintln(errOut, rolloutEnded(ro, e))
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
	switch vocab.RolloutAction(ro.GetAction()) {
	case vocab.RolloutUpgradeAgent:
		if v := before.GetAgent().GetVersion(); v != "" {
			return fmt.Sprintf("%s: the agent upgrades from version %s to %s", e.GetInstanceName(), v, ro.GetAgentVersion())
		}
		return fmt.Sprintf("%s: the agent upgrades to version %s", e.GetInstanceName(), ro.GetAgentVersion())
	case vocab.RolloutReprovision:
		return e.GetInstanceName() + ": reprovisions: a new VM from its template as it is now, its data disk kept"
	}
	return e.GetInstanceName() + ": the agent writes the template's files and environment again and restarts the node software"
}

// rolloutEnded is the line of an instance the rollout is done with.
func rolloutEnded(ro *inventoryv1.Rollout, e *inventoryv1.RolloutInstance) string {
	name, msg, action := e.GetInstanceName(), e.GetMessage(), vocab.RolloutAction(ro.GetAction())
	switch vocab.RolloutInstanceState(e.GetState()) {
	case vocab.RolloutRefused:
		return fmt.Sprintf("%s %s: %s", action, name, msg)
	case vocab.RolloutSkipped:
		return name + ": " + msg
	case vocab.RolloutFailed:
		return fmt.Sprintf(map[vocab.RolloutAction]string{
			vocab.RolloutUpgradeAgent:         "%s: the agent's upgrade failed: %s",
			vocab.RolloutRefreshConfiguration: "%s: the configuration refresh failed: %s; the instance runs on",
			vocab.RolloutReprovision:          "%s: the reprovision failed: %s",
		}[action], name, msg)
	}
	return map[vocab.RolloutAction]string{
		vocab.RolloutUpgradeAgent:         name + ": agent " + ro.GetAgentVersion() + " connected",
		vocab.RolloutRefreshConfiguration: name + ": configuration refreshed, the node software serving again",
		vocab.RolloutReprovision:          name + ": running again, on a new VM",
	}[action]
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
		f := map[vocab.RolloutAction]string{
			vocab.RolloutUpgradeAgent:         "the agents of %s were not upgraded",
			vocab.RolloutRefreshConfiguration: "the configurations of %s were not refreshed",
			vocab.RolloutReprovision:          "%s were not reprovisioned",
		}[vocab.RolloutAction(ro.GetAction())]
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
