// Package external is the "external" provider: an existing machine the
// operator starts the agent on. Flotilla creates nothing in any cloud for
// it: the machine has its own disk, and its "VM" is only the id the
// provisioner chose and recorded, which the agent's certificate is bound to.
// The operator (or a load driver) mints a join token for the instance once
// it waits for its agent (POST /api/v1/instances/{id}:joinToken) and starts
// the agent with it; the provisioner then bootstraps that agent as usual.
//
// Nothing is destroyed either: before DeleteVM the provisioner releases
// the agent (agent.v1.Release), which stops the node software, forgets its
// certificate and exits, and from then on the CA refuses that certificate,
// so the agent can neither connect nor renew: the machine is the
// operator's again.
package external

import (
	"context"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/services/provisioner/driver"
)

// Name is the provider name.
const Name = string(vocab.ProviderExternal)

// Driver is the external provider. It keeps no state.
type Driver struct{}

// New returns the external driver.
func New() *Driver { return &Driver{} }

// Name returns "external".
func (*Driver) Name() string { return Name }

// EnsureDisk records nothing: the machine has its own disk.
func (*Driver) EnsureDisk(_ context.Context, spec driver.DiskSpec) (driver.Disk, error) {
	return driver.Disk{ID: spec.ID, SizeGB: spec.SizeGB}, nil
}

// DeleteDisk does nothing: the disk is the machine's.
func (*Driver) DeleteDisk(context.Context, string) error { return nil }

// EnsureVM launches nothing and returns the VM under the id the provisioner
// recorded. Its bootstrap (a join token among it) is dropped: the operator
// mints the token the agent uses when starting it.
func (*Driver) EnsureVM(_ context.Context, spec driver.VMSpec) (driver.VM, error) {
	return driver.VM{ID: spec.ID}, nil
}

// DeleteVM does nothing: the machine is the operator's; its agent was
// released before, and the CA refuses its certificate.
func (*Driver) DeleteVM(context.Context, string) error { return nil }
