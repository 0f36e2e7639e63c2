package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/domain"
)

// Lifecycle applies an operator's action to an instance: it sets the desired
// state, moves the observed state to the matching "...ing" state, records the
// request as an event and queues provisioning work, all in one transaction.
// An action that is already in effect returns the instance unchanged; one
// that would interleave with another action in progress answers conflict.
// version, if not 0, must match.
func (a *App) Lifecycle(ctx context.Context, actor vocab.Actor, id string, action vocab.Action, version int64) (*inventoryv1.Instance, error) {
	return a.lifecycle(ctx, actor, id, action, version, func(in *inventoryv1.Instance) (*domain.Next, error) { return domain.Transition(in, action) })
}

// lifecycle is Lifecycle, with decide saying what the action does to the
// instance as it is (domain.Transition, or domain.ForceDelete).
func (a *App) lifecycle(ctx context.Context, actor vocab.Actor, id string, action vocab.Action, version int64,
	decide func(*inventoryv1.Instance) (*domain.Next, error)) (*inventoryv1.Instance, error) {
	defer a.live.forget(id)
	now := a.now()
	var out *inventoryv1.Instance
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		in := &inventoryv1.Instance{}
		if err := InstanceTable.Get(ctx, tx, id, adapters.ForUpdate, in); err != nil {
			return err
		}
		if version != 0 && in.GetVersion() != version {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "instance %q is at version %d, not %d: read it again and retry", id, in.GetVersion(), version)
		}
		next, err := decide(in)
		if err != nil {
			return err
		}
		if next == nil { // already in effect
			out = in
			return nil
		}
		if next.Remove { // never provisioned: nothing to destroy
			if err := InstanceTable.Delete(ctx, tx, id, in.GetVersion()); err != nil {
				return err
			}
			in.State, in.DesiredState, in.StateDetail = string(vocab.StateDeleted), string(vocab.DesiredDeleted), ""
			out = in
			return a.emit(ctx, tx, subjects.NounInstance, vocab.VerbDeleted, actor, in, now)
		}
		in.DesiredState, in.State, in.StateDetail = string(next.Desired), string(next.State), string(next.Detail)
		in.ReprovisionPending = in.GetReprovisionPending() || next.Reprovision
		in.DeleteForced = in.GetDeleteForced() || next.Force
		if err := InstanceTable.Update(ctx, tx, in, now); err != nil {
			return err
		}
		if err := a.emit(ctx, tx, subjects.NounInstance, action.Requested(), actor, in, now); err != nil {
			return err
		}
		out = in
		return a.enqueue(ctx, tx, in.GetId(), action, actor, now)
	})
	return out, err
}

// enqueue puts provisioning work for an instance (or, action
// vocab.RolloutWork, a rollout) on the work queue, through the outbox, so
// the work exists exactly when the change commits.
func (a *App) enqueue(ctx context.Context, tx pgx.Tx, id string, action vocab.Action, actor vocab.Actor, now time.Time) error {
	msg, err := bus.NewMessage(ctx, subjects.Provision(id), action.WorkType(), actor, now,
		&inventoryv1.LifecycleRequest{Id: id, Action: string(action)})
	if err != nil {
		return err
	}
	return outbox.Write(ctx, tx, msg)
}

