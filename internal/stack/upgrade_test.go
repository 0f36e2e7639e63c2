package stack_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAgentsUpgradeThemselvesToTheManagersVersion: local VMs started with
// an older agent (0.0.9-old) are told to upgrade to the manager's agent,
// each in its own way:
//   - a's agent runs from a binary that is still the old one: it downloads
//     the manager's from the gateway, checks its SHA-256, and, not allowed
//     to write beside its executable (the VM runs as a user of its own),
//     installs it in its state directory;
//   - b's binary was replaced with the manager's (as an upgrade of the
//     manager replaces it): its agent runs it again, with no download.
//
// Each agent stays the same process (the local provider still sees its
// VM), comes back at the manager's version, and serves its node software
// again; its last progress says the upgrade succeeded. Asking again is a no-op,
// and an instance without a VM is refused.
func TestAgentsUpgradeThemselvesToTheManagersVersion(t *testing.T) {
	t.Parallel()
	newAgent, err := agentBinary()
	must(t, err)
	bin := t.TempDir()
	must(t, os.Chmod(bin, 0o755)) // the VMs' users run the binary from it
	old := filepath.Join(bin, "flotilla-agent")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=0.0.9-old", "-o", bin+"/",
		"flotilla.dev/flotilla/cmd/flotilla-agent", "flotilla.dev/flotilla/cmd/flotilla-node")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the old agent: %v\n%s", err, out)
	}
	port := testkit.FreePort(t)
	lab := newLocalLab(t, stack.Config{
		AgentCommand: []string{old, "--heartbeat-interval", "1s"}, Version: "0.1.0-dev", AgentBinary: newAgent,
		HTTPAddr: "127.0.0.1:" + strconv.Itoa(port), PublicURL: "http://127.0.0.1:" + strconv.Itoa(port),
	})
	ctx, root := t.Context(), lab.root
	connectedAt := func(version string) func(*inventoryv1.Instance) bool {
		return func(in *inventoryv1.Instance) bool {
			return vocab.State(in.GetState()) == vocab.StateRunning && in.GetAgent().GetVersion() == version &&
				vocab.AgentStatus(in.GetAgent().GetStatus()) == vocab.AgentConnected
		}
	}
	running := map[string]*inventoryv1.Instance{}
	for _, name := range []string{"a", "b", "c"} {
		in := lab.create(name)
		lab.act(in.GetId(), vocab.ActionProvision)
		running[name] = in
	}
	for name, in := range running {
		running[name] = lab.until(in.GetId(), "running with the old agent", connectedAt("0.0.9-old"))
	}
	pidOf := func(in *inventoryv1.Instance) int {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, "vms", in.GetVmId(), "agent.pid"))
		must(t, err)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		must(t, err)
		return pid
	}
	upgrade := func(in *inventoryv1.Instance, want string) {
		t.Helper()
		pid := pidOf(in)
		_, err := rpc.Call(ctx, lab.gateway, endpoints.AgentUpgrade, &inventoryv1.InstanceActionRequest{Id: in.GetId()}, lab.admin)
		must(t, err)
		now := lab.until(in.GetId(), "connected at the manager's version", connectedAt("0.1.0-dev"))
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != want {
			t.Errorf("%s's agent (pid %d) runs %q (%v), want %s", in.GetName(), pid, exe, err, want)
		}
		if now.GetVmId() != in.GetVmId() || now.GetAddresses().GetUrl() == "" {
			t.Errorf("%s after the upgrade: VM %s (was %s), node URL %q", in.GetName(), now.GetVmId(), in.GetVmId(), now.GetAddresses().GetUrl())
		}
		var body []byte
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			resp, err := http.Get(now.GetAddresses().GetUrl())
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's node software does not answer after the upgrade: %v", in.GetName(), err)
			}
		}
		if !strings.Contains(string(body), in.GetName()) {
			t.Errorf("%s's node page after the upgrade:\n%s", in.GetName(), body)
		}
		if p := now.GetAgentProgress(); p != vocab.AgentProgress(vocab.StepUpgradingAgent, vocab.ProgressSucceeded) {
			t.Errorf("%s's agent progress after the upgrade: %q", in.GetName(), p)
		}
	}

	a := running["a"]
	upgrade(a, filepath.Join(root, "vms", a.GetVmId(), "state", "flotilla-agent"))

	// The manager's binary replaces the old one, as an upgrade does.
	must(t, filecopy.File(newAgent, old+".new"))
	must(t, os.Chmod(old+".new", 0o755))
	must(t, os.Rename(old+".new", old))
	upgrade(running["b"], old)

	// c's agent, the one left behind, by a rollout of every agent behind;
	// a rollout naming a skips it, its agent at the version already.
	c := running["c"]
	pid := pidOf(c)
	ro, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutStart, &inventoryv1.CreateRolloutRequest{Action: "upgrade-agent", All: true}, lab.admin)
	must(t, err)
	if ro.GetAgentVersion() != "0.1.0-dev" || ro.GetParallel() != 10 || len(ro.GetInstances()) != 1 || ro.GetInstances()[0].GetInstanceName() != "c" {
		t.Fatalf("the rollout of every agent behind: %v", ro)
	}
	rolloutDone := func(ro *inventoryv1.Rollout) *inventoryv1.Rollout {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutGet, &inventoryv1.GetRolloutRequest{Id: ro.GetId()}, lab.admin)
			must(t, err)
			if !vocab.RolloutState(got.GetState()).Open() {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("rollout %s is %s: %v", got.GetName(), got.GetState(), got.GetInstances())
			}
		}
	}
	ro = rolloutDone(ro)
	if ro.GetMessage() != "done: 1 succeeded" {
		t.Fatalf("the rollout of c's agent: %s, %v", ro.GetMessage(), ro.GetInstances())
	}
	if now := lab.get(c.GetId()); now.GetAgent().GetVersion() != "0.1.0-dev" || pidOf(now) != pid {
		t.Errorf("c after the rollout: agent %v, pid %d (was %d)", now.GetAgent(), pidOf(now), pid)
	}
	ro, err = rpc.Call(ctx, lab.gateway, endpoints.RolloutStart, &inventoryv1.CreateRolloutRequest{Action: "upgrade-agent", InstanceIds: []string{a.GetId()}}, lab.admin)
	must(t, err)
	if ro = rolloutDone(ro); ro.GetMessage() != "done: 1 skipped" || ro.GetInstances()[0].GetMessage() != "the agent is at version 0.1.0-dev already" {
		t.Errorf("a rollout of an agent at the version: %s, %v", ro.GetMessage(), ro.GetInstances())
	}

	// Asked again: the agent is at the manager's version; nothing is sent.
	again, err := rpc.Call(ctx, lab.gateway, endpoints.AgentUpgrade, &inventoryv1.InstanceActionRequest{Id: a.GetId()}, lab.admin)
	must(t, err)
	if again.GetAgent().GetVersion() != "0.1.0-dev" {
		t.Errorf("asked again: %v", again.GetAgent())
	}
	lab.act(a.GetId(), vocab.ActionDeprovision)
	lab.until(a.GetId(), "deprovisioned", inState(vocab.StateDeprovisioned))
	_, err = rpc.Call(ctx, lab.gateway, endpoints.AgentUpgrade, &inventoryv1.InstanceActionRequest{Id: a.GetId()}, lab.admin)
	if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), "is deprovisioned") {
		t.Errorf("the upgrade of a deprovisioned instance's agent: %v", err)
	}
}
