package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
)

// A rollout takes one instance command (an agent upgrade, a configuration
// refresh, a reprovision) to many instances, a group at a time: the
// provisioner asks a group's instances, waits until each has done it (the
// agent connected at the new version; its refresh reported succeeded; it
// runs on a new VM), or failed, or took
// longer than the rollout's timeout, and only then asks the next group. A
// failure stops the rollout, so a bad release reaches one group, not the
// fleet. The rollout, with each instance's state, is kept in the inventory;
// its work is a message on the provisioning work queue, held while a
// provisioner drives it (under a lease of the rollout's id) and delivered
// to another if that one dies, which goes on from what the inventory says.

// Defaults of a rollout.
const (
	rolloutUpgradeParallel = 10
	rolloutTimeout         = 600
	// rolloutRetryFor is how long an instance whose agent is away at the
	// moment (reconnecting to a restarted agent gateway, as just after the
	// managers' upgrade) is asked again before it counts as refused.
	rolloutRetryFor   = 30 * time.Second
	rolloutRetryEvery = 2 * time.Second
)

// startRollout is an operator's POST /api/v1/rollouts: it chooses the
// instances and has the inventory record the rollout and queue its work.
// Named instances are taken as named (one that cannot be asked is refused
// when its turn comes, saying why); those of templates, or all, are the
// instances the action applies to now.
func (s *Service) startRollout(ctx context.Context, actor vocab.Actor, r *inventoryv1.CreateRolloutRequest) (*inventoryv1.Rollout, error) {
	action := vocab.RolloutAction(r.GetAction())
	if !action.Valid() {
		return nil, apierr.Invalid("action", "%q is not a rollout action: %q, %q or %q", r.GetAction(), vocab.RolloutUpgradeAgent,
			vocab.RolloutRefreshConfiguration, vocab.RolloutReprovision)
	}
	given := 0
	for _, g := range []bool{len(r.GetInstanceIds()) > 0, len(r.GetTemplateIds()) > 0, r.GetAll()} {
		if g {
			given++
		}
	}
	if given != 1 {
		return nil, apierr.Invalid("instanceIds", "choose the instances one way: instanceIds, templateIds or all")
	}
	ro := &inventoryv1.Rollout{Action: string(action), Parallel: r.GetParallel(), TimeoutSeconds: r.GetTimeoutSeconds(), Creator: string(actor)}
	if ro.Parallel == 0 {
		ro.Parallel = 1 // a node restarts, or a VM is replaced: one at a time
		if action == vocab.RolloutUpgradeAgent {
			ro.Parallel = rolloutUpgradeParallel
		}
	}
	if ro.TimeoutSeconds == 0 {
		ro.TimeoutSeconds = rolloutTimeout
	}
	if action == vocab.RolloutUpgradeAgent {
		if s.d.Version == "" || s.d.AgentSHA256 == "" {
			return nil, apierr.Unsupported("", "this manager has no agent binary to upgrade agents to: put the release's flotilla-agent beside its executable")
		}
		ro.AgentVersion = s.d.Version
	}
	behind := s.templateBehind()
	applies := func(ctx context.Context, in *inventoryv1.Instance) (bool, error) {
		a := in.GetAgent()
		switch action {
		case vocab.RolloutUpgradeAgent:
			return vocab.AgentUpgradable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), ro.GetAgentVersion()), nil
		case vocab.RolloutReprovision:
			if vocab.State(in.GetState()) != vocab.StateRunning {
				return false, nil
			}
			return behind(ctx, in)
		}
		return vocab.ConfigRefreshable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId()), nil
	}
	targets, err := s.rolloutTargets(ctx, r, applies)
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		why := map[vocab.RolloutAction]string{
			vocab.RolloutUpgradeAgent:         "every connected agent is at version " + ro.GetAgentVersion(),
			vocab.RolloutRefreshConfiguration: "no running instance with its agent connected",
			vocab.RolloutReprovision:          "every running instance runs its template's version",
		}[action]
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "no instance to roll %s out to: %s", action, why)
	}
	if len(targets) > vocab.MaxRolloutInstances {
		return nil, apierr.Invalid("instanceIds", "%d instances: a rollout takes at most %d; choose fewer (by name, or by template)", len(targets), vocab.MaxRolloutInstances)
	}
	for _, in := range targets {
		ro.Instances = append(ro.Instances, &inventoryv1.RolloutInstance{InstanceId: in.GetId(), InstanceName: in.GetName()})
	}
	out, err := rpc.Call(ctx, s.bus, endpoints.RolloutCreate, ro)
	if err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "rollout started", "rollout", out.GetName(), "action", action, "instances", len(targets), "parallel", ro.GetParallel(), "actor", actor)
	return out, nil
}

