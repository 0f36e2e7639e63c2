package app

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/domain"
)

// RolloutTable keeps rollouts; the provisioner drives them. Their work is
// queued like an instance's lifecycle work (enqueue), with the action
// vocab.RolloutWork and the rollout's id: a provisioner drives the rollout
// until it is done, paused or over, and another takes it over if that one
// dies.
var RolloutTable = adapters.Table{Name: "rollouts", Noun: subjects.NounRollout, Extra: func(m proto.Message) []adapters.Column {
	r := m.(*inventoryv1.Rollout)
	return []adapters.Column{{Name: "action", Value: r.GetAction()}, {Name: "state", Value: r.GetState()}}
}}

var rollouts = kind[*inventoryv1.Rollout]{table: RolloutTable, new: func() *inventoryv1.Rollout { return &inventoryv1.Rollout{} }}

// CreateRollout records a rollout the provisioner chose the instances of
// (r's action, agent version, group size, timeout and instances) for its
// creator (who asked the provisioner: the rollout's events are theirs) and
// queues its work, in one transaction. One rollout of an action is open at
// a time: another is refused while one runs or is paused, naming it; one a
// failure stopped is cancelled in its favour.
func (a *App) CreateRollout(ctx context.Context, r *inventoryv1.Rollout) (*inventoryv1.Rollout, error) {
	if !r.ProtoReflect().IsValid() {
		return nil, apierr.Invalid("rollout", "is required")
	}
	actor := vocab.Actor(r.GetCreator())
	if actor.Kind() == "" {
		return nil, apierr.Invalid("creator", "%q is not an actor", r.GetCreator())
	}
	v := &inventoryv1.Rollout{Action: r.GetAction(), AgentVersion: r.GetAgentVersion(), Parallel: r.GetParallel(),
		TimeoutSeconds: r.GetTimeoutSeconds(), State: string(vocab.RolloutRunning), Creator: string(actor)}
	for _, in := range r.GetInstances() {
		v.Instances = append(v.Instances, &inventoryv1.RolloutInstance{InstanceId: in.GetInstanceId(), InstanceName: in.GetInstanceName(),
			State: string(vocab.RolloutPending)})
	}
	if err := domain.ValidateRollout(v); err != nil {
		return nil, err
	}
	if err := checkSize(subjects.NounRollout, v); err != nil {
		return nil, err
	}
	now := a.now()
	v.Id = adapters.NewID()
	v.Name = fmt.Sprintf("%s-%s-%s", v.GetAction(), now.UTC().Format("20060102-150405"), v.Id[len(v.Id)-4:])
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		// Rollouts of one action are created in turn, so the second of two
		// at once sees the first, and is told of it.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "rollout "+v.GetAction()); err != nil {
			return fmt.Errorf("wait for the rollouts of %s being created: %w", v.GetAction(), err)
		}
		// A rollout a failure stopped gives way to the new one (its
		// failure seen to, presumably); a running or paused one does not.
		open := &inventoryv1.Rollout{}
		var id string
		err := tx.QueryRow(ctx, "SELECT id::text FROM rollouts WHERE action = $1 AND state IN ('running', 'paused', 'stopped')", v.GetAction()).Scan(&id)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look for an open rollout: %w", err)
		}
		if err == nil {
			if err := RolloutTable.Get(ctx, tx, id, adapters.ForUpdate, open); err != nil {
				return err
			}
			if vocab.RolloutState(open.GetState()) != vocab.RolloutStopped {
				return apierr.Conflict(apierr.ReasonInvalidState, "rollout %s (%s) is %s: one %s rollout at a time; cancel it, or let it finish, first",
					open.GetName(), v.GetAction(), open.GetState(), v.GetAction())
			}
			cancelRollout(open, fmt.Sprintf("cancelled: rollout %s took its place", v.GetName()))
			if err := RolloutTable.Update(ctx, tx, open, now); err != nil {
				return err
			}
			if err := a.emit(ctx, tx, subjects.NounRollout, vocab.VerbUpdated, actor, open, now); err != nil {
				return err
			}
		}
		if err := RolloutTable.Insert(ctx, tx, v, now); err != nil {
			return err
		}
		if err := a.emit(ctx, tx, subjects.NounRollout, vocab.VerbCreated, actor, v, now); err != nil {
			return err
		}
		return a.enqueue(ctx, tx, v.GetId(), vocab.RolloutWork, actor, now)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// GetRollout reads one rollout.
func (a *App) GetRollout(ctx context.Context, id string) (*inventoryv1.Rollout, error) {
	return get(ctx, a, rollouts, id)
}

// RolloutCreator is who a lifecycle request the provisioner (caller)
// makes for rollout id is recorded as: the rollout's creator, whose rollout
// asked for it. It is refused unless the rollout is running or paused, its
// action is action, and it has instance asked; so the provisioner acts for
// a user only where that user's rollout asked it to.
func (a *App) RolloutCreator(ctx context.Context, caller vocab.Actor, id, instance string, action vocab.Action) (vocab.Actor, error) {
	if caller != vocab.System(subjects.Provisioner) {
		return "", apierr.PermissionDenied("%s may not act for a rollout: only the provisioner drives them", caller)
	}
	r, err := a.GetRollout(ctx, id)
	if apierr.Is(err, apierr.KindNotFound) {
		return "", apierr.Invalid("rolloutId", "there is no rollout %s", id)
	}
	if err != nil {
		return "", err
	}
	if vocab.RolloutAction(r.GetAction()) != vocab.RolloutReprovision || action != vocab.ActionReprovision {
		return "", apierr.PermissionDenied("rollout %s is a %s rollout: it asks for no %s", r.GetName(), r.GetAction(), action)
	}
	if st := vocab.RolloutState(r.GetState()); st != vocab.RolloutRunning && st != vocab.RolloutPaused {
		return "", apierr.Conflict(apierr.ReasonInvalidState, "rollout %s is %s: it asks no instance", r.GetName(), st)
	}
	for _, e := range r.GetInstances() {
		if e.GetInstanceId() == instance && vocab.RolloutInstanceState(e.GetState()) == vocab.RolloutAsked {
			return vocab.Actor(r.GetCreator()), nil
		}
	}
	return "", apierr.PermissionDenied("rollout %s has not asked instance %s", r.GetName(), instance)
}

