package provisioner

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAnUpgradeIsSentOnlyToAConnectedAgentBehindTheManager: the
// provisioner's :upgrade-agent refuses, naming why, a manager with no
// agent binary, an instance without a running VM, and an agent not
// connected from its VM; it sends nothing to an agent at the manager's
// version; and an agent shown connected whose stream is gone (no agent
// gateway subscribed for it) is said to be reconnecting, to try again, its
// progress recorded as requested, then failed.
func TestAnUpgradeIsSentOnlyToAConnectedAgentBehindTheManager(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	inv := testkit.FakeInventory(t, bus.Conn(t, subjects.Inventory))
	full := Deps{Version: "0.2.0", AgentSHA256: strings.Repeat("0f", 32), AgentURL: "http://127.0.0.1:1/agent"}
	s := &Service{log: slog.New(slog.DiscardHandler), bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
	connected := func(version string) *inventoryv1.AgentStatus {
		return &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected), Version: version, VmId: "vm-1"}
	}
	for _, c := range []struct {
		name string
		in   *inventoryv1.Instance
		deps Deps
		kind apierr.Kind
		want string
	}{
		{"no agent binary", &inventoryv1.Instance{State: "running", VmId: "vm-1", Agent: connected("0.1.0")}, Deps{Version: "0.2.0"},
			apierr.KindInvalid, "no agent binary to upgrade agents to: put the release's flotilla-agent beside its executable"},
		{"provisioning", &inventoryv1.Instance{State: "provisioning", VmId: "vm-1", Agent: connected("0.1.0")}, full,
			apierr.KindConflict, `instance "web-1" is provisioning: an agent is upgraded on a VM that runs or has failed`},
		{"disconnected", &inventoryv1.Instance{State: "running", VmId: "vm-1",
			Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentDisconnected), Version: "0.1.0", VmId: "vm-1"}}, full,
			apierr.KindConflict, `the agent of instance "web-1" is not connected`},
		{"the old VM's agent", &inventoryv1.Instance{State: "failed", VmId: "vm-2", Agent: connected("0.1.0")}, full,
			apierr.KindConflict, `the agent of instance "web-1" is not connected`},
		{"reconnecting", &inventoryv1.Instance{State: "running", VmId: "vm-1", Agent: connected("0.1.0")}, full,
			apierr.KindUnavailable, `the agent of instance "web-1" has no stream to an agent gateway at the moment (it may be reconnecting)`},
		{"at the manager's version", &inventoryv1.Instance{State: "running", VmId: "vm-1", Agent: connected("0.2.0")}, full, "", ""},
	} {
		c.in.Id, c.in.Name = "0190c3e1-0000-7000-8000-000000000001", "web-1"
		inv.Set(c.in)
		s.d = c.deps
		got, err := s.upgradeAgent(t.Context(), vocab.User("ops"), &inventoryv1.InstanceActionRequest{Id: c.in.GetId()})
		switch {
		case c.want == "" && (err != nil || got.GetAgent().GetVersion() != "0.2.0"):
			t.Errorf("%s: %v %v, want the instance as it is", c.name, got, err)
		case c.want != "" && (!apierr.Is(err, c.kind) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %s %q", c.name, err, c.kind, c.want)
		}
	}
	// Only the agent that was to be sent the command had its progress
	// recorded: requested, then failed as it could not be sent.
	recs := inv.Records()
	if len(recs) != 2 || recs[0].GetAgentProgress() != "upgrading-agent/requested" || recs[1].GetAgentProgress() != "upgrading-agent/failed" ||
		!strings.Contains(recs[1].GetAgentProgressMessage(), `not sent: the agent of instance "web-1" has no stream`) {
		t.Errorf("the progress recorded: %v", recs)
	}
}

// TestAConfigurationRefreshIsSentOnlyToARunningInstancesConnectedAgent:
// :refresh-configuration refuses, naming why, an instance that is not
// running and one whose agent is not connected from its VM.
func TestAConfigurationRefreshIsSentOnlyToARunningInstancesConnectedAgent(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	inv := testkit.FakeInventory(t, bus.Conn(t, subjects.Inventory))
	s := &Service{log: slog.New(slog.DiscardHandler), bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
	connected := &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected), VmId: "vm-1"}
	for _, c := range []struct {
		name string
		in   *inventoryv1.Instance
		want string
	}{
		{"failed", &inventoryv1.Instance{State: "failed", VmId: "vm-1", Agent: connected},
			`instance "web-1" is failed: its configuration is refreshed while it is running`},
		{"disconnected", &inventoryv1.Instance{State: "running", VmId: "vm-1", Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentDisconnected), VmId: "vm-1"}},
			`the agent of instance "web-1" is not connected`},
		{"the old VM's agent", &inventoryv1.Instance{State: "running", VmId: "vm-2", Agent: connected},
			`the agent of instance "web-1" is not connected`},
	} {
		c.in.Id, c.in.Name = "0190c3e1-0000-7000-8000-000000000001", "web-1"
		inv.Set(c.in)
		_, err := s.refreshConfiguration(t.Context(), vocab.User("ops"), &inventoryv1.InstanceActionRequest{Id: c.in.GetId()})
		if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a conflict %q", c.name, err, c.want)
		}
	}
}