// templateBehind says whether an instance runs an older version of its
// template than the template's now (each template read once).
func (s *Service) templateBehind() func(context.Context, *inventoryv1.Instance) (bool, error) {
	versions := map[string]int64{}
	return func(ctx context.Context, in *inventoryv1.Instance) (bool, error) {
		v, ok := versions[in.GetTemplateId()]
		if !ok {
			t, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()})
			if err != nil {
				return false, err
			}
			v = t.GetVersion()
			versions[in.GetTemplateId()] = v
		}
		return vocab.TemplateBehind(in.GetTemplateVersion(), v) != "", nil
	}
}

// rolloutTargets are the instances r names, in its order, or those of its
// templates (or all) that applies lets through.
func (s *Service) rolloutTargets(ctx context.Context, r *inventoryv1.CreateRolloutRequest,
	applies func(context.Context, *inventoryv1.Instance) (bool, error)) ([]*inventoryv1.Instance, error) {
	if ids := r.GetInstanceIds(); len(ids) > 0 {
		for i, id := range ids {
			if err := apierr.CheckID(fmt.Sprintf("instanceIds[%d]", i), id); err != nil {
				return nil, err
			}
			if slices.Index(ids, id) != i {
				return nil, apierr.Invalid(fmt.Sprintf("instanceIds[%d]", i), "names instance %s a second time", id)
			}
		}
		got, err := s.instancesByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		out := make([]*inventoryv1.Instance, 0, len(ids))
		for _, id := range ids {
			if got[id] == nil {
				return nil, apierr.NotFound("instance", id)
			}
			out = append(out, got[id])
		}
		return out, nil
	}
	filters := []string{""}
	if t := r.GetTemplateIds(); len(t) > 0 {
		filters = t
		for i, id := range t {
			if err := apierr.CheckID(fmt.Sprintf("templateIds[%d]", i), id); err != nil {
				return nil, err
			}
			if _, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: id}); err != nil {
				return nil, err
			}
		}
	}
	var out []*inventoryv1.Instance
	seen := map[string]bool{} // a template named twice lists its instances twice
	for _, tid := range filters {
		token := ""
		for {
			page, err := rpc.Call(ctx, s.bus, endpoints.InstanceList, &inventoryv1.ListInstancesRequest{PageSize: 500, PageToken: token, TemplateId: tid})
			if err != nil {
				return nil, err
			}
			for _, in := range page.GetInstances() {
				ok, err := applies(ctx, in)
				if err != nil {
					return nil, err
				}
				if ok && !seen[in.GetId()] {
					seen[in.GetId()] = true
					out = append(out, in)
				}
			}
			if token = page.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	return out, nil
}

// instancesByID reads the instances ids name, by id, leaving out those
// that do not exist.
func (s *Service) instancesByID(ctx context.Context, ids []string) (map[string]*inventoryv1.Instance, error) {
	out := make(map[string]*inventoryv1.Instance, len(ids))
	for chunk := range slices.Chunk(ids, 256) {
		got, err := rpc.Call(ctx, s.bus, endpoints.InstanceGetMany, &inventoryv1.GetInstancesRequest{Ids: chunk})
		if err != nil {
			return nil, err
		}
		for _, in := range got.GetInstances() {
			out[in.GetId()] = in
		}
	}
	return out, nil
}

// resyncRollouts drives every running rollout, at start: one whose
// provisioner died goes on at once rather than when its work message is
// redelivered (AckWait after its last delivery).
func (s *Service) resyncRollouts(ctx context.Context, wg *sync.WaitGroup) {
	token := ""
	for {
		page, err := rpc.Call(ctx, s.bus, endpoints.RolloutList, &inventoryv1.ListRolloutsRequest{State: string(vocab.RolloutRunning), PageSize: 500, PageToken: token})
		if err != nil {
			if ctx.Err() == nil {
				s.log.WarnContext(ctx, "resync: list rollouts", "error", err)
			}
			return
		}
		for _, r := range page.GetRollouts() {
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				s.resumeWith(ctx, id, s.driveRollout)
			}(r.GetId())
		}
		if token = page.GetNextPageToken(); token == "" {
			return
		}
	}
}

