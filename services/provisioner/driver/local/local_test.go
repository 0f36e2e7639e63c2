package local

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/drivertest"
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

// reachableDir is a temp dir a VM's own user can enter, as a data
// directory is.
func reachableDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestLocalDriverKeepsTheDriverContract(t *testing.T) {
	drivertest.Run(t, newDriver(t, reachableDir(t)))
}

// TestStartReturnsOnceTheExecIsThrough: the kernel shows a process's command
// line only once its exec is through, which may be after exec.Cmd.Start
// returned; the driver knows its VMs by their command line, so an EnsureVM
// right behind a launch would start a second VM if start did not wait.
func TestStartReturnsOnceTheExecIsThrough(t *testing.T) {
	t.Parallel()
	for i := range 300 {
		mark := fmt.Sprintf("vm-%d", i)
		cmd := exec.Command("/bin/sh", "-c", "sleep 60", "agent", "--vm-id", mark)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := start(cmd); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
		_ = cmd.Process.Kill()
		if err != nil || !strings.Contains(string(b), mark) {
			t.Fatalf("launch %d: command line %q (%v) right after start", i, b, err)
		}
	}
}

func TestLocalDriverIsIdempotentAndSurvivesARestart(t *testing.T) {
	ctx := context.Background()
	root := reachableDir(t)
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
	t.Cleanup(func() { KillAll(root) })
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

// A manager killed after starting a VM's agent and before writing its pid
// file leaves the agent running unrecorded: the next manager adopts it
// rather than start a second agent on the disk, and deleting the VM stops
// it.
func TestAnAgentWhosePidFileWasNeverWrittenIsAdopted(t *testing.T) {
	ctx := context.Background()
	root := reachableDir(t)
	d := newDriver(t, root)
	t.Cleanup(func() { KillAll(root) })
	spec, pid := launchVM(t, d, "vm-unrecorded")
	pidFile := filepath.Join(root, "vms", spec.ID, "agent.pid")
	if err := os.Remove(pidFile); err != nil {
		t.Fatal(err)
	}
	next := newDriver(t, root)
	if _, err := next.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := agentsOf(filepath.Join(root, "vms", spec.ID), spec.ID); len(got) != 1 || got[0] != pid {
		t.Fatalf("agents of the VM after a second EnsureVM: %v; want the first alone, pid %d", got, pid)
	}
	if got := pidOf(t, root, spec.ID); got != pid {
		t.Fatalf("the pid file names %d; want the adopted agent, %d", got, pid)
	}
	if err := os.Remove(pidFile); err != nil {
		t.Fatal(err)
	}
	if err := next.DeleteVM(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := agentsOf(filepath.Join(root, "vms", spec.ID), spec.ID); len(got) != 0 {
		t.Fatalf("agents of the VM after DeleteVM: %v", got)
	}

	// The tests' clean-up stops an agent no pid file names, too.
	if _, err := next.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(pidFile); err != nil {
		t.Fatal(err)
	}
	KillAll(root)
	for deadline := time.Now().Add(5 * time.Second); len(agentsOf(filepath.Join(root, "vms", spec.ID), spec.ID)) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("KillAll left the agent no pid file names running")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAnAgentsOwnChildIsNotASecondAgent: a process an agent forks keeps
// the agent's command line and working directory until it execs (here, a
// subshell that never does): it is the agent's, so a VM whose pid file is
// gone is still adopted, not given a second agent, and DeleteVM stops both.
func TestAnAgentsOwnChildIsNotASecondAgent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := reachableDir(t)
	d, err := New(Config{Root: root, AgentCommand: []string{"/bin/sh", "-c", "(sleep 300; :) & wait", "agent"}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { KillAll(root) })
	spec, pid := launchVM(t, d, "vm-forks")
	for deadline := time.Now().Add(5 * time.Second); !hasChildLike(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent's subshell did not start")
		}
	}
	vmDir := filepath.Join(root, "vms", spec.ID)
	if got := agentsOf(vmDir, spec.ID); len(got) != 1 || got[0] != pid {
		t.Fatalf("agents of the VM: %v; want its agent alone, pid %d", got, pid)
	}
	if err := os.Remove(filepath.Join(vmDir, "agent.pid")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnsureVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := pidOf(t, root, spec.ID); got != pid {
		t.Fatalf("the pid file names %d; want the agent adopted, %d", got, pid)
	}
	if err := d.DeleteVM(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := agentsWhere([]string{"\x00--vm-id\x00" + spec.ID + "\x00"}, func(string) bool { return true }); len(got) != 0 {
		t.Fatalf("processes of the VM after DeleteVM: %v", got)
	}
}

// launchVM makes disk-1 and launches VM id on it with d, and returns its
// spec and its agent's pid.
func launchVM(t *testing.T, d *Driver, id string) (driver.VMSpec, int) {
	t.Helper()
	if _, err := d.EnsureDisk(t.Context(), driver.DiskSpec{ID: "disk-1", InstanceID: "i", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	spec := driver.VMSpec{ID: id, InstanceID: "i", DiskID: "disk-1", DiskSizeGB: 1,
		Bootstrap: driver.Bootstrap{GatewayAddr: "127.0.0.1:1", JoinToken: "fjt_secret", CAPEM: "pem"}}
	if _, err := d.EnsureVM(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	return spec, pidOf(t, d.cfg.Root, id)
}

// hasChildLike reports whether pid has a child with its command line.
func hasChildLike(pid int) bool {
	own, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid := procStat(child); ppid == pid {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child)); err == nil && string(b) == string(own) {
				return true
			}
		}
	}
	return false
}

// TestEachDiskHasItsOwnUser: as root, each data disk gets a user id of its
// own; the VM's agent runs as it, with a clean environment, and can read
// neither the manager's files nor another disk.
// TestProvisionersSharingARootNeverGiveTwoDisksOneUser: drivers of several
// provisioner processes on one root (a cluster's hosts on one machine)
// allocating disks at once give each its own user; a user is not given
// again once its disk is deleted.
func TestProvisionersSharingARootNeverGiveTwoDisksOneUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("isolation needs root")
	}
	t.Parallel()
	ctx := context.Background()
	root := reachableDir(t)
	drivers := []*Driver{newDriver(t, root), newDriver(t, root), newDriver(t, root)}
	const disks = 30
	var wg sync.WaitGroup
	for i := range disks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := drivers[i%len(drivers)].EnsureDisk(ctx, driver.DiskSpec{ID: fmt.Sprintf("disk-%d", i), SizeGB: 1}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	owners := map[int]string{}
	for i := range disks {
		id := fmt.Sprintf("disk-%d", i)
		uid, ok := drivers[0].owner(drivers[0].diskDir(id))
		if !ok || uid < FirstVMUID {
			t.Fatalf("%s: owner %d", id, uid)
		}
		if other, dup := owners[uid]; dup {
			t.Errorf("%s and %s have one user, %d", id, other, uid)
		}
		owners[uid] = id
	}
	highest := FirstVMUID + disks - 1
	for i := range disks {
		if uid, _ := drivers[0].owner(drivers[0].diskDir(fmt.Sprintf("disk-%d", i))); uid == highest {
			if err := drivers[1].DeleteDisk(ctx, fmt.Sprintf("disk-%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := drivers[2].EnsureDisk(ctx, driver.DiskSpec{ID: "disk-new", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	if uid, _ := drivers[2].owner(drivers[2].diskDir("disk-new")); uid <= highest {
		t.Errorf("a new disk got user %d, given before (the highest was %d)", uid, highest)
	}
}

func TestEachDiskHasItsOwnUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("isolation needs root; TestWithoutRootVMsAreNotIsolated covers the rest")
	}
	ctx := context.Background()
	root := reachableDir(t)
	secret := filepath.Join(root, "manager.key")
	if err := os.WriteFile(secret, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	probe := `id -u > $HOME/uid; env > $HOME/env; cat ` + secret + ` > $HOME/stolen 2>&1; ls ` + filepath.Join(root, "disks", "disk-a") + ` > $HOME/peek 2>&1; touch $HOME/probed; sleep 300`
	d, err := New(Config{Root: root, AgentCommand: []string{"/bin/sh", "-c", probe, "agent"}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_NATS_CREDS", "/manager/bus/provisioner.creds") // the manager's environment
	for _, disk := range []string{"disk-a", "disk-b"} {
		if _, err := d.EnsureDisk(ctx, driver.DiskSpec{ID: disk, SizeGB: 1}); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := d.owner(d.diskDir("disk-a"))
	b, _ := d.owner(d.diskDir("disk-b"))
	if a < FirstVMUID || b < FirstVMUID || a == b {
		t.Fatalf("disk users %d and %d", a, b)
	}
	// A disk from before isolation (the manager's) is handed to a user of
	// its own when a VM starts on it.
	old := d.diskDir("disk-old")
	if err := os.MkdirAll(filepath.Join(old, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnsureVM(ctx, driver.VMSpec{ID: "vm-old", DiskID: "disk-old", Bootstrap: driver.Bootstrap{JoinToken: "t", CAPEM: "p"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { KillAll(root) })
	if u, _ := d.owner(filepath.Join(old, "sub")); u < FirstVMUID || u == a || u == b {
		t.Errorf("the old disk's files belong to %d", u)
	}
	if _, err := d.EnsureVM(ctx, driver.VMSpec{ID: "vm-b", DiskID: "disk-b", Bootstrap: driver.Bootstrap{JoinToken: "t", CAPEM: "p"}}); err != nil {
		t.Fatal(err)
	}
	home := d.diskDir("disk-b")
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Once probed exists every probe's output is whole (ls writes its
		// error in several pieces).
		if _, err := os.Stat(filepath.Join(home, "probed")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VM's probe did not run")
		}
		time.Sleep(20 * time.Millisecond)
	}
	read := func(name string) string {
		data, _ := os.ReadFile(filepath.Join(home, name))
		return string(data)
	}
	if strings.TrimSpace(read("uid")) != strconv.Itoa(b) {
		t.Errorf("the agent runs as %q, want the disk's user %d", read("uid"), b)
	}
	if strings.Contains(read("env"), "FLOTILLA_") {
		t.Errorf("the agent got the manager's environment:\n%s", read("env"))
	}
	if !strings.Contains(read("stolen"), "Permission denied") || !strings.Contains(read("peek"), "Permission denied") {
		t.Errorf("the VM read what is not its own: %q, %q", read("stolen"), read("peek"))
	}
}

// TestWithoutRootVMsAreNotIsolated: a manager that is not root cannot give
// VMs users of their own, and says so.
func TestWithoutRootVMsAreNotIsolated(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	d, err := newWithEUID(Config{Root: t.TempDir(), AgentCommand: fakeAgent, Log: slog.New(slog.NewTextHandler(&logs, nil))}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if d.isolate || !strings.Contains(logs.String(), "local VMs are not isolated") {
		t.Fatalf("isolate %v, log %q", d.isolate, logs.String())
	}
}

// TestAnAgentThatRanItselfAgainIsStillTheVMs: an agent that upgraded
// itself runs again in the same process with its flags as --name=value
// (here a shell that execs itself so): with no pid file naming it, it is
// still the VM's agent, adopted and not doubled, and the tests' clean-up
// stops it.
func TestAnAgentThatRanItselfAgainIsStillTheVMs(t *testing.T) {
	t.Parallel()
	root := reachableDir(t)
	reexec := []string{"/bin/sh", "-c", `for a; do [ "$prev" = --vm-id ] && exec /bin/sh -c 'sleep 300 & wait' agent --vm-id="$a"; prev=$a; done`, "agent"}
	d, err := New(Config{Root: root, AgentCommand: reexec, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { KillAll(root) })
	spec, pid := launchVM(t, d, "vm-reexec")
	vmDir := filepath.Join(root, "vms", spec.ID)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(b), "--vm-id="+spec.ID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not run itself again")
		}
	}
	if err := os.Remove(filepath.Join(vmDir, "agent.pid")); err != nil {
		t.Fatal(err)
	}
	if got := agentsOf(vmDir, spec.ID); len(got) != 1 || got[0] != pid {
		t.Fatalf("agents of the VM: %v; want the agent that ran itself again, pid %d", got, pid)
	}
	KillAll(root)
	for deadline := time.Now().Add(5 * time.Second); len(agentsOf(vmDir, spec.ID)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("KillAll left the agent that ran itself again running")
		}
	}
}
