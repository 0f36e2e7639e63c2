package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// TestUpgradingFlotillaAndThenItsAgents is README's "Upgrading" as an
// operator does it: flotilla up of release 0.0.9 runs two local
// instances; it stops, the binaries of 0.1.1 replace it, and it starts on
// the same directory, the VMs still running their 0.0.9 agents.
// `instances list` shows them behind. With the manager's agent binary
// replaced under it, `upgrade-agent --all --parallel 1 --wait` fails on
// the first agent (which runs on), and its rollout stops without asking
// the second; the overview lists it until it is cancelled. With it back, a
// new rollout brings both to 0.1.1 one after the other, on the same VMs,
// serving again,
// and a second --all finds nothing to do; an instance refused is named,
// and the others go on.
func TestUpgradingFlotillaAndThenItsAgents(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	if err := os.Chmod(bin, 0o755); err != nil { // the VMs' users run the agent from it
		t.Fatal(err)
	}
	release := func(version string) {
		t.Helper()
		build := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", bin+"/", ".", "../flotilla-agent", "../flotilla-node")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build release %s: %v\n%s", version, err, out)
		}
	}
	flotilla := filepath.Join(bin, "flotilla")
	dir := dataDir(t)
	t.Cleanup(func() { local.KillAll(dir) })
	release("0.0.9")
	if out, err := exec.Command(flotilla, "admin", "initial-setup", "admin", "S3cret-pass", "--data-dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	base := freeBase(t)
	up, err := launchUpOf(t, flotilla, dir, base, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newCLI(t)
	c.okIn("S3cret-pass\n", "login", "--server", up.url(""), "--username", "admin", "--password-stdin")
	c.okIn("name: lab\nprovider: local\nhttpsStrategy: none\n", "networks", "create", "-f", "-")
	c.okIn("name: small\nprovider: local\ndataDiskGb: 1\n", "templates", "create", "-f", "-")
	c.okIn("name: web-1\nkind: design\ntemplateId: small\nnetworkId: lab\n---\nname: web-2\nkind: design\ntemplateId: small\nnetworkId: lab\n", "instances", "create", "-f", "-")
	c.ok("instances", "provision", "web-1", "web-2", "--wait")
	vms := map[string]string{}
	for _, name := range []string{"web-1", "web-2"} {
		in := instanceJSON(t, c, name)
		if in.Agent.Version != "0.0.9" {
			t.Fatalf("%s's agent under release 0.0.9: %+v", name, in.Agent)
		}
		vms[name] = in.VMID
	}

	up.stop(t)
	release("0.1.1")
	if _, err := launchUpOf(t, flotilla, dir, base, nil); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("instances", "list", "-o", "table"); !strings.Contains(out, "AGENT VERSION") || strings.Count(out, " 0.0.9 ") != 2 {
		t.Fatalf("instances list after the managers' upgrade:\n%s", out)
	}
	// The agents come back to the new managers' agent gateway on their own
	// (an agent is upgraded only while connected), as an operator sees in
	// the list before upgrading them.
	eventually(t, "the 0.0.9 agents to connect to the 0.1.1 managers", func() bool {
		for name := range vms {
			if a := instanceJSON(t, c, name).Agent; a.Status != "connected" || a.Version != "0.0.9" {
				return false
			}
		}
		return true
	})
	// A binary that is not the one the manager started with (replaced
	// under it): the first agent's upgrade fails its checksum and runs on,
	// and the second is not asked.
	agentBin := filepath.Join(bin, "flotilla-agent")
	if err := os.Rename(agentBin, agentBin+".good"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agentBin, []byte("#!/bin/sh\necho not the agent\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, errOut := c.fails("", []string{"the agent's upgrade failed: version 0.1.1: the binary from ", ": not installed; version 0.0.9 runs on", "were not upgraded", "were not asked, after the failure"},
		"instances", "upgrade-agent", "--all", "--parallel", "1", "--wait")
	if strings.Count(out, "the agent upgrades from version 0.0.9 to 0.1.1") != 1 {
		t.Errorf("the failing upgrade asked more than the first agent:\n%s%s", out, errOut)
	}
	// The stopped rollout is among the overview's open ones, until it is
	// cancelled; a stopped rollout cannot be paused.
	stopped, _, _ := strings.Cut(strings.TrimPrefix(out, "rollout "), ":")
	if ov := c.ok("overview", "-o", "table"); !regexp.MustCompile(`\n` + stopped + ` +stopped +1 failed, 1 pending +stopped: upgrade-agent failed on web-`).MatchString(ov) {
		t.Errorf("the overview with a stopped rollout:\n%s", ov)
	}
	c.fails("", []string{"is stopped: it cannot be paused (only a running one)"}, "rollouts", "pause", stopped)
	if got := c.ok("rollouts", "cancel", stopped, "-o", "table"); got != "rollout "+stopped+": cancelled (cancelled by user:admin)\n" {
		t.Errorf("rollouts cancel: %q", got)
	}
	if ov := c.ok("overview", "-o", "table"); strings.Contains(ov, "ROLLOUT") {
		t.Errorf("the overview with no rollout open:\n%s", ov)
	}
	if err := os.Rename(agentBin+".good", agentBin); err != nil {
		t.Fatal(err)
	}
	// One at a time: the first is connected at 0.1.1 before the second is asked.
	out = c.ok("instances", "upgrade-agent", "--all", "--parallel", "1", "--wait")
	header, out, _ := strings.Cut(out, "\n")
	if !strings.HasPrefix(header, "rollout upgrade-agent-") || !strings.HasSuffix(header, ": 2 instances, 1 at a time") {
		t.Errorf("upgrade-agent --all --parallel 1 --wait began %q", header)
	}
	first, _, _ := strings.Cut(out, "\n")
	name := strings.TrimSuffix(first, ": the agent upgrades from version 0.0.9 to 0.1.1")
	other := map[string]string{"web-1": "web-2", "web-2": "web-1"}[name]
	if want := name + ": the agent upgrades from version 0.0.9 to 0.1.1\n" + name + ": agent 0.1.1 connected\n" +
		other + ": the agent upgrades from version 0.0.9 to 0.1.1\n" + other + ": agent 0.1.1 connected\n"; out != want {
		t.Errorf("upgrade-agent --all --parallel 1 --wait said\n%s\nwant\n%s", out, want)
	}
	for name, vm := range vms {
		in := instanceJSON(t, c, name)
		if in.Agent.Version != "0.1.1" || in.Agent.Status != "connected" || in.VMID != vm {
			t.Errorf("%s after the upgrade: agent %+v on VM %s (was %s)", name, in.Agent, in.VMID, vm)
		}
		resp, err := http.Get(in.Addresses.URL)
		if err != nil {
			t.Fatalf("%s's node after the upgrade: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), name) {
			t.Errorf("%s's node after the upgrade: %d\n%s", name, resp.StatusCode, body)
		}
	}
	if out := c.ok("instances", "upgrade-agent", "--all"); out != "every connected agent is at version 0.1.1\n" {
		t.Errorf("a second upgrade-agent --all: %q", out)
	}
	if _, out, _ := strings.Cut(c.ok("instances", "upgrade-agent", "web-1", "--wait"), "\n"); out != "web-1: the agent is at version 0.1.1 already\n" {
		t.Errorf("upgrade-agent of an agent at the manager's version: %q", out)
	}
	// Without --wait, the managers go on with it.
	out = c.ok("instances", "upgrade-agent", "web-1")
	_, name, found := strings.Cut(out, ": 1 instance, 10 at a time\nthe managers roll it out; follow it with: flotilla rollouts watch ")
	if !found || !strings.HasPrefix(name, "upgrade-agent-") {
		t.Fatalf("upgrade-agent without --wait: %q", out)
	}
	if out := c.ok("rollouts", "watch", strings.TrimSpace(name)); out != "web-1: the agent is at version 0.1.1 already\n" {
		t.Errorf("rollouts watch %s: %q", name, out)
	}
	if out := c.ok("rollouts", "list", "--state", "done"); strings.Count(out, "upgrade-agent-") != 3 || !strings.Contains(out, "done: 1 skipped") {
		t.Errorf("rollouts list --state done:\n%s", out)
	}
	c.fails("", []string{"name instances, or give --all"}, "instances", "upgrade-agent")
	c.fails("", []string{"--parallel: 0 is not a number of agents: at least 1"}, "instances", "upgrade-agent", "--all", "--parallel", "0")
	// One refused does not stop the others; the exit names it.
	c.ok("instances", "deprovision", "web-2", "--wait")
	out, errOut = c.fails("", []string{`upgrade-agent web-2: instance "web-2" is deprovisioned`, "the agents of web-2 were not upgraded"},
		"instances", "upgrade-agent", "web-2", "web-1", "--wait")
	if _, out, _ := strings.Cut(out, "\n"); out != "web-1: the agent is at version 0.1.1 already\n" {
		t.Errorf("upgrade-agent web-2 web-1 with web-2 deprovisioned: %q\n%s", out, errOut)
	}

	// small changes: apply names the rollout that reprovisions its
	// instances, which brings web-1 to a new VM of the new version.
	if out, errOut, err := c.run("name: small\ntags: {team: web}\n", nil, "templates", "apply", "-f", "-"); err != nil ||
		!strings.Contains(errOut, "flotilla rollouts start reprovision --template small --wait reprovisions them one at a time") {
		t.Fatalf("apply of a change to small: %v\n%s%s", err, out, errOut)
	}
	out = c.ok("rollouts", "start", "reprovision", "--template", "small", "--wait")
	header, out, _ = strings.Cut(out, "\n")
	if out != "web-1: reprovisions: a new VM from its template as it is now, its data disk kept\nweb-1: running again, on a new VM\n" {
		t.Errorf("rollouts start reprovision --template small --wait: %q", out)
	}
	// get shows its instances.
	name, _, _ = strings.Cut(strings.TrimPrefix(header, "rollout "), ":")
	if out := c.ok("rollouts", "get", name, "-o", "table"); !strings.Contains(out, name+": done: 1 succeeded\nINSTANCE  STATE      ASKED") ||
		!regexp.MustCompile(`\nweb-1 +succeeded +`).MatchString(out) {
		t.Errorf("rollouts get %s:\n%s", name, out)
	}
	if in := instanceJSON(t, c, "web-1"); in.VMID == vms["web-1"] || in.Agent.Status != "connected" {
		t.Errorf("web-1 after the reprovision: agent %s on VM %s (was %s)", in.Agent.Status, in.VMID, vms["web-1"])
	}
	// The rollout's reprovision is on web-1's timeline as its creator's.
	if out := c.ok("instances", "events", "web-1", "-o", "table"); !regexp.MustCompile(`reprovision-requested +user:admin`).MatchString(out) {
		t.Errorf("web-1's timeline after the rollout's reprovision:\n%s", out)
	}
	if out := c.ok("events", "--entity", "rollout", "--limit", "3", "-o", "table"); !regexp.MustCompile(`rollout\.updated +reprovision-\S+ +system:provisioner +done +1 succeeded`).MatchString(out) {
		t.Errorf("events --entity rollout:\n%s", out)
	}
	c.fails("", []string{"no instance to roll reprovision out to: every running instance runs its template's version"},
		"rollouts", "start", "reprovision", "--template", "small")
	c.fails("", []string{"name instances, or give --template or --all (one of them)"}, "rollouts", "start", "reprovision", "web-1", "--all")
}
