package local

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/services/provisioner/driver"
)

// fakeAgent stands for the agent binary: a real long-running process that
// also starts a child (like the node software), so group teardown is tested.
var fakeAgent = []string{"/bin/sh", "-c", "sleep 300 & wait", "agent"}

func newDriver(t *testing.T, root string) *Driver {
	t.Helper()
	d, err := New(Config{Root: root, AgentCommand: fakeAgent, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func pidOf(t *testing.T, root, vm string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "vms", vm, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func TestLocalDriverIsIdempotentAndSurvivesARestart(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	t.Chdir(root)
	d := newDriver(t, ".") // a relative root, as `flotilla up --data-dir ./.flotilla` gives
	disk := driver.DiskSpec{ID: "disk-1", InstanceID: "i", SizeGB: 1}
	if _, err := d.EnsureDisk(ctx, disk); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "disks", "disk-1", "kept.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnsureDisk(ctx, disk); err != nil {
		t.Fatal(err)
	}
	spec := driver.VMSpec{ID: "vm-1", InstanceID: "i", DiskID: "disk-1", DiskSizeGB: 1,
		Bootstrap: driver.Bootstrap{GatewayAddr: "127.0.0.1:1", JoinToken: "fjt_secret", CAPEM: "pem"}}
	vm, err := d.EnsureVM(ctx, spec)
	if err != nil || vm.ID != "vm-1" || vm.PrivateIP != "127.0.0.1" {
		t.Fatalf("launch: %v %v", vm, err)
	}
	pid := pidOf(t, root, "vm-1")
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	fi, err := os.Stat(filepath.Join(root, "vms", "vm-1", "join-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("join token file: %v %v", fi, err)
	}
	// Launching again, or from a new driver after a manager restart, adopts
	// the running process instead of starting a second one.
	if _, err := d.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	restarted := newDriver(t, root)
	if _, err := restarted.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := pidOf(t, root, "vm-1"); got != pid {
		t.Fatalf("a second VM process was started: pid %d, then %d", pid, got)
	}
	if !restarted.Running("vm-1") {
		t.Fatal("the adopted VM is not seen as running")
	}
	// Deleting the VM stops its whole process group and keeps the disk.
	if err := restarted.DeleteVM(ctx, "vm-1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(-pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("VM processes still running after DeleteVM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(root, "disks", "disk-1", "kept.txt")); err != nil {
		t.Fatalf("disk lost with the VM: %v", err)
	}
	if err := restarted.DeleteVM(ctx, "vm-1"); err != nil {
		t.Fatalf("deleting a deleted VM: %v", err)
	}
	// A new VM on the same disk sees the earlier files; deleting the disk removes them.
	spec.ID = "vm-2"
	if _, err := restarted.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	pid2 := pidOf(t, root, "vm-2")
	t.Cleanup(func() { _ = syscall.Kill(-pid2, syscall.SIGKILL) })
	if err := restarted.DeleteVM(ctx, "vm-2"); err != nil {
		t.Fatal(err)
	}
	if err := restarted.DeleteDisk(ctx, "disk-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "disks", "disk-1")); !os.IsNotExist(err) {
		t.Fatalf("disk still there: %v", err)
	}
	if _, err := restarted.EnsureVM(ctx, driver.VMSpec{ID: "vm-3", DiskID: "disk-1"}); err == nil {
		t.Fatal("a VM launched without its disk")
	}
	if _, err := restarted.EnsureDisk(ctx, driver.DiskSpec{ID: "../escape"}); err == nil {
		t.Fatal("a disk id with a path in it was accepted")
	}
}