// ListRollouts lists rollouts (in state, if not ""), oldest first.
func (a *App) ListRollouts(ctx context.Context, state string, pageSize int32, pageToken string) ([]*inventoryv1.Rollout, string, error) {
	var q adapters.ListQuery
	if state != "" {
		switch vocab.RolloutState(state) {
		case vocab.RolloutRunning, vocab.RolloutPaused, vocab.RolloutStopped, vocab.RolloutCancelled, vocab.RolloutDone:
		default:
			return nil, "", apierr.Invalid("state", "%q is not a rollout state: running, paused, stopped, cancelled or done", state)
		}
		q.Where = []adapters.Cond{{SQL: "state = ?", Args: []any{state}}}
	}
	return list(ctx, a, rollouts, q, pageSize, pageToken)
}

// ControlRollout is an operator's pause, resume or cancel of a rollout (at
// version, when not 0). A resume queues the rollout's work again; a cancel
// marks the instances not asked yet as not to be asked. The instances asked
// already finish either way, and the provisioner records them.
func (a *App) ControlRollout(ctx context.Context, actor vocab.Actor, id string, version int64, verb string) (*inventoryv1.Rollout, error) {
	now := a.now()
	var out *inventoryv1.Rollout
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		r := &inventoryv1.Rollout{}
		if err := RolloutTable.Get(ctx, tx, id, adapters.ForUpdate, r); err != nil {
			return err
		}
		if version != 0 && r.GetVersion() != version {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "rollout %s is at version %d, not %d: read it again and retry", r.GetName(), r.GetVersion(), version)
		}
		to, err := domain.RolloutControl(r, verb)
		if err != nil {
			return err
		}
		r.State, r.Message = string(to), fmt.Sprintf("%s by %s", map[string]string{
			subjects.VerbPause: "paused", subjects.VerbResume: "resumed", subjects.VerbCancel: "cancelled"}[verb], actor)
		if to == vocab.RolloutCancelled {
			cancelRollout(r, r.GetMessage())
		}
		if err := RolloutTable.Update(ctx, tx, r, now); err != nil {
			return err
		}
		if err := a.emit(ctx, tx, subjects.NounRollout, vocab.VerbUpdated, actor, r, now); err != nil {
			return err
		}
		out = r
		if to == vocab.RolloutRunning {
			return a.enqueue(ctx, tx, r.GetId(), vocab.RolloutWork, actor, now)
		}
		return nil
	})
	return out, err
}

// cutMiddle is s cut to about n bytes by leaving out its middle (on rune
// boundaries, "…" in its place): a reason's start says what failed, its
// end often what became of it ("version 0.0.9 runs on").
func cutMiddle(s string, n int) string {
	if len(s) <= n {
		return s
	}
	head := truncate(s, n/2)
	tail := len(s) - n/2
	for tail < len(s) && !utf8.RuneStart(s[tail]) {
		tail++
	}
	return head + s[tail:]
}

// cancelRollout cancels r, saying why: its instances not asked yet are not.
func cancelRollout(r *inventoryv1.Rollout, why string) {
	r.State, r.Message = string(vocab.RolloutCancelled), why
	for _, in := range r.GetInstances() {
		if vocab.RolloutInstanceState(in.GetState()) == vocab.RolloutPending {
			in.State = string(vocab.RolloutNotAsked)
		}
	}
}

// RecordRollout is the provisioner recording a rollout's progress (its
// instances, state and message) at the version it read: a pause or cancel
// meanwhile makes it read the rollout again.
func (a *App) RecordRollout(ctx context.Context, actor vocab.Actor, r *inventoryv1.Rollout) (*inventoryv1.Rollout, error) {
	if !r.ProtoReflect().IsValid() {
		return nil, apierr.Invalid("rollout", "is required")
	}
	now := a.now()
	var out *inventoryv1.Rollout
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		cur := &inventoryv1.Rollout{}
		if err := RolloutTable.Get(ctx, tx, r.GetId(), adapters.ForUpdate, cur); err != nil {
			return err
		}
		if cur.GetVersion() != r.GetVersion() {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "rollout %s is at version %d, not %d: read it again", cur.GetName(), cur.GetVersion(), r.GetVersion())
		}
		next := proto.Clone(cur).(*inventoryv1.Rollout)
		next.State, next.Message, next.Instances = r.GetState(), cutMiddle(r.GetMessage(), 4*domain.MaxRolloutMessage), r.GetInstances()
		for _, e := range next.GetInstances() {
			e.Message = cutMiddle(e.GetMessage(), domain.MaxRolloutMessage)
		}
		if err := domain.RolloutRecordable(cur, next); err != nil {
			return err
		}
		if err := checkSize(subjects.NounRollout, next); err != nil {
			return err
		}
		if proto.Equal(cur, next) {
			out = cur
			return nil
		}
		if err := RolloutTable.Update(ctx, tx, next, now); err != nil {
			return err
		}
		out = next
		return a.emit(ctx, tx, subjects.NounRollout, vocab.VerbUpdated, actor, next, now)
	})
	return out, err
}