// driveRollout is a rollout's work: under the rollout's lease (another
// provisioner driving it: errLeased), it goes on until the rollout is done,
// or paused, stopped or cancelled with no instance still working on it.
// It takes no worker slot: it mostly waits.
func (s *Service) driveRollout(ctx context.Context, id string) error {
	lctx, release, err := s.leases.hold(ctx, id)
	if err != nil {
		return err
	}
	defer release()
	s.log.InfoContext(ctx, "rollout work started", "rollout_id", id, "holder", s.leases.holder)
	d := newRolloutDriver(s, id)
	err = d.run(lctx)
	s.log.InfoContext(ctx, "rollout work ended", "rollout_id", id, "error", err)
	if cause := context.Cause(lctx); errors.Is(cause, errLeaseLost) && ctx.Err() == nil {
		return fmt.Errorf("rollout %s: %w", id, cause)
	}
	return err
}

// rolloutDriver drives one rollout in one provisioner.
type rolloutDriver struct {
	s  *Service
	id string
	// answers are the asks' outcomes not recorded yet, by instance id.
	answers map[string]rolloutAnswer
	// firstUnavailable is when an instance's ask first found its agent
	// without a stream; resendAt, when it is asked again (it stays asked,
	// keeping its place in the group, meanwhile).
	firstUnavailable, resendAt map[string]time.Time
	// mine are the instances this driver asked (or asked again, see adopt).
	mine map[string]bool
}

func newRolloutDriver(s *Service, id string) *rolloutDriver {
	return &rolloutDriver{s: s, id: id, answers: map[string]rolloutAnswer{}, firstUnavailable: map[string]time.Time{},
		resendAt: map[string]time.Time{}, mine: map[string]bool{}}
}

// rolloutAnswer is what an ask came to: the instance's new state and why.
type rolloutAnswer struct {
	state   vocab.RolloutInstanceState
	message string
}

// run reads the rollout, moves it on and records it, and waits for its
// instances (their events wake it) until it has nothing left to do.
func (d *rolloutDriver) run(ctx context.Context) error {
	wake, cancel := d.s.wakers.add(d.id)
	defer cancel()
	for {
		over, err := d.pass(ctx, wake)
		if over || err != nil {
			return err
		}
	}
}

