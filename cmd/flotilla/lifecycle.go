package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
)

// pollInterval is how often a wait redraws its steps, and reads the
// instance when it cannot follow its events.
const pollInterval = 400 * time.Millisecond

// waitOptions are the flags of a command that can wait for the
// provisioner to finish.
type waitOptions struct {
	wait    bool
	timeout time.Duration
	// quiet is how long the events may be quiet before the instance is
	// read all the same (quietRead when 0).
	quiet time.Duration
}

func (o *waitOptions) flags(cmd *cobra.Command, until string) {
	cmd.Flags().BoolVarP(&o.wait, "wait", "w", false, "wait "+until+", showing each step; exit non-zero if a step fails")
	o.timeout = 20 * time.Minute
	cmd.Flags().Var(durationFlag{&o.timeout}, "timeout", "with --wait: give up waiting after this long (the work goes on)")
}

// stepsOf lists, in order, the steps the provisioner goes through for an
// action on in: a step seen after others of the list means those before it
// were done, even if no read caught them, and all were done once the action
// is complete.
func stepsOf(a vocab.Action, in *inventoryv1.Instance) []vocab.Step {
	steps := []vocab.Step{vocab.StepQueued}
	if in.GetVmId() != "" && a != vocab.ActionProvision {
		steps = append(steps, vocab.StepStoppingVM)
	}
	switch a {
	case vocab.ActionProvision, vocab.ActionReprovision:
		steps = append(steps, vocab.StepAllocatingDisk, vocab.StepLaunchingVM, vocab.StepWaitingForAgent,
			vocab.StepRunningSetup, vocab.StepInstalling, vocab.StepStarting)
	case vocab.ActionDelete:
		if in.GetDataDisk().GetId() != "" {
			steps = append(steps, vocab.StepDeletingDisk)
		}
	}
	return steps
}

// lifecycleCommand is `flotilla instances provision|deprovision|reprovision`.
func lifecycleCommand(opts *clientOptions, action vocab.Action, short, until, example string) *cobra.Command {
	var wait waitOptions
	cmd := &cobra.Command{
		Use:               string(action) + " NAME|ID...",
		Short:             short,
		Example:           example,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var asked []*inventoryv1.Instance
			for _, a := range args {
				found, err := s.find(ctx, instances, a)
				if err != nil {
					return err
				}
				in := &inventoryv1.Instance{}
				if err := s.call(ctx, http.MethodPost, instances.path()+"/"+stringField(found, "id")+":"+string(action), []byte("{}"), in); err != nil {
					return fmt.Errorf("%s %s: %w", action, stringField(found, "name"), err)
				}
				asked = append(asked, in)
				if !wait.wait {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", in.GetName(), describeState(in))
				}
			}
			if !wait.wait {
				return nil
			}
			for _, in := range asked {
				if err := waitFor(ctx, s, in, action, wait, cmd.OutOrStdout()); err != nil {
					return err
				}
			}
			return nil
		},
	}
	wait.flags(cmd, until)
	return cmd
}

// describeState is an instance's state with its step or reason.
func describeState(in *inventoryv1.Instance) string {
	if in.GetStateDetail() != "" {
		return in.GetState() + " (" + in.GetStateDetail() + ")"
	}
	return in.GetState()
}

