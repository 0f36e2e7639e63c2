package domain

import (
	"fmt"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// Limits on a rollout. A rollout travels the bus whole, its instances'
// states and reasons with it: 500 instances, each reason cut to
// MaxRolloutMessage bytes, stay under the inventory's resource size.
const (
	MaxRolloutParallel  = 100
	MinRolloutTimeout   = 30
	MaxRolloutTimeout   = 86400
	MaxRolloutInstances = vocab.MaxRolloutInstances
	MaxRolloutMessage   = 200
)

// ValidateRollout checks a rollout as the provisioner made it: its action,
// group size, timeout and instances (each named once).
func ValidateRollout(r *inventoryv1.Rollout) error {
	if !vocab.RolloutAction(r.GetAction()).Valid() {
		return apierr.Invalid("action", "%q is not a rollout action: %q, %q or %q", r.GetAction(), vocab.RolloutUpgradeAgent, vocab.RolloutRefreshConfiguration, vocab.RolloutReprovision)
	}
	if vocab.RolloutAction(r.GetAction()) == vocab.RolloutUpgradeAgent && r.GetAgentVersion() == "" {
		return apierr.Invalid("agentVersion", "is required for %s", vocab.RolloutUpgradeAgent)
	}
	if p := r.GetParallel(); p < 1 || p > MaxRolloutParallel {
		return apierr.Invalid("parallel", "%d is not a group size: 1 to %d instances", p, MaxRolloutParallel)
	}
	if t := r.GetTimeoutSeconds(); t < MinRolloutTimeout || t > MaxRolloutTimeout {
		return apierr.Invalid("timeoutSeconds", "%d is not a timeout: %d to %d seconds", t, MinRolloutTimeout, MaxRolloutTimeout)
	}
	if n := len(r.GetInstances()); n == 0 || n > MaxRolloutInstances {
		return apierr.Invalid("instances", "%d instances: a rollout has 1 to %d", n, MaxRolloutInstances)
	}
	seen := map[string]bool{}
	for i, in := range r.GetInstances() {
		f := fmt.Sprintf("instances[%d]", i)
		if err := apierr.CheckID(f+".instanceId", in.GetInstanceId()); err != nil {
			return err
		}
		if seen[in.GetInstanceId()] {
			return apierr.Invalid(f+".instanceId", "instance %s is named twice", in.GetInstanceId())
		}
		seen[in.GetInstanceId()] = true
		if !rolloutInstanceStates[vocab.RolloutInstanceState(in.GetState())] {
			return apierr.Invalid(f+".state", "%q is not a rollout instance's state", in.GetState())
		}
	}
	return nil
}

var rolloutInstanceStates = map[vocab.RolloutInstanceState]bool{
	vocab.RolloutPending: true, vocab.RolloutAsked: true, vocab.RolloutSucceeded: true, vocab.RolloutSkipped: true,
	vocab.RolloutRefused: true, vocab.RolloutFailed: true, vocab.RolloutNotAsked: true,
}

// RolloutRecordable checks the provisioner's record of a rollout's
// progress against the rollout as stored: the same instances in the same
// order, and a state it may move the rollout to (from running: stopped
// after a failure, or done; from paused: stopped after a failure of an
// instance asked before the pause; a cancel stays).
func RolloutRecordable(cur, next *inventoryv1.Rollout) error {
	if err := ValidateRollout(next); err != nil {
		return err
	}
	if len(cur.GetInstances()) != len(next.GetInstances()) {
		return apierr.Invalid("instances", "has %d instances, not the rollout's %d", len(next.GetInstances()), len(cur.GetInstances()))
	}
	for i, in := range next.GetInstances() {
		if in.GetInstanceId() != cur.GetInstances()[i].GetInstanceId() {
			return apierr.Invalid(fmt.Sprintf("instances[%d].instanceId", i), "is %s, not the rollout's %s", in.GetInstanceId(), cur.GetInstances()[i].GetInstanceId())
		}
	}
	from, to := vocab.RolloutState(cur.GetState()), vocab.RolloutState(next.GetState())
	if from != to && !(from == vocab.RolloutRunning && (to == vocab.RolloutStopped || to == vocab.RolloutDone)) &&
		!(from == vocab.RolloutPaused && to == vocab.RolloutStopped) {
		return apierr.Invalid("state", "a rollout %s is not recorded %s", from, to)
	}
	return nil
}

// RolloutControl is an operator's change of a rollout's state: the state
// it moves to, or an error naming why not.
func RolloutControl(r *inventoryv1.Rollout, verb string) (vocab.RolloutState, error) {
	from := vocab.RolloutState(r.GetState())
	var to vocab.RolloutState
	var ok bool
	switch verb {
	case "pause":
		to, ok = vocab.RolloutPaused, from == vocab.RolloutRunning
	case "resume":
		to, ok = vocab.RolloutRunning, from == vocab.RolloutPaused || from == vocab.RolloutStopped
	case "cancel":
		to, ok = vocab.RolloutCancelled, from.Open()
	default:
		return "", apierr.Unsupported("", "%q is not a rollout control: pause, resume or cancel", verb)
	}
	if !ok {
		return "", apierr.Conflict(apierr.ReasonInvalidState, "rollout %s is %s: it cannot be %s", r.GetName(), from, map[string]string{
			"pause": "paused (only a running one)", "resume": "resumed (only a paused or stopped one)", "cancel": "cancelled (it is over)"}[verb])
	}
	return to, nil
}