// RecordState records what the provisioner has made true. It does not take a
// new version: observed state is not something an operator edits. A record
// is an event when it names one, or when it moves the instance to another
// state or step (step-started).
func (a *App) RecordState(ctx context.Context, actor vocab.Actor, r *inventoryv1.RecordStateRequest) (*inventoryv1.Instance, error) {
	if r.GetState() != "" && !vocab.State(r.GetState()).Valid() {
		return nil, apierr.Invalid("state", "%q is not an instance state", r.GetState())
	}
	defer a.live.forget(r.GetId())
	now := a.now()
	var out *inventoryv1.Instance
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		in := &inventoryv1.Instance{}
		if err := InstanceTable.Get(ctx, tx, r.GetId(), adapters.ForUpdate, in); err != nil {
			return err
		}
		if r.GetVersion() != 0 && r.GetVersion() != in.GetVersion() {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "instance %q is at version %d, not %d", r.GetId(), in.GetVersion(), r.GetVersion())
		}
		if err := fenceLease(ctx, tx, r); err != nil {
			return err
		}
		if r.GetRemove() {
			if err := InstanceTable.Delete(ctx, tx, in.GetId(), 0); err != nil {
				return err
			}
			// The detail names what a forced delete left in the cloud.
			in.State, in.StateDetail = string(vocab.StateDeleted), r.GetStateDetail()
			out = in
			return a.emit(ctx, tx, subjects.NounInstance, vocab.VerbDeleted, actor, in, now)
		}
		for _, c := range r.GetClear() {
			switch vocab.Clearable(c) {
			case vocab.ClearVMID:
				in.VmId, in.TemplateVersion = "", 0
			case vocab.ClearAddresses:
				in.Addresses = nil
			case vocab.ClearAgent:
				in.Agent, in.AgentProgress, in.AgentProgressMessage = nil, "", ""
			case vocab.ClearReprovision:
				in.ReprovisionPending = false
			default:
				return apierr.Invalid("clear", "%q is not a clearable field", c)
			}
		}
		event := vocab.Verb(r.GetEvent())
		if r.GetState() != "" {
			if event == "" && (in.GetState() != r.GetState() || in.GetStateDetail() != r.GetStateDetail()) {
				event = vocab.VerbStepStarted // every step on the timeline, and to whoever follows it
			}
			in.State = r.GetState()
			in.StateDetail = r.GetStateDetail()
		}
		if r.GetVmId() != "" {
			in.VmId = r.GetVmId()
		}
		if r.GetTemplateVersion() != 0 {
			in.TemplateVersion = r.GetTemplateVersion()
		}
		if r.GetDataDisk() != nil {
			in.DataDisk = r.GetDataDisk()
		}
		if r.GetAddresses() != nil {
			in.Addresses = r.GetAddresses()
		}
		if r.GetAgentProgress() != "" {
			in.AgentProgress, in.AgentProgressMessage = r.GetAgentProgress(), truncate(r.GetAgentProgressMessage(), maxProgressMessage)
			if event == "" {
				event = vocab.VerbProgress
			}
		}
		if err := checkSize(subjects.NounInstance, in); err != nil {
			return err
		}
		if err := InstanceTable.UpdateObserved(ctx, tx, in, now); err != nil {
			return err
		}
		out = in
		if event == "" {
			return nil
		}
		return a.emit(ctx, tx, subjects.NounInstance, event, actor, in, now)
	})
	return out, err
}

// fenceLease refuses r if it comes under an older provisioner lease of its
// instance than the newest a record came under, and otherwise makes r's
// lease the newest. tx holds the instance's row lock, so two records of
// one instance are fenced one after the other.
func fenceLease(ctx context.Context, tx pgx.Tx, r *inventoryv1.RecordStateRequest) error {
	f := r.GetLease()
	if f == nil {
		return nil
	}
	if f.GetRevision() == 0 || f.GetRevision() > math.MaxInt64 {
		return apierr.Invalid("lease.revision", "must be between 1 and %d, got %d", int64(math.MaxInt64), f.GetRevision())
	}
	l := adapters.Lease{Epoch: f.GetEpoch(), Revision: int64(f.GetRevision())}
	ok, newest, err := adapters.FenceLease(ctx, tx, r.GetId(), l)
	if err != nil || ok {
		return err
	}
	return apierr.Conflict(apierr.ReasonLeaseSuperseded,
		"instance %q is worked on under a newer provisioner lease (epoch %d, revision %d) than this record's (epoch %d, revision %d)",
		r.GetId(), newest.Epoch, newest.Revision, l.Epoch, l.Revision)
}

// Observe records what an agent reported through the agent gateway:
// connects, disconnects, heartbeats and progress. Reports about an instance
// that no longer exists are dropped.
//
// A heartbeat that changes nothing the instance row shows does not touch
// it, nor does a new stream of an agent the row shows connected already
// (its gateway restarted): see liveness.go.
func (a *App) Observe(ctx context.Context, ev *agentv1.AgentEvent) error {
	now := a.now()
	at := now
	if ev.GetTime() != nil {
		at = ev.GetTime().AsTime()
	}
	if hb := ev.GetHeartbeat(); hb != nil {
		if done, err := a.heartbeat(ctx, ev.GetInstanceId(), hb, at); done || err != nil {
			return err
		}
	}
	if hello := ev.GetConnected(); hello != nil {
		if done, err := a.reconnected(ctx, ev.GetInstanceId(), hello, at); done || err != nil {
			return err
		}
	}
	var written *inventoryv1.Instance
	err := a.inTx(ctx, func(tx pgx.Tx) (err error) {
		written, err = a.observeRow(ctx, tx, ev, at, now)
		return err
	})
	if apierr.Is(err, apierr.KindNotFound) || errors.Is(err, errStaleProgress) || errors.Is(err, errNothingNew) {
		return nil
	}
	if err != nil {
		a.live.forget(ev.GetInstanceId())
		return err
	}
	a.live.remember(written, now)
	return nil
}