// pass is one turn of run: it reads the rollout, moves it on (step), asks
// whom it marked asked (or is due to be asked again), or else waits for an
// event of the rollout or of an instance asked, or for a deadline. over
// says the rollout has nothing left for this driver.
func (d *rolloutDriver) pass(ctx context.Context, wake <-chan struct{}) (over bool, err error) {
	r, err := rpc.Call(ctx, d.s.bus, endpoints.RolloutGet, &inventoryv1.GetRolloutRequest{Id: d.id})
	if apierr.Is(err, apierr.KindNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	asked := inState(r, vocab.RolloutAsked)
	state := vocab.RolloutState(r.GetState())
	if state == vocab.RolloutDone || (state != vocab.RolloutRunning && len(asked) == 0) {
		return true, nil
	}
	// Woken by the asked instances' events from before step reads them.
	ids := make([]string, len(asked))
	for i, in := range asked {
		ids[i] = in.GetInstanceId()
	}
	iwake, icancel := d.s.wakers.addMany(ids)
	defer icancel()
	newly, wait, err := d.step(ctx, r)
	switch {
	case apierr.ReasonOf(err) == apierr.ReasonVersionMismatch:
		return false, nil // an operator's pause or cancel: read it again
	case err != nil:
		return false, err
	case len(newly) > 0:
		d.ask(ctx, r, newly)
		return false, nil
	case wait <= 0:
		return false, nil
	}
	d.adopt(ctx, r, asked)
	if due := d.due(asked); len(due) > 0 {
		d.ask(ctx, r, due)
		return false, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-wake:
	case <-iwake:
	case <-t.C:
	}
	return false, nil
}

// due is the instances of asked whose agent had no stream when asked, and
// whose time to be asked again has come.
func (d *rolloutDriver) due(asked []*inventoryv1.RolloutInstance) []*inventoryv1.RolloutInstance {
	var out []*inventoryv1.RolloutInstance
	now := time.Now()
	for _, e := range asked {
		if at, ok := d.resendAt[e.GetInstanceId()]; ok && !now.Before(at) {
			out = append(out, e)
		}
	}
	return out
}

// inState is r's instances in state.
func inState(r *inventoryv1.Rollout, state vocab.RolloutInstanceState) []*inventoryv1.RolloutInstance {
	var out []*inventoryv1.RolloutInstance
	for _, in := range r.GetInstances() {
		if vocab.RolloutInstanceState(in.GetState()) == state {
			out = append(out, in)
		}
	}
	return out
}

// step moves r on once: the asked instances that finished are recorded,
// a failure stops the rollout, and while it runs the next pending
// instances (up to its group size) are marked asked; then it is recorded.
// It returns the instances marked asked (to ask now that the record says
// so) and how long to wait before looking again (0: at once, after a
// record).
func (d *rolloutDriver) step(ctx context.Context, r *inventoryv1.Rollout) ([]*inventoryv1.RolloutInstance, time.Duration, error) {
	next := proto.Clone(r).(*inventoryv1.Rollout)
	now := time.Now()
	running := vocab.RolloutState(next.GetState()) == vocab.RolloutRunning
	// The instances asked, and the next group's worth of pending ones.
	var look []string
	pending := 0
	for _, in := range next.GetInstances() {
		switch vocab.RolloutInstanceState(in.GetState()) {
		case vocab.RolloutAsked:
			look = append(look, in.GetInstanceId())
		case vocab.RolloutPending:
			if running && pending < int(next.GetParallel()) {
				look = append(look, in.GetInstanceId())
				pending++
			}
		}
	}
	instances, err := d.s.instancesByID(ctx, look)
	if err != nil {
		return nil, 0, err
	}
	wait := d.s.d.Recheck
	var failed []string
	working := 0
	for _, e := range next.GetInstances() {
		if vocab.RolloutInstanceState(e.GetState()) != vocab.RolloutAsked {
			continue
		}
		st, msg := d.outcome(next, e, instances[e.GetInstanceId()], now)
		switch st {
		case vocab.RolloutAsked:
			working++
			wait = min(wait, e.GetAskTime().AsTime().Add(time.Duration(next.GetTimeoutSeconds())*time.Second).Sub(now)+time.Millisecond)
			if at, ok := d.resendAt[e.GetInstanceId()]; ok {
				wait = min(wait, max(at.Sub(now), time.Millisecond))
			}
			continue
		case vocab.RolloutFailed:
			failed = append(failed, e.GetInstanceName())
		}
		e.State, e.Message, e.EndTime = string(st), msg, timestamppb.New(now)
	}
	var newly []*inventoryv1.RolloutInstance
	paused := vocab.RolloutState(next.GetState()) == vocab.RolloutPaused
	switch {
	case (running || paused) && len(failed) > 0:
		// Paused, it stops too: a resume then goes on knowing of it.
		next.State = string(vocab.RolloutStopped)
		next.Message = fmt.Sprintf("stopped: %s failed on %s; resume the rollout to go on with the others, or cancel it",
			next.GetAction(), strings.Join(failed, ", "))
	case running:
		for _, e := range next.GetInstances() {
			if working+len(newly) >= int(next.GetParallel()) {
				break
			}
			if vocab.RolloutInstanceState(e.GetState()) != vocab.RolloutPending {
				continue
			}
			if !slices.Contains(look, e.GetInstanceId()) {
				break // beyond the group looked up: the next pass asks it
			}
			in := instances[e.GetInstanceId()]
			if in == nil {
				e.State, e.Message, e.EndTime = string(vocab.RolloutRefused), "the instance was deleted", timestamppb.New(now)
				continue
			}
			e.State, e.Message, e.AskTime, e.AskedAtUpdateTime, e.AskedAtVmId = string(vocab.RolloutAsked), "", timestamppb.New(now), in.GetUpdateTime(), in.GetVmId()
			newly = append(newly, e)
		}
		if working+len(newly) == 0 && len(inState(next, vocab.RolloutPending)) == 0 {
			next.State, next.Message = string(vocab.RolloutDone), rolloutSummary(next)
		}
	}
	if !proto.Equal(r, next) {
		if _, err := rpc.Call(ctx, d.s.bus, endpoints.RolloutRecord, &inventoryv1.RecordRolloutRequest{Rollout: next}); err != nil {
			return nil, 0, err
		}
		for _, e := range next.GetInstances() {
			if vocab.RolloutInstanceState(e.GetState()) != vocab.RolloutAsked {
				delete(d.answers, e.GetInstanceId())
			}
		}
		return newly, 0, nil // read the new version (and see whether it is over)
	}
	return nil, max(wait, time.Millisecond), nil
}

// outcome is how far instance in (nil: deleted) is with rollout r's
// action, asked as e says.
func (d *rolloutDriver) outcome(r *inventoryv1.Rollout, e *inventoryv1.RolloutInstance, in *inventoryv1.Instance, now time.Time) (vocab.RolloutInstanceState, string) {
	if a, ok := d.answers[e.GetInstanceId()]; ok {
		return a.state, a.message
	}
	if _, ok := d.resendAt[e.GetInstanceId()]; ok {
		return vocab.RolloutAsked, "" // its agent reconnecting: asked again shortly
	}
	if in == nil {
		return vocab.RolloutRefused, "the instance was deleted"
	}
	answered := !proto.Equal(in.GetUpdateTime(), e.GetAskedAtUpdateTime())
	a := in.GetAgent()
	progress := func(step vocab.Step, p vocab.Progress) bool {
		return answered && in.GetAgentProgress() == vocab.AgentProgress(step, p)
	}
	switch vocab.RolloutAction(r.GetAction()) {
	case vocab.RolloutUpgradeAgent:
		switch {
		case a.GetVersion() == r.GetAgentVersion() && vocab.AgentStatus(a.GetStatus()) == vocab.AgentConnected && a.GetVmId() == in.GetVmId():
			return vocab.RolloutSucceeded, ""
		case progress(vocab.StepUpgradingAgent, vocab.ProgressFailed):
			return vocab.RolloutFailed, in.GetAgentProgressMessage()
		}
	case vocab.RolloutRefreshConfiguration:
		switch {
		case progress(vocab.StepRefreshingConfiguration, vocab.ProgressSucceeded):
			return vocab.RolloutSucceeded, ""
		case progress(vocab.StepRefreshingConfiguration, vocab.ProgressFailed):
			return vocab.RolloutFailed, in.GetAgentProgressMessage()
		}
	case vocab.RolloutReprovision:
		switch state := vocab.State(in.GetState()); {
		case state == vocab.StateRunning && !in.GetReprovisionPending() && in.GetVmId() != "" && in.GetVmId() != e.GetAskedAtVmId():
			return vocab.RolloutSucceeded, ""
		case state == vocab.StateFailed && answered:
			return vocab.RolloutFailed, in.GetStateDetail()
		}
	}
	if now.After(e.GetAskTime().AsTime().Add(time.Duration(r.GetTimeoutSeconds()) * time.Second)) {
		return vocab.RolloutFailed, fmt.Sprintf("not done within %d s (instance %s, agent %s at version %s)",
			r.GetTimeoutSeconds(), in.GetState(), a.GetStatus(), a.GetVersion())
	}
	return vocab.RolloutAsked, ""
}

// ask sends the rollout's command to each instance newly marked asked (or
// due to be asked again), keeping what each ask came to for the next
// record: refused (with the provisioner's reason), skipped (an agent at
// the version already), or nothing (asked: its instance says how it went).
// An agent away at the moment (reconnecting to a restarted agent gateway:
// see agentComingBack) is asked again every rolloutRetryEvery for up to
// rolloutRetryFor, its instance asked meanwhile: it keeps its place.
func (d *rolloutDriver) ask(ctx context.Context, r *inventoryv1.Rollout, newly []*inventoryv1.RolloutInstance) {
	for _, e := range newly {
		id := e.GetInstanceId()
		d.mine[id] = true
		in, err := d.send(ctx, r, id)
		switch {
		case agentComingBack(err):
			if d.retry(id) {
				continue
			}
			d.answers[id] = rolloutAnswer{vocab.RolloutRefused, err.Error()}
		case err != nil && ctx.Err() == nil:
			d.answers[id] = rolloutAnswer{vocab.RolloutRefused, err.Error()}
		case err == nil && in != nil && in.GetAgent().GetVersion() == r.GetAgentVersion():
			d.answers[id] = rolloutAnswer{vocab.RolloutSkipped, "the agent is at version " + r.GetAgentVersion() + " already"}
		}
		delete(d.firstUnavailable, id)
		delete(d.resendAt, id)
	}
}

// agentComingBack says whether err refused a command because the
// instance's agent is away at the moment: it has no stream (reconnecting
// to a restarted agent gateway), or the inventory shows it disconnected
// (its gateway restarted, and it has not connected again yet).
func agentComingBack(err error) bool {
	return apierr.Is(err, apierr.KindUnavailable) || errors.Is(err, errAgentAway)
}

// retry has instance id, whose agent had no stream when asked, asked again
// in rolloutRetryEvery, and says so; once it has been retried for
// rolloutRetryFor, it says false.
func (d *rolloutDriver) retry(id string) bool {
	first, ok := d.firstUnavailable[id]
	if !ok {
		first = time.Now()
		d.firstUnavailable[id] = first
	}
	if time.Since(first) >= rolloutRetryFor {
		return false
	}
	d.resendAt[id] = time.Now().Add(rolloutRetryEvery)
	return true
}

// send sends the rollout's command to instance id: the answer is the
// instance as read (an upgrade's), or why it was refused.
func (d *rolloutDriver) send(ctx context.Context, r *inventoryv1.Rollout, id string) (*inventoryv1.Instance, error) {
	actor, req := vocab.Actor(r.GetCreator()), &inventoryv1.InstanceActionRequest{Id: id}
	switch action := vocab.RolloutAction(r.GetAction()); {
	case action == vocab.RolloutRefreshConfiguration:
		_, err := d.s.refreshConfiguration(ctx, actor, req)
		return nil, err
	case action == vocab.RolloutReprovision:
		// A lifecycle request like an operator's, made by the provisioner
		// for the rollout's creator: the inventory records it as theirs.
		_, err := rpc.Call(ctx, d.s.bus, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(vocab.ActionReprovision), RolloutId: r.GetId()})
		return nil, err
	case d.s.d.Version != r.GetAgentVersion():
		return nil, fmt.Errorf("this provisioner is at version %s, not the rollout's %s: a manager of that version asks it", d.s.d.Version, r.GetAgentVersion())
	}
	return d.s.upgradeAgent(ctx, actor, req)
}

