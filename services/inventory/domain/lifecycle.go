package domain

// Desired states an operator can ask for.
const (
	DesiredProvisioned   = "provisioned"
	DesiredDeprovisioned = "deprovisioned"
	DesiredDeleted       = "deleted"
)

// Observed states of an instance.
const (
	StateCreated        = "created"
	StateProvisioning   = "provisioning"
	StateRunning        = "running"
	StateDeprovisioning = "deprovisioning"
	StateDeprovisioned  = "deprovisioned"
	StateDeleting       = "deleting"
	StateFailed         = "failed"
)

// AtRest reports whether an instance in this state has no VM and nothing in
// progress, so it may be deleted or moved to another template or network.
func AtRest(state string) bool {
	return state == StateCreated || state == StateDeprovisioned
}