// observeParallel bounds how many agents' events of one batch are recorded
// at once (each agent's in order).
const observeParallel = 8

// ObserveMany records a batch of agent events (lifecycle.observe-many) and
// answers each, in order (nil: taken, as Observe takes it). One agent's
// events are recorded one after another in the order given, different
// agents' side by side. A batch of more than endpoints.MaxBatch is refused
// whole; an event without an instance id is refused alone.
func (a *App) ObserveMany(ctx context.Context, events []*agentv1.AgentEvent) ([]error, error) {
	if len(events) > endpoints.MaxBatch {
		return nil, apierr.Invalid("events", "must hold at most %d events, got %d", endpoints.MaxBatch, len(events))
	}
	errs := make([]error, len(events))
	byAgent := map[string][]int{}
	var agents []string
	for i, ev := range events {
		id := ev.GetInstanceId()
		if id == "" {
			errs[i] = apierr.Invalid(fmt.Sprintf("events[%d].instanceId", i), "is required")
			continue
		}
		if _, seen := byAgent[id]; !seen {
			agents = append(agents, id)
		}
		byAgent[id] = append(byAgent[id], i)
	}
	var g errgroup.Group
	g.SetLimit(observeParallel)
	for _, id := range agents {
		g.Go(func() error {
			for _, i := range byAgent[id] {
				errs[i] = a.Observe(ctx, events[i])
			}
			return nil
		})
	}
	_ = g.Wait()
	return errs, nil
}

// observeRow writes what ev reports to its instance's row, inside tx, and
// returns the row as written.
func (a *App) observeRow(ctx context.Context, tx pgx.Tx, ev *agentv1.AgentEvent, at, now time.Time) (*inventoryv1.Instance, error) {
	in := &inventoryv1.Instance{}
	if err := InstanceTable.Get(ctx, tx, ev.GetInstanceId(), adapters.ForUpdate, in); err != nil {
		return nil, err
	}
	if in.Agent == nil {
		in.Agent = &inventoryv1.AgentStatus{}
	}
	seen := timestamppb.New(at)
	var verb vocab.Verb
	switch b := ev.GetBody().(type) {
	case *agentv1.AgentEvent_Connected:
		in.Agent.Status, in.Agent.Version, in.Agent.LastHeartbeat = string(vocab.AgentConnected), b.Connected.GetAgentVersion(), seen
		in.Agent.VmId, in.Agent.ConnectTime = b.Connected.GetVmId(), seen
		verb = vocab.VerbAgentConnected
	case *agentv1.AgentEvent_Disconnected:
		if in.Agent.Status != string(vocab.AgentConnected) {
			return nil, errNothingNew // shown disconnected already
		}
		if stale, err := a.staleDisconnect(ctx, tx, in, b.Disconnected, at); err != nil || stale {
			return nil, cmp.Or(err, errNothingNew) // of a stream the agent replaced
		}
		in.Agent.Status = string(vocab.AgentDisconnected)
		verb = vocab.VerbAgentDisconnected
	case *agentv1.AgentEvent_Heartbeat:
		hb := b.Heartbeat
		back := in.Agent.Status != string(vocab.AgentConnected) // shown gone (a stale sweep), beating again
		in.Agent.Status, in.Agent.LastHeartbeat = string(vocab.AgentConnected), seen
		if hb.GetAgentVersion() != "" {
			in.Agent.Version = hb.GetAgentVersion()
		}
		if end := hb.GetNodeCertificateNotAfter(); end != nil && !proto.Equal(end, in.Agent.GetNodeCertificateNotAfter()) {
			in.Agent.NodeCertificateNotAfter = end
			verb = vocab.VerbCertificateChanged // for the overview, and the timeline
		}
		if back {
			verb = vocab.VerbAgentConnected // the overview and the timeline see it back
		}
		if in.DataDisk == nil {
			in.DataDisk = &inventoryv1.DataDisk{}
		}
		in.DataDisk.UsedBytes, in.DataDisk.TotalBytes = hb.GetDiskUsedBytes(), hb.GetDiskTotalBytes()
		if hb.GetNodeUrl() != "" || hb.GetPrivateIp() != "" {
			if in.Addresses == nil {
				in.Addresses = &inventoryv1.Addresses{}
			}
			if hb.GetNodeUrl() != "" {
				in.Addresses.Url = hb.GetNodeUrl()
			}
			if hb.GetPrivateIp() != "" && in.Addresses.PrivateIp == "" {
				in.Addresses.PrivateIp = hb.GetPrivateIp()
			}
		}
	case *agentv1.AgentEvent_Progress:
		p := b.Progress
		// Progress counts only for the command that set up the
		// instance's current VM (the provisioner names the command
		// after it): a re-provision cannot be shown as done by what
		// the previous run's agent reports late.
		if p.GetCommandId() == "" || p.GetCommandId() != in.GetVmId() {
			return nil, errStaleProgress
		}
		in.AgentProgress = vocab.AgentProgress(vocab.Step(p.GetStep()), vocab.Progress(p.GetStatus()))
		in.AgentProgressMessage = ""
		if vocab.Progress(p.GetStatus()) == vocab.ProgressFailed {
			in.AgentProgressMessage = truncate(p.GetMessage(), maxProgressMessage)
		}
		if p.GetNodeUrl() != "" {
			if in.Addresses == nil {
				in.Addresses = &inventoryv1.Addresses{}
			}
			in.Addresses.Url = p.GetNodeUrl()
		}
		if vocab.State(in.GetState()) == vocab.StateProvisioning {
			switch vocab.Progress(p.GetStatus()) {
			case vocab.ProgressFailed:
				in.State, in.StateDetail = string(vocab.StateFailed), vocab.Failure(vocab.Step(p.GetStep()), p.GetMessage())
			case vocab.ProgressStarted:
				in.StateDetail = p.GetStep()
			}
		}
		verb = vocab.VerbProgress
	default:
		return nil, apierr.Invalid("body", "empty agent event")
	}
	if err := checkSize(subjects.NounInstance, in); err != nil {
		return nil, err
	}
	if err := InstanceTable.UpdateObserved(ctx, tx, in, now); err != nil {
		return nil, err
	}
	if verb == "" {
		return in, nil
	}
	return in, a.emit(ctx, tx, subjects.NounInstance, verb, vocab.Agent(in.GetId()), in, now)
}

