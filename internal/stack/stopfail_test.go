package stack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
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
	bus := testkit.SecureNATS(t)
	root := localRoot(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{LocalRoot: root, AgentCommand: []string{agent}}, bus))
	ctx := t.Context()
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 30*time.Second)
	admin := rpc.As(vocab.User("admin"))
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "none"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "small", Provider: "local", DataDiskGb: 1}}, admin)
	must(t, err)
	in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
	must(t, err)
	id := in.GetId()
	act := func(a vocab.Action) {
		t.Helper()
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(a)}, admin)
		must(t, err)
	}
	until := func(what string, state vocab.State) *inventoryv1.Instance {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
			must(t, err)
			if vocab.State(got.GetState()) == state && got.GetDesiredState() != "" {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: web-1 is %s (%s), never %s", what, got.GetState(), got.GetStateDetail(), state)
			}
		}
	}
	act(vocab.ActionProvision)
	vm := until("provision", vocab.StateRunning).GetVmId()

	pinned := filepath.Join(root, "vms", vm, "pinned")
	must(t, os.WriteFile(pinned, nil, 0o600))
	if out, err := exec.Command("chattr", "+i", pinned).CombinedOutput(); err != nil {
		t.Skipf("chattr +i on the local root: %v: %s (the test needs a file system with immutable files, and root)", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", pinned).Run() })
	act(vocab.ActionDeprovision)
	got := until("deprovision", vocab.StateFailed)
	if !strings.HasPrefix(got.GetStateDetail(), "stopping-vm: delete vm "+vm) || got.GetVmId() != vm {
		t.Fatalf("the refused deprovision: %s, VM %s", got.GetStateDetail(), got.GetVmId())
	}
	act(vocab.ActionProvision)
	got = until("provision while the VM cannot go", vocab.StateFailed)
	if !strings.HasPrefix(got.GetStateDetail(), "stopping-vm: delete vm "+vm) {
		t.Fatalf("a provision while the old VM cannot go: %s", got.GetStateDetail())
	}
	must(t, exec.Command("chattr", "-i", pinned).Run())
	act(vocab.ActionProvision)
	got = until("provision", vocab.StateRunning)
	if got.GetVmId() == vm || got.GetVmId() == "" || vocab.AgentStatus(got.GetAgent().GetStatus()) != vocab.AgentConnected {
		t.Fatalf("running again on VM %q (was %s), agent %v: want a new VM with its agent", got.GetVmId(), vm, got.GetAgent())
	}
	if _, err := os.Stat(filepath.Join(root, "vms", vm)); !os.IsNotExist(err) {
		t.Errorf("the old VM is still there: %v", err)
	}
}
