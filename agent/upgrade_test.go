package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/agent"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// TestAnUpgradeThatDoesNotCheckOutLeavesTheAgentAsItWas: an upgrade whose
// download has another SHA-256 than the command's, or whose binary does
// not say the version asked for, fails with the reason in its progress;
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
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(other) }))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(other)
	for i, c := range []struct {
		sha256, want string
	}{
		{strings.Repeat("0f", 32), "has SHA-256 " + hex.EncodeToString(sum[:]) + ", not " + strings.Repeat("0f", 32) + ": not installed"},
		{hex.EncodeToString(sum[:]), "the binary from " + srv.URL + `/agent: --version says "flotilla-agent version 0.0.1-other", not version 0.2.0`},
	} {
		f.command(id, &agentv1.Command{Id: "upgrade-" + string(rune('a'+i)), Action: &agentv1.Command_UpgradeAgent{
			UpgradeAgent: &agentv1.UpgradeAgent{Version: "0.2.0", Url: srv.URL + "/agent", Sha256: c.sha256}}})
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