// instanceDeleted is what `instances delete` does with the API's answer:
// report it, and with --wait follow the deletion until the record is gone.
func instanceDeleted(ctx context.Context, s *session, answer []byte, wait waitOptions, w io.Writer) error {
	in := &inventoryv1.Instance{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(answer, in); err != nil {
		return fmt.Errorf("delete: decode the answer: %w", err)
	}
	if in.GetState() != string(vocab.StateDeleting) {
		fmt.Fprintf(w, "instance %s deleted\n", in.GetName())
		return nil
	}
	if !wait.wait {
		fmt.Fprintf(w, "instance %s: deleting (its VM and data disk are destroyed, then the record)\n", in.GetName())
		return nil
	}
	return waitFor(ctx, s, in, vocab.ActionDelete, wait, w)
}

// waitFor follows an instance after action until it is done (exit 0) or
// has failed (an error naming the step and the reason), showing each step
// with the times the server gave it. It follows the instance's events
// (GET /api/v1/events?follow=true) from the action's answer on, so every
// step is seen as it happens and the wait ends with the event that ends
// it; it reads the instance when the feed cannot be followed, or has been
// quiet for quietRead.
func waitFor(ctx context.Context, s *session, in *inventoryv1.Instance, action vocab.Action, o waitOptions, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	p := newProgress(w, isTerminal(w), in, action)
	changes, feedDown := followInstance(ctx, s, in)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var lastErr error
	errSince, lastChange := time.Time{}, time.Now()
	for next := in; ; {
		if at := next.GetUpdateTime(); at.IsValid() && at.AsTime().Before(in.GetUpdateTime().AsTime()) {
			next = in // an older view than the one shown (a read overtaken by events)
		}
		in = next
		done, err := p.observe(in, changedAt(in))
		p.draw(time.Now())
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			p.finish()
			why := "interrupted"
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				why = fmt.Sprintf("gave up waiting after %v", o.timeout)
			}
			return fmt.Errorf("%s: %s is still %s; the work goes on (flotilla instances get %s)", why, in.GetName(), describeState(in), in.GetName())
		case c := <-changes:
			lastChange = time.Now()
			if c.deleted {
				if action != vocab.ActionDelete {
					p.finish()
					return fmt.Errorf("%s of %s was superseded: the instance was deleted", action, in.GetName())
				}
				left := "" // the deleted record's detail: what a forced delete left
				if vocab.State(c.in.GetState()) == vocab.StateDeleted {
					left = c.in.GetStateDetail()
				}
				p.gone(c.at, left)
				p.draw(time.Now())
				return nil
			}
			next = c.in
			continue
		case <-feedDown:
			feedDown = nil // read on every tick from now on
			continue
		case <-tick.C:
			if feedDown != nil && time.Since(lastChange) < cmp.Or(o.quiet, quietRead) {
				continue // the feed brings every change; the tick redraws
			}
		}
		read := &inventoryv1.Instance{}
		err = s.call(ctx, http.MethodGet, instancesPath+"/"+in.GetId(), nil, read)
		switch {
		case err == nil:
			next, lastErr, lastChange = read, nil, time.Now() // quiet for another quietRead
		case isNotFound(err) && action == vocab.ActionDelete:
			p.gone(time.Now(), "")
			p.draw(time.Now())
			return nil
		case ctx.Err() != nil:
			// reported above on the next turn
		default:
			// Ride out a restart of the server; not a minute of errors.
			if lastErr == nil {
				errSince = time.Now()
			}
			lastErr = err
			if time.Since(errSince) > time.Minute {
				p.finish()
				return fmt.Errorf("read %s: %w", in.GetName(), err)
			}
		}
	}
}

// clockMargin is how far before the action's answer a wait asks for the
// instance's events (stamped by another host's clock in a cluster).
const clockMargin = 5 * time.Second

// quietRead is how long a wait that follows an instance's events goes
// without one before it reads the instance all the same (an event lost
// to a broken stream, a server that does not send them).
const quietRead = 5 * time.Second

// instanceChange is the instance as an event left it; deleted: the event
// of its deletion (in: the instance before it), at its time.
type instanceChange struct {
	in      *inventoryv1.Instance
	deleted bool
	at      time.Time
}

// followInstance follows in's events from its last change on (the action's
// answer) until ctx ends, sending the instance as each left it. feedDown
// is closed when the events cannot be followed (the first request
// refused or unanswered); a stream broken later is followed again.
func followInstance(ctx context.Context, s *session, in *inventoryv1.Instance) (<-chan instanceChange, <-chan struct{}) {
	changes, down := make(chan instanceChange, 64), make(chan struct{})
	q := url.Values{"entity": {subjects.NounInstance}, "id": {in.GetId()}, "follow": {"true"}, "limit": {"1000"}}
	if t := in.GetUpdateTime(); t.IsValid() {
		// The stream's clock may trail the inventory's: a margin, and
		// the wait passes over what is older than the answer.
		q.Set("since", t.AsTime().Add(-clockMargin).UTC().Format(time.RFC3339Nano))
	}
	go func() {
		err := followEvents(ctx, s, io.Discard, "/api/v1/events?"+q.Encode(), "event", func(e *eventsv1.Event) {
			data, err := e.GetData().UnmarshalNew()
			changed, ok := data.(*inventoryv1.Instance)
			if err != nil || !ok {
				return
			}
			select {
			case changes <- instanceChange{in: changed, at: e.GetTime().AsTime(),
				deleted: e.GetType() == subjects.EventType(subjects.NounInstance, string(vocab.VerbDeleted))}:
			case <-ctx.Done():
			}
		})
		if err != nil {
			close(down)
		}
	}()
	return changes, down
}

