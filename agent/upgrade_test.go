package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/agent"
	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAnUpgradeThatDoesNotCheckOutLeavesTheAgentAsItWas: an upgrade whose
// download has another SHA-256 than the command's, whose binary does not
// say the version asked for, or does not take the flags the agent runs
// with, fails with the reason in its progress;
// nothing is installed, and the agent goes on on its stream.
func TestAnUpgradeThatDoesNotCheckOutLeavesTheAgentAsItWas(t *testing.T) {
	t.Parallel()
	f := newFleet(t, time.Hour)
	const id = "inst-upgrade"
	cfg := f.startAgent(id, 200*time.Millisecond)
	f.observed.WaitFor(t, 15*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	other := []byte("#!/bin/sh\necho flotilla-agent version 0.0.1-other\n")
	// The version asked for, which no longer takes --vm-id: it would not
	// start with this agent's flags.
	noVMID := []byte("#!/bin/sh\ncase \"$*\" in *--vm-id=*) echo \"flotilla-agent: unknown flag: --vm-id\" >&2; exit 1;; esac\necho flotilla-agent version 0.2.0\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(map[string][]byte{"/agent": other, "/no-vm-id": noVMID}[r.URL.Path])
	}))
	t.Cleanup(srv.Close)
	sum, noVMIDSum := sha256.Sum256(other), sha256.Sum256(noVMID)
	for i, c := range []struct {
		path, sha256, want string
	}{
		{"/agent", strings.Repeat("0f", 32), "has SHA-256 " + hex.EncodeToString(sum[:]) + ", not " + strings.Repeat("0f", 32) + ": not installed"},
		{"/agent", hex.EncodeToString(sum[:]), "the binary from " + srv.URL + `/agent: --version says "flotilla-agent version 0.0.1-other", not version 0.2.0`},
		{"/no-vm-id", hex.EncodeToString(noVMIDSum[:]), "the binary from " + srv.URL + "/no-vm-id does not take the flags this agent runs with " +
			"(--ca-file --data-dir --gateway --state-dir --token-file --vm-id): exit status 1: flotilla-agent: unknown flag: --vm-id"},
	} {
		f.command(id, &agentv1.Command{Id: "upgrade-" + string(rune('a'+i)), Action: &agentv1.Command_UpgradeAgent{
			UpgradeAgent: &agentv1.UpgradeAgent{Version: "0.2.0", Url: srv.URL + c.path, Sha256: c.sha256}}})
		p := f.observed.WaitFor(t, 15*time.Second, "the upgrade's failure", func(ev *agentv1.AgentEvent) bool {
			p := ev.GetProgress()
			return p.GetStep() == string(vocab.StepUpgradingAgent) && p.GetStatus() == string(vocab.ProgressFailed) && strings.Contains(p.GetMessage(), c.want)
		}).GetProgress()
		if !strings.HasSuffix(p.GetMessage(), "; version "+agent.Version+" runs on") || p.GetCommandId() != cfg.VMID {
			t.Errorf("the failure's progress: %v", p)
		}
	}
	entries, err := os.ReadDir(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "flotilla-agent") {
			t.Errorf("a failed upgrade left %s in the state directory", e.Name())
		}
	}
	// Still the same stream: a heartbeat after the failures.
	n := f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetHeartbeat() != nil })
	f.observed.WaitFor(t, 10*time.Second, "a heartbeat", func(ev *agentv1.AgentEvent) bool {
		return ev.GetHeartbeat() != nil && f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetHeartbeat() != nil }) > n
	})
	if c := f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetDisconnected() != nil }); c != 0 {
		t.Errorf("the agent disconnected %d times", c)
	}
}

