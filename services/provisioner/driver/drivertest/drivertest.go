// Package drivertest is the contract every cloud driver keeps, as one suite
// run against each implementation: resources are named by the ids the
// provisioner chose, making one twice finds the first, and destroying what
// is missing is not an error. A driver may answer with the cloud's own id
// instead; the provisioner records it, so the suite checks that the
// returned id finds the same resource as the chosen one.
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
	RunWith(t, d, nil)
}

// RunWith is Run with place filling in what the driver needs beyond the
// contract's ids (a cloud driver: network, image, instance type, bootstrap).
func RunWith(t *testing.T, d driver.Driver, place func(*driver.DiskSpec, *driver.VMSpec)) {
	t.Helper()
	ctx := context.Background()
	suffix := uuid.NewString()[:8]
	disk := driver.DiskSpec{ID: "disk-" + suffix, InstanceID: "i-" + suffix, SizeGB: 1}
	vm := driver.VMSpec{ID: "vm-" + suffix, InstanceID: disk.InstanceID, InstanceName: "contract-" + suffix,
		DiskID: disk.ID, DiskSizeGB: disk.SizeGB,
		Bootstrap: driver.Bootstrap{GatewayAddr: "127.0.0.1:1", JoinToken: "fjt_contract", CAPEM: "-"}}
	if place != nil {
		place(&disk, &vm)
	}

	if d.Name() == "" {
		t.Error("Name() is empty")
	}
	diskID := ensureDisk(t, ctx, d, disk)
	vm.DiskID = diskID
	vmID := ensureVM(t, ctx, d, vm)
	for _, id := range []string{vmID, vm.ID} {
		if err := d.DeleteVM(ctx, id); err != nil {
			t.Errorf("DeleteVM(%s): %v", id, err)
		}
	}
	for _, id := range []string{diskID, disk.ID} {
		if err := d.DeleteDisk(ctx, id); err != nil {
			t.Errorf("DeleteDisk(%s): %v", id, err)
		}
	}
	if err := d.DeleteVM(ctx, "vm-never-"+suffix); err != nil {
		t.Errorf("DeleteVM of a VM that never existed: %v", err)
	}
	if err := d.DeleteDisk(ctx, "disk-never-"+suffix); err != nil {
		t.Errorf("DeleteDisk of a disk that never existed: %v", err)
	}
}

// ensureDisk makes the disk twice by its chosen id and once by the id
// returned, and returns that id.
func ensureDisk(t *testing.T, ctx context.Context, d driver.Driver, disk driver.DiskSpec) string {
	t.Helper()
	got, err := d.EnsureDisk(ctx, disk)
	if err != nil {
		t.Fatalf("EnsureDisk: %v", err)
	}
	if got.ID == "" || got.SizeGB != disk.SizeGB {
		t.Fatalf("EnsureDisk = %+v; want an id and %d GiB", got, disk.SizeGB)
	}
	for _, id := range []string{disk.ID, got.ID} {
		again := disk
		again.ID = id
		g, err := d.EnsureDisk(ctx, again)
		if err != nil {
			t.Fatalf("EnsureDisk(%s) again: %v", id, err)
		}
		if g.ID != got.ID {
			t.Errorf("EnsureDisk(%s) again = %+v; want the disk %s", id, g, got.ID)
		}
	}
	return got.ID
}

// ensureVM is ensureDisk for the VM.
func ensureVM(t *testing.T, ctx context.Context, d driver.Driver, vm driver.VMSpec) string {
	t.Helper()
	got, err := d.EnsureVM(ctx, vm)
	if err != nil {
		t.Fatalf("EnsureVM: %v", err)
	}
	if got.ID == "" {
		t.Fatalf("EnsureVM = %+v; want an id", got)
	}
	for _, id := range []string{vm.ID, got.ID} {
		again := vm
		again.ID = id
		g, err := d.EnsureVM(ctx, again)
		if err != nil {
			t.Fatalf("EnsureVM(%s) again: %v", id, err)
		}
		if g.ID != got.ID {
			t.Errorf("EnsureVM(%s) again = %+v; want the VM %s", id, g, got.ID)
		}
	}
	return got.ID
}
