package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/failpoint"
)

// TestProvisioningResumesAfterACrashWithoutDuplicates kills Flotilla (the
// provisioner with it) at each step of provisioning, as kill -9 would, starts
// it again, and requires the instance to reach running with exactly one VM
// and one data disk: the ones recorded before the crash.
func TestProvisioningResumesAfterACrashWithoutDuplicates(t *testing.T) {
	t.Parallel()
	for _, fp := range []string{
		"provisioner.disk-recorded",  // disk id recorded, disk not made yet
		"provisioner.disk-allocated", // disk made, not yet recorded as allocated
		"provisioner.vm-recorded",    // VM id recorded, VM not launched yet
		"provisioner.vm-launched",    // VM running, launch not recorded
		"provisioner.command-sent",   // the agent is setting up; nobody is waiting
	} {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			f := newFleet(t)
			net, tmpl := f.setup("lab", "none", `[{"type":"script","script":"sleep 1; date >> boots.txt"}]`)
			id := f.instance("crash-1", net, tmpl, "")
			dir, base := f.dir, f.base
			f.stop(t)

			crashing := startUp(t, dir, base, failpoint.Env+"="+fp)
			f.upProc = crashing
			f.api(200, "POST", "/api/v1/instances/"+id+":provision", "")
			select {
			case <-crashing.done:
				var ee *exec.ExitError
				if !errors.As(crashing.err, &ee) || ee.ExitCode() != failpoint.ExitCode {
					t.Fatalf("flotilla up ended with %v, not at the failpoint:\n%s", crashing.err, crashing.out)
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("failpoint %s never hit:\n%s", fp, crashing.out)
			}

			f.upProc = startUp(t, dir, base)
			in := f.waitState(id, "running", 3*time.Minute)
			vms, _ := filepath.Glob(filepath.Join(dir, "vms", "*"))
			disks, _ := filepath.Glob(filepath.Join(dir, "disks", "*"))
			if len(vms) != 1 || len(disks) != 1 {
				t.Fatalf("after the crash: VMs %v, disks %v; want one of each", vms, disks)
			}
			if filepath.Base(vms[0]) != in["vmId"] || filepath.Base(disks[0]) != in["dataDisk"].(map[string]any)["id"] {
				t.Fatalf("the instance records vm %v and disk %v, but %v and %v exist", in["vmId"], in["dataDisk"], vms, disks)
			}
			if n := liveAgents(dir); n != 1 {
				t.Fatalf("%d agent processes run for one instance", n)
			}
			if boots := countLines(t, filepath.Join(disks[0], "boots.txt")); boots < 1 || boots > 2 {
				t.Fatalf("setup ran %d times", boots)
			}
			f.api(200, "POST", "/api/v1/instances/"+id+":deprovision", "")
			f.waitState(id, "deprovisioned", time.Minute)
			f.stop(t)
		})
	}
}

// liveAgents counts the agent processes of a data directory's local VMs.
func liveAgents(dir string) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "\x00agent\x00") || strings.Contains(string(b), "\x00node\x00") || !strings.Contains(string(b), dir) {
			continue
		}
		if syscall.Kill(pid, 0) == nil && !gone(pid) {
			n++
		}
	}
	return n
}