// TestAnUpgradedAgentThatCannotBeStartedLeavesTheAgentAsItWas: the new
// binary passed its checks, but its exec fails: the agent runs again as it
// was, in the same process, reports the upgrade's failure with the exec's
// error and reconnects at its version.
func TestAnUpgradedAgentThatCannotBeStartedLeavesTheAgentAsItWas(t *testing.T) {
	t.Parallel()
	f := newFleet(t, time.Hour)
	const id = "inst-exec-fails"
	next := []byte("#!/bin/sh\necho flotilla-agent version 0.2.0\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(next) }))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(next)
	var execs atomic.Int32
	cfg := runAgentWith(t, f.provisioner, f.ca, f.addr, id, 200*time.Millisecond, func(ctx context.Context, cfg agent.Config) error {
		return agent.RunUpgrading(ctx, cfg, func(up *agent.Upgraded) error {
			execs.Add(1)
			return fmt.Errorf("exec %s: %w", up.Binary, syscall.ENOEXEC)
		})
	})
	connected := func(ev *agentv1.AgentEvent) bool { return ev.GetInstanceId() == id && ev.GetConnected() != nil }
	f.observed.WaitFor(t, 15*time.Second, "connected", connected)

	f.command(id, &agentv1.Command{Id: "upgrade-1", Action: &agentv1.Command_UpgradeAgent{
		UpgradeAgent: &agentv1.UpgradeAgent{Version: "0.2.0", Url: srv.URL + "/agent", Sha256: hex.EncodeToString(sum[:])}}})
	p := f.observed.WaitFor(t, 20*time.Second, "the upgrade's failure", func(ev *agentv1.AgentEvent) bool {
		p := ev.GetProgress()
		return p.GetStep() == string(vocab.StepUpgradingAgent) && p.GetStatus() == string(vocab.ProgressFailed)
	}).GetProgress()
	want := "version 0.2.0 could not be started: exec "
	if !strings.HasPrefix(p.GetMessage(), want) || !strings.Contains(p.GetMessage(), syscall.ENOEXEC.Error()) ||
		!strings.HasSuffix(p.GetMessage(), "; version "+agent.Version+" runs on") || p.GetCommandId() != cfg.VMID {
		t.Errorf("the failure's progress: %v; want %q…, the exec's error, and the version running on", p, want)
	}
	if n := execs.Load(); n != 1 {
		t.Errorf("%d execs, want 1", n)
	}
	// Back on a new stream, at its own version.
	again := f.observed.WaitFor(t, 15*time.Second, "connected again", func(ev *agentv1.AgentEvent) bool {
		return connected(ev) && f.observed.Count(connected) >= 2
	})
	if v := again.GetConnected().GetAgentVersion(); v != agent.Version {
		t.Errorf("reconnected at %q, want %s", v, agent.Version)
	}
}

// TestTheUpgradedAgentGetsTheFlagsItWasGiven: the new binary is started
// with the flags the agent was given, repeated ones each time, and no
// other.
func TestTheUpgradedAgentGetsTheFlagsItWasGiven(t *testing.T) {
	t.Parallel()
	cmd := agent.NewCommand()
	if err := cmd.ParseFlags([]string{"--gateway", "gw:7443", "--data-device", "/dev/xvdf", "--data-device=/dev/nvme1n1",
		"--state-dir=/var/lib/flotilla/agent", "--heartbeat-interval", "2s"}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(agent.FlagArgs(cmd.Flags()), " ")
	want := "--data-device=/dev/xvdf --data-device=/dev/nvme1n1 --gateway=gw:7443 --heartbeat-interval=2s --state-dir=/var/lib/flotilla/agent"
	if got != want {
		t.Errorf("the flags again: %s\nwant %s", got, want)
	}
}

// TestAnAgentInstalledAsFlotillaAgentUpgradesInPlace is a cloud VM's
// upgrade: a flotilla-agent binary (0.0.9-old) in a directory the agent
// may write downloads the new one (0.2.0) from the URL it is given, checks
// it, installs it over its own executable (the one the VM's unit starts at
// boot) and runs it in the same process, which connects at 0.2.0; nothing
// of the download is left beside it.
func TestAnAgentInstalledAsFlotillaAgentUpgradesInPlace(t *testing.T) {
	t.Parallel()
	build := func(version string) string {
		t.Helper()
		dir := t.TempDir()
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", dir+"/", "flotilla.dev/flotilla/cmd/flotilla-agent")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build the agent %s: %v\n%s", version, err, out)
		}
		return filepath.Join(dir, "flotilla-agent")
	}
	installed, next := build("0.0.9-old"), build("0.2.0")
	content, err := os.ReadFile(next)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(content) }))
	t.Cleanup(srv.Close)

	f := newFleet(t, time.Hour)
	const id = "inst-in-place"
	tok, err := rpc.Call(t.Context(), f.provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(caFile, f.ca.GatewayAuthority().CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(tok.GetToken()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(installed, "--gateway", f.addr, "--ca-file", caFile, "--token-file", tokenFile, "--vm-id", tok.GetVmId(),
		"--state-dir", filepath.Join(dir, "state"), "--data-dir", filepath.Join(dir, "data"), "--data-disk-gb", "1",
		"--heartbeat-interval", "200ms", "--package-installer", "none")
	out := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
		if t.Failed() {
			t.Logf("the agent's output:\n%s", out)
		}
	})
	f.observed.WaitFor(t, 20*time.Second, "connected at 0.0.9-old", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected().GetAgentVersion() == "0.0.9-old"
	})
	f.command(id, &agentv1.Command{Id: "upgrade-1", Action: &agentv1.Command_UpgradeAgent{UpgradeAgent: &agentv1.UpgradeAgent{
		Version: "0.2.0", Url: srv.URL + "/downloads/flotilla-agent", Sha256: hex.EncodeToString(sum[:])}}})
	f.observed.WaitFor(t, 30*time.Second, "connected at 0.2.0", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected().GetAgentVersion() == "0.2.0"
	})
	if got, err := filecopy.SHA256(installed); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Errorf("the executable after the upgrade has SHA-256 %s (%v), want the new binary's", got, err)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); err != nil || exe != installed {
		t.Errorf("the agent's process runs %q (%v), want %s", exe, err, installed)
	}
	entries, err := os.ReadDir(filepath.Dir(installed))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("beside the executable after the upgrade: %v", entries)
	}
	select {
	case err := <-waited:
		t.Fatalf("the agent exited: %v", err)
	default:
	}
}