// changedAt is when in last changed, by the server's clock: the time of
// the step it is at.
func changedAt(in *inventoryv1.Instance) time.Time {
	if t := in.GetUpdateTime(); t.IsValid() {
		return t.AsTime()
	}
	return time.Now()
}

// stepLine is one step of the progress shown.
type stepLine struct {
	step       vocab.Step
	state      string // "active", "done", "failed"
	start, end time.Time
	reason     string
}

// progress shows an instance's steps: on a terminal, a block of lines
// (one per step, with its state and time) redrawn in place; otherwise a
// line each time a step starts, ends or fails.
type progress struct {
	w      io.Writer
	tty    bool
	name   string
	action vocab.Action
	order  []vocab.Step
	steps  []*stepLine
	result string // the last line, once done or failed
	drawn  int    // lines drawn last time (terminal)
	spin   int
	// forced: a forced delete, whose steps that destroy something in the
	// cloud go on past a refusal; only its end says which were refused.
	forced bool
}

func newProgress(w io.Writer, tty bool, in *inventoryv1.Instance, action vocab.Action) *progress {
	name := in.GetName()
	p := &progress{w: w, tty: tty, name: name, action: action, order: stepsOf(action, in),
		forced: action == vocab.ActionDelete && in.GetDeleteForced()}
	verb := strings.ToUpper(string(action[:1])) + string(action[1:]) + "ing"
	if action == vocab.ActionDelete {
		verb = "Deleting"
	}
	fmt.Fprintf(w, "%s %s\n", verb, name)
	return p
}

// observe takes in the instance as read at now; done is true once the
// action is complete, and err is set when it failed.
func (p *progress) observe(in *inventoryv1.Instance, now time.Time) (done bool, err error) {
	state := vocab.State(in.GetState())
	switch {
	case state == vocab.StateFailed && p.action == vocab.ActionDelete && in.GetDeleteForced():
		// The unforced attempt before the delete was forced failed; the
		// forced one is queued behind it, and ends only with the record gone.
		return false, nil
	case state == vocab.StateFailed:
		step, reason := splitFailure(in.GetStateDetail())
		p.fail(step, reason, now)
		return true, fmt.Errorf("%s of %s failed at %s: %s", p.action, p.name, step, reason)
	case state.Transitional():
		if wanted := desiredOf(p.action); vocab.Desired(in.GetDesiredState()) != wanted {
			p.finish()
			return true, fmt.Errorf("%s of %s was superseded: it was asked to be %s meanwhile", p.action, p.name, in.GetDesiredState())
		}
		p.at(vocab.Step(in.GetStateDetail()), now)
		return false, nil
	case p.complete(in):
		p.closeActive(now)
		p.doneUpTo(len(p.order), now)
		p.result = p.name + " is " + in.GetState()
		if u := in.GetAddresses().GetUrl(); u != "" && state == vocab.StateRunning {
			p.result += ": " + u
		}
		if !p.tty {
			fmt.Fprintln(p.w, p.name+": "+strings.TrimPrefix(p.result, p.name+" is "))
		}
		return true, nil
	}
	p.finish()
	return true, fmt.Errorf("%s of %s: the instance is %s, not in progress (asked: %s)", p.action, p.name, describeState(in), in.GetDesiredState())
}

// complete reports whether in is where the action takes it.
func (p *progress) complete(in *inventoryv1.Instance) bool {
	state := vocab.State(in.GetState())
	switch p.action {
	case vocab.ActionProvision, vocab.ActionReprovision:
		return state == vocab.StateRunning && !in.GetReprovisionPending()
	case vocab.ActionDeprovision:
		return state.AtRest()
	}
	return false
}

func desiredOf(a vocab.Action) vocab.Desired {
	switch a {
	case vocab.ActionDeprovision:
		return vocab.DesiredDeprovisioned
	case vocab.ActionDelete:
		return vocab.DesiredDeleted
	}
	return vocab.DesiredProvisioned
}

