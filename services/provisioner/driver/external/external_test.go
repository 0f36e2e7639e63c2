package external

import (
	"context"
	"testing"

	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/drivertest"
)

func TestExternalDriverKeepsTheDriverContract(t *testing.T) {
	t.Parallel()
	drivertest.Run(t, New())
}

// The machine is the operator's: the VM is the recorded id and nothing
// else, and the bootstrap it was handed goes nowhere.
func TestExternalVMIsOnlyItsID(t *testing.T) {
	t.Parallel()
	vm, err := New().EnsureVM(context.Background(), driver.VMSpec{ID: "vm-1", InstanceID: "i-1",
		Bootstrap: driver.Bootstrap{GatewayAddr: "127.0.0.1:7702", JoinToken: "fjt_x", CAPEM: "pem"}})
	if err != nil {
		t.Fatal(err)
	}
	if vm != (driver.VM{ID: "vm-1"}) {
		t.Errorf("EnsureVM = %+v; want only the id", vm)
	}
	if New().Name() != "external" {
		t.Errorf("Name() = %q", New().Name())
	}
}
