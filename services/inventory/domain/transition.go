package domain

import (
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// Next is what an action changes an instance to.
type Next struct {
	Desired vocab.Desired
	State   vocab.State
	Detail  vocab.Step
	// Reprovision: the current VM must be replaced.
	Reprovision bool
	// Remove: the record can go at once (nothing was ever provisioned).
	Remove bool
	// Force: the delete is forced (Instance.delete_forced).
	Force bool
}

// Transition decides what an action does to an instance in its current
// state: the next desired and observed state, nil when the action is already
// in effect, or a conflict when another action is in progress
// (lifecycle_busy) or the state does not allow it (invalid_state).
func Transition(in interface {
	GetState() string
	GetDesiredState() string
	GetStateDetail() string
	GetVmId() string
	GetName() string
}, action vocab.Action) (*Next, error) {
	state, desired := vocab.State(in.GetState()), vocab.Desired(in.GetDesiredState())
	busy := func() error {
		return apierr.Conflict(apierr.ReasonLifecycleBusy, "instance %q is %s (asked: %s): wait until it finishes, then try again", in.GetName(), state, desired)
	}
	switch action {
	case vocab.ActionProvision:
		switch state {
		case vocab.StateRunning:
			return nil, nil
		case vocab.StateProvisioning:
			if desired == vocab.DesiredProvisioned {
				return nil, nil
			}
			return nil, busy()
		case vocab.StateFailed:
			// Failed stopping its VM (a deprovision, delete or reprovision
			// the cloud refused), the instance had released the VM's agent
			// first: that VM serves it no more, and is replaced.
			return &Next{Desired: vocab.DesiredProvisioned, State: vocab.StateProvisioning, Detail: vocab.StepQueued,
				Reprovision: in.GetVmId() != "" && failedAt(in.GetStateDetail()) == vocab.StepStoppingVM}, nil
		case vocab.StateCreated, vocab.StateDeprovisioned:
			return &Next{Desired: vocab.DesiredProvisioned, State: vocab.StateProvisioning, Detail: vocab.StepQueued}, nil
		}
	case vocab.ActionDeprovision:
		switch state {
		case vocab.StateCreated, vocab.StateDeprovisioned:
			return nil, nil
		case vocab.StateDeprovisioning:
			if desired == vocab.DesiredDeprovisioned {
				return nil, nil
			}
			return nil, busy()
		case vocab.StateRunning, vocab.StateFailed:
			return &Next{Desired: vocab.DesiredDeprovisioned, State: vocab.StateDeprovisioning, Detail: vocab.StepQueued}, nil
		}
	case vocab.ActionReprovision:
		switch state {
		case vocab.StateRunning, vocab.StateFailed:
			return &Next{Desired: vocab.DesiredProvisioned, State: vocab.StateDeprovisioning, Detail: vocab.StepQueued, Reprovision: true}, nil
		case vocab.StateCreated, vocab.StateDeprovisioned:
			return &Next{Desired: vocab.DesiredProvisioned, State: vocab.StateProvisioning, Detail: vocab.StepQueued}, nil
		}
	case vocab.ActionDelete:
		switch state {
		case vocab.StateCreated:
			return &Next{Remove: true}, nil
		case vocab.StateDeleting:
			return nil, nil
		case vocab.StateDeprovisioned, vocab.StateFailed:
			return &Next{Desired: vocab.DesiredDeleted, State: vocab.StateDeleting, Detail: vocab.StepQueued}, nil
		case vocab.StateRunning:
			return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %q is running: deprovision it before deleting it", in.GetName())
		}
	default:
		return nil, apierr.Invalid("action", "%q is not one of provision, deprovision, reprovision, delete", action)
	}
	return nil, busy()
}

// ForceDelete decides what a forced delete does: what a delete does, made
// forced, and on an instance whose delete is under way unforced, that
// delete made forced where it stands (its step kept).
func ForceDelete(in *inventoryv1.Instance) (*Next, error) {
	if vocab.State(in.GetState()) == vocab.StateDeleting && !in.GetDeleteForced() {
		return &Next{Desired: vocab.DesiredDeleted, State: vocab.StateDeleting, Detail: vocab.Step(in.GetStateDetail()), Force: true}, nil
	}
	next, err := Transition(in, vocab.ActionDelete)
	if next != nil && !next.Remove {
		next.Force = true
	}
	return next, err
}

// failedAt is the step a failed instance's stateDetail names
// ("stopping-vm: the cloud refused …"), or "" when it names none.
func failedAt(detail string) vocab.Step {
	step, _, ok := vocab.SplitFailure(detail)
	if !ok {
		return ""
	}
	return step
}