// splitFailure splits a failed instance's detail ("running-setup: setupActions[1]: script
// exited 1") into its step and reason.
func splitFailure(detail string) (vocab.Step, string) {
	step, reason, ok := vocab.SplitFailure(detail)
	if !ok {
		return "unknown step", detail
	}
	return step, reason
}

// at records that the instance is at step.
func (p *progress) at(step vocab.Step, now time.Time) {
	if step == "" {
		return
	}
	if cur := p.active(); cur != nil && cur.step == step {
		return
	}
	p.closeActive(now)
	if i := slices.Index(p.order, step); i > 0 {
		p.doneUpTo(i, now)
	}
	p.add(&stepLine{step: step, state: "active", start: now})
}

// doneUpTo shows the steps of the action from the last shown up to (not
// including) order[i] as done: they were, between two reads.
func (p *progress) doneUpTo(i int, now time.Time) {
	if len(p.steps) == 0 {
		return
	}
	if j := slices.Index(p.order, p.steps[len(p.steps)-1].step); j >= 0 && j < i {
		for _, skipped := range p.order[j+1 : i] {
			p.add(&stepLine{step: skipped, state: "done", start: now, end: now})
		}
	}
}

func (p *progress) add(l *stepLine) {
	p.steps = append(p.steps, l)
	if !p.tty {
		if l.state == "done" {
			fmt.Fprintf(p.w, "%s: %s %s\n", p.name, l.step, p.ended(l.step))
		} else {
			fmt.Fprintf(p.w, "%s: %s ...\n", p.name, l.step)
		}
	}
}

func (p *progress) active() *stepLine {
	if n := len(p.steps); n > 0 && p.steps[n-1].state == "active" {
		return p.steps[n-1]
	}
	return nil
}

func (p *progress) closeActive(now time.Time) {
	if cur := p.active(); cur != nil {
		cur.state, cur.end = "done", now
		if !p.tty {
			fmt.Fprintf(p.w, "%s: %s %s in %s\n", p.name, cur.step, p.ended(cur.step), elapsed(cur.end.Sub(cur.start)))
		}
	}
}

// ended is the word for a step's end on a line of its own: "done", but
// "ended" for a forced delete's step that may have left its resource in
// the cloud, which only the delete's last event tells (a line once
// written stays).
func (p *progress) ended(step vocab.Step) string {
	if p.forced && slices.Contains(vocab.DeleteSteps, step) {
		return "ended"
	}
	return "done"
}

func (p *progress) fail(step vocab.Step, reason string, now time.Time) {
	cur := p.active()
	if cur == nil || cur.step != step {
		p.closeActive(now)
		cur = &stepLine{step: step, start: now}
		p.steps = append(p.steps, cur)
	}
	cur.state, cur.end, cur.reason = "failed", now, reason
	p.result = fmt.Sprintf("%s failed at %s", p.name, step)
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %s failed: %s\n", p.name, step, reason)
	}
}

// gone records that a deleted instance's record is gone; detail is its
// deleted event's (what a forced delete left in the cloud).
func (p *progress) gone(now time.Time, detail string) {
	p.closeActive(now)
	p.doneUpTo(len(p.order), now)
	// A step of a forced delete the cloud refused went on all the same:
	// on a terminal its line shows what it left; elsewhere a line of its
	// own says so, and the last line says what it left.
	left := vocab.StepsLeft(detail)
	for _, l := range p.steps {
		if slices.Contains(left, l.step) {
			l.state, l.reason = "failed", "left in the cloud"
			if !p.tty {
				fmt.Fprintf(p.w, "%s: %s failed: %s\n", p.name, l.step, l.reason)
			}
		}
	}
	p.result = p.name + " is deleted"
	if detail != "" {
		p.result += " (" + detail + ")"
	}
	if !p.tty {
		fmt.Fprintln(p.w, p.name+": "+strings.TrimPrefix(p.result, p.name+" is "))
	}
}

