package domain

import "flotilla.dev/flotilla/libs/apierr"

// States lists every observed state.
var States = []string{StateCreated, StateProvisioning, StateRunning, StateDeprovisioning,
	StateDeprovisioned, StateDeleting, StateDeleted, StateFailed}

// StateDeleted is the state of an instance whose record is gone.
const StateDeleted = "deleted"

// Agent statuses.
const (
	AgentConnected    = "connected"
	AgentDisconnected = "disconnected"
)

// Progress statuses an agent reports.
const (
	ProgressStarted   = "started"
	ProgressSucceeded = "succeeded"
	ProgressFailed    = "failed"
)

// Steps of provisioning, in order, as shown in stateDetail.
const (
	StepAllocatingDisk  = "allocating-disk"
	StepLaunchingVM     = "launching-vm"
	StepWaitingForAgent = "waiting-for-agent"
	StepRunningSetup    = "running-setup"
	StepInstalling      = "installing"
	StepStarting        = "starting"
	StepStoppingVM      = "stopping-vm"
	StepDeletingDisk    = "deleting-disk"
	StepQueued          = "queued"
)

// Next is what an action changes an instance to.
type Next struct {
	Desired, State, Detail string
	// Reprovision: the current VM must be replaced.
	Reprovision bool
	// Remove: the record can go at once (nothing was ever provisioned).
	Remove bool
}

// Transition decides what an action does to an instance in its current
// state: the next desired and observed state, nil when the action is already
// in effect, or a conflict when another action is in progress.
func Transition(in interface {
	GetState() string
	GetDesiredState() string
	GetName() string
}, action string) (*Next, error) {
	state := in.GetState()
	busy := func() error {
		return apierr.Conflict("instance %q is %s (asked: %s): wait until it finishes, then try again", in.GetName(), state, in.GetDesiredState())
	}
	switch action {
	case "provision":
		switch state {
		case StateRunning:
			return nil, nil
		case StateProvisioning:
			if in.GetDesiredState() == DesiredProvisioned {
				return nil, nil
			}
			return nil, busy()
		case StateCreated, StateDeprovisioned, StateFailed:
			return &Next{Desired: DesiredProvisioned, State: StateProvisioning, Detail: StepQueued}, nil
		}
	case "deprovision":
		switch state {
		case StateCreated, StateDeprovisioned:
			return nil, nil
		case StateDeprovisioning:
			if in.GetDesiredState() == DesiredDeprovisioned {
				return nil, nil
			}
			return nil, busy()
		case StateRunning, StateFailed:
			return &Next{Desired: DesiredDeprovisioned, State: StateDeprovisioning, Detail: StepQueued}, nil
		}
	case "reprovision":
		switch state {
		case StateRunning, StateFailed:
			return &Next{Desired: DesiredProvisioned, State: StateDeprovisioning, Detail: StepQueued, Reprovision: true}, nil
		case StateCreated, StateDeprovisioned:
			return &Next{Desired: DesiredProvisioned, State: StateProvisioning, Detail: StepQueued}, nil
		}
	case "delete":
		switch state {
		case StateCreated:
			return &Next{Remove: true}, nil
		case StateDeleting:
			return nil, nil
		case StateDeprovisioned, StateFailed:
			return &Next{Desired: DesiredDeleted, State: StateDeleting, Detail: StepQueued}, nil
		case StateRunning:
			return nil, apierr.Conflict("instance %q is running: deprovision it before deleting it", in.GetName())
		}
	default:
		return nil, apierr.Invalid("action", "%q is not one of provision, deprovision, reprovision, delete", action)
	}
	return nil, busy()
}