// adopt asks again, once, each instance asked that another driver asked:
// one whose provisioner died (its work taken over here) may have marked it
// asked and died before sending the command. Asking again is harmless: an
// agent at the version is left alone, a refresh is written again, and an
// instance reprovisioning already refuses another; so whatever it answers
// is only logged, and the instance's own state says how it went; but an
// agent without a stream at the moment is asked again, as ask does (the
// provisioner that died may have taken its host's agent gateway with it,
// and its agents are reconnecting to another): its command is recorded as
// not sent, which would otherwise count as the instance's failure.
func (d *rolloutDriver) adopt(ctx context.Context, r *inventoryv1.Rollout, asked []*inventoryv1.RolloutInstance) {
	for _, e := range asked {
		id := e.GetInstanceId()
		if d.mine[id] {
			continue
		}
		d.mine[id] = true
		_, err := d.send(ctx, r, id)
		if agentComingBack(err) && d.retry(id) {
			err = fmt.Errorf("%w (asked again shortly)", err)
		}
		d.s.log.InfoContext(ctx, "rollout: an instance another provisioner asked, asked again", "rollout", r.GetName(), "instance", e.GetInstanceName(), "error", err)
	}
}

// rolloutSummary says how a finished rollout went: how many instances
// ended in each state.
func rolloutSummary(r *inventoryv1.Rollout) string {
	return "done: " + vocab.RolloutTally(r.GetInstances())
}