// finish closes the display without a result.
func (p *progress) finish() { p.draw(time.Now()) }

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// draw redraws the block of step lines on a terminal.
func (p *progress) draw(now time.Time) {
	if !p.tty {
		return
	}
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	p.spin++
	lines := 0
	for _, l := range p.steps {
		var mark, detail string
		switch l.state {
		case "active":
			mark, detail = spinner[p.spin%len(spinner)], elapsed(now.Sub(l.start))
		case "done":
			mark, detail = "✓", elapsed(l.end.Sub(l.start))
		case "failed":
			mark, detail = "✗", l.reason
		}
		fmt.Fprintf(&b, "\r\x1b[2K  %s %-18s %s\n", mark, l.step, detail)
		lines++
	}
	if p.result != "" {
		fmt.Fprintf(&b, "\r\x1b[2K%s\n", p.result)
		lines++
	}
	p.drawn = lines
	_, _ = io.WriteString(p.w, b.String())
}

// elapsed formats a step's duration briefly.
func elapsed(d time.Duration) string {
	if d < time.Second {
		return max(d, 0).Round(time.Millisecond).String()
	}
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// instanceChanged says how new SSL settings reach a provisioned instance's
// node, which serves the certificate it has: a refresh issues or fetches
// one for its names and certificate as they are now; its ACME order's
// domains are the bootstrap's, so new ones take a reprovision.
func instanceChanged(before, after proto.Message) string {
	b, okB := before.(*inventoryv1.Instance)
	a, okA := after.(*inventoryv1.Instance)
	if !okB || !okA || vocab.State(a.GetState()).AtRest() || proto.Equal(b.GetSsl(), a.GetSsl()) {
		return ""
	}
	return fmt.Sprintf("its node serves the certificate it has: flotilla instances refresh-certificate %s to serve one for the new ssl settings", a.GetName())
}

// templateChanged is what a template's change calls for: its running
// instances keep the version they were brought up with until reprovisioned,
// but a change of its file and env actions alone reaches them with a
// configuration refresh, on the same VMs.
func templateChanged(before, after proto.Message) string {
	t, ok := after.(*inventoryv1.Template)
	if !ok {
		return ""
	}
	if b, ok := before.(*inventoryv1.Template); ok && onlyFilesChanged(b, t) {
		return fmt.Sprintf("its file and env actions reach running instances of %s on the same VMs with flotilla instances refresh-configuration --template %s --wait",
			t.GetName(), t.GetName())
	}
	return fmt.Sprintf("running instances keep the version of %s they run until reprovisioned (flotilla instances list --template %s shows which); "+
		"flotilla rollouts start reprovision --template %s --wait reprovisions them one at a time",
		t.GetName(), t.GetName(), t.GetName())
}

// onlyFilesChanged says whether a template changed from b to a in its file
// and env actions and nothing a running instance needs a new VM for (its
// tags aside): what a configuration refresh applies.
func onlyFilesChanged(b, a *inventoryv1.Template) bool {
	split := func(t *inventoryv1.Template) (*inventoryv1.Template, []*inventoryv1.SetupAction) {
		rest, files := proto.Clone(t).(*inventoryv1.Template), []*inventoryv1.SetupAction(nil)
		rest.Version, rest.UpdateTime, rest.Tags, rest.SetupActions = 0, nil, nil, nil
		for _, act := range t.GetSetupActions() {
			if typ := vocab.SetupAction(act.GetType()); typ == vocab.SetupFile || typ == vocab.SetupEnv {
				files = append(files, act)
			} else {
				rest.SetupActions = append(rest.SetupActions, act)
			}
		}
		return rest, files
	}
	bRest, bFiles := split(b)
	aRest, aFiles := split(a)
	return proto.Equal(bRest, aRest) && !slices.EqualFunc(bFiles, aFiles, func(x, y *inventoryv1.SetupAction) bool { return proto.Equal(x, y) })
}

// networkChanged is what a change of a network's ACME settings calls for:
// its running instances order as before until each is refreshed.
func networkChanged(before, after proto.Message) string {
	b, okB := before.(*inventoryv1.Network)
	a, okA := after.(*inventoryv1.Network)
	if !okB || !okA || vocab.HTTPSStrategy(a.GetHttpsStrategy()) != vocab.HTTPSACME || proto.Equal(b.GetAcme(), a.GetAcme()) {
		return ""
	}
	return fmt.Sprintf("running instances on %s order as before until refreshed: flotilla instances refresh-certificate NAME (flotilla instances list --network %s)",
		a.GetName(), a.GetName())
}
