package stack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
)

// TestProvisioningAgainAfterTheCloudRefusedToStopTheVMGivesANewVM: a
// deprovision whose VM the cloud refuses to delete (here a local VM with
// an immutable file in its directory) fails at stopping-vm, its agent
// released and gone. Provisioned again while the cloud still refuses, it
// fails at stopping-vm again, saying why; once the cloud lets the VM go,
// the old VM is deleted and the instance runs on a new one.
func TestProvisioningAgainAfterTheCloudRefusedToStopTheVMGivesANewVM(t *testing.T) {
	t.Parallel()
	agent, err := agentBinary()
	must(t, err)
	lab := newLocalLab(t, stack.Config{AgentCommand: []string{agent}})
	id := lab.create("web-1").GetId()
	lab.act(id, vocab.ActionProvision)
	vm := lab.until(id, "running", inState(vocab.StateRunning)).GetVmId()

	pinned := filepath.Join(lab.root, "vms", vm, "pinned")
	must(t, os.WriteFile(pinned, nil, 0o600))
	if out, err := exec.Command("chattr", "+i", pinned).CombinedOutput(); err != nil {
		t.Skipf("chattr +i on the local root: %v: %s (the test needs a file system with immutable files, and root)", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", pinned).Run() })
	lab.act(id, vocab.ActionDeprovision)
	got := lab.until(id, "failed", inState(vocab.StateFailed))
	if !strings.HasPrefix(got.GetStateDetail(), "stopping-vm: delete vm "+vm) || got.GetVmId() != vm {
		t.Fatalf("the refused deprovision: %s, VM %s", got.GetStateDetail(), got.GetVmId())
	}
	lab.act(id, vocab.ActionProvision)
	got = lab.until(id, "failed while the VM cannot go", inState(vocab.StateFailed))
	if !strings.HasPrefix(got.GetStateDetail(), "stopping-vm: delete vm "+vm) {
		t.Fatalf("a provision while the old VM cannot go: %s", got.GetStateDetail())
	}
	must(t, exec.Command("chattr", "-i", pinned).Run())
	lab.act(id, vocab.ActionProvision)
	got = lab.until(id, "running", inState(vocab.StateRunning))
	if got.GetVmId() == vm || got.GetVmId() == "" || vocab.AgentStatus(got.GetAgent().GetStatus()) != vocab.AgentConnected {
		t.Fatalf("running again on VM %q (was %s), agent %v: want a new VM with its agent", got.GetVmId(), vm, got.GetAgent())
	}
	if _, err := os.Stat(filepath.Join(lab.root, "vms", vm)); !os.IsNotExist(err) {
		t.Errorf("the old VM is still there: %v", err)
	}
}
