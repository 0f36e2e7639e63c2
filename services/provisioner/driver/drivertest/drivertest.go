// Package drivertest is the contract every cloud driver keeps, as one suite
// run against each implementation: resources are named by the ids the
// provisioner chose, making one twice finds the first, and destroying what
// is missing is not an error.
package drivertest

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"flotilla.dev/flotilla/services/provisioner/driver"
)

// Run checks d against the driver contract. It creates one disk and one VM
// with fresh ids and destroys them again.
func Run(t *testing.T, d driver.Driver) {
	t.Helper()
	ctx := context.Background()
	suffix := uuid.NewString()[:8]
	disk := driver.DiskSpec{ID: "disk-" + suffix, InstanceID: "i-" + suffix, SizeGB: 1}
	vm := driver.VMSpec{ID: "vm-" + suffix, InstanceID: disk.InstanceID, InstanceName: "contract-" + suffix,
		DiskID: disk.ID, DiskSizeGB: disk.SizeGB,
		Bootstrap: driver.Bootstrap{GatewayAddr: "127.0.0.1:1", JoinToken: "fjt_contract", CAPEM: "-"}}

	if d.Name() == "" {
		t.Error("Name() is empty")
	}
	for i := range 2 {
		got, err := d.EnsureDisk(ctx, disk)
		if err != nil {
			t.Fatalf("EnsureDisk (call %d): %v", i+1, err)
		}
		if got.ID != disk.ID || got.SizeGB != disk.SizeGB {
			t.Errorf("EnsureDisk (call %d) = %+v; want id %s, %d GiB", i+1, got, disk.ID, disk.SizeGB)
		}
	}
	for i := range 2 {
		got, err := d.EnsureVM(ctx, vm)
		if err != nil {
			t.Fatalf("EnsureVM (call %d): %v", i+1, err)
		}
		if got.ID != vm.ID {
			t.Errorf("EnsureVM (call %d) = %+v; want id %s", i+1, got, vm.ID)
		}
	}
	for i := range 2 {
		if err := d.DeleteVM(ctx, vm.ID); err != nil {
			t.Errorf("DeleteVM (call %d): %v", i+1, err)
		}
	}
	for i := range 2 {
		if err := d.DeleteDisk(ctx, disk.ID); err != nil {
			t.Errorf("DeleteDisk (call %d): %v", i+1, err)
		}
	}
	if err := d.DeleteVM(ctx, "vm-never-"+suffix); err != nil {
		t.Errorf("DeleteVM of a VM that never existed: %v", err)
	}
	if err := d.DeleteDisk(ctx, "disk-never-"+suffix); err != nil {
		t.Errorf("DeleteDisk of a disk that never existed: %v", err)
	}
}