// maxProgressMessage is the most of a failed step's message an instance
// keeps (the agent's logs have all of it).
const maxProgressMessage = 2000

// truncate is s cut to at most n bytes, on a rune boundary, with "…" when
// it was cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// errStaleProgress drops a progress report for a command other than the
// instance's current one.
var errStaleProgress = errors.New("progress for a command that is not the instance's current one")

// staleBatch is how many stale agents one transaction of the sweep marks:
// a gateway that died leaves thousands at once, and one commit each would
// compete with their reconnects.
const staleBatch = 256

// errNothingNew drops a report that changes nothing: a disconnect of an
// agent shown disconnected already.
var errNothingNew = errors.New("the report changes nothing shown")

// MarkStaleAgents records as disconnected every agent that is shown as
// connected but has sent no heartbeat for staleAfter: its gateway may have
// died without saying so. A heartbeat that arrives later marks it connected
// again. It marks them staleBatch to a transaction, in the order of their
// ids (so that sweeps of two replicas cannot deadlock), skips those another
// sweep marked meanwhile, and returns how many it marked.
func (a *App) MarkStaleAgents(ctx context.Context, staleAfter time.Duration) (int, error) {
	if err := a.FlushHeartbeats(ctx); err != nil {
		return 0, err
	}
	ids, err := adapters.StaleAgents(ctx, a.pool, string(vocab.AgentConnected), a.now().Add(-staleAfter))
	if err != nil {
		return 0, err
	}
	reason := fmt.Sprintf("no heartbeat for %v", staleAfter)
	marked := 0
	for batch := range slices.Chunk(ids, staleBatch) {
		now := a.now()
		var written []*inventoryv1.Instance
		err := a.inTx(ctx, func(tx pgx.Tx) error {
			written = written[:0]
			for _, id := range batch {
				ev := &agentv1.AgentEvent{InstanceId: id, Time: timestamppb.New(now),
					Body: &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: reason}}}
				in, err := a.observeRow(ctx, tx, ev, now, now)
				if apierr.Is(err, apierr.KindNotFound) || errors.Is(err, errNothingNew) {
					continue
				}
				if err != nil {
					return err
				}
				written = append(written, in)
			}
			return nil
		})
		if err != nil {
			for _, id := range batch {
				a.live.forget(id)
			}
			return marked, err
		}
		for _, in := range written {
			a.live.remember(in, now)
		}
		marked += len(written)
	}
	return marked, nil
}
