package overview_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/services/gateway/overview"
)

// TestTheFleetIsReportedAsMetrics: the collector reports nothing before
// the overview is ready (nor without one), then every state's count (0
// included), the agents expected and connected, and the certificates
// ending soon, and the connected agents by version, as the overview has
// them at the scrape.
func TestTheFleetIsReportedAsMetrics(t *testing.T) {
	t.Parallel()
	js := eventsStream(t)
	o := overview.New(0)
	if n := testutil.CollectAndCount(overview.Collector(func() *overview.Overview { return nil })); n != 0 {
		t.Fatalf("without an overview: %d metrics", n)
	}
	c := overview.Collector(func() *overview.Overview { return o })
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Fatalf("before the overview is ready: %d metrics", n)
	}
	ending := &inventoryv1.Instance{Id: "a", Name: "alpha", State: string(vocab.StateRunning), VmId: "vm-a",
		Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected), Version: "0.1.1", NodeCertificateNotAfter: timestamppb.New(time.Now().Add(24 * time.Hour))}}
	publish(t, js, []bus.Message{
		event(t, vocab.VerbRunning, ending),
		event(t, vocab.VerbFailed, &inventoryv1.Instance{Id: "b", Name: "beta", State: string(vocab.StateFailed), VmId: "vm-b",
			Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentDisconnected)}}),
		instanceEvent(t, "c", vocab.VerbCreated, vocab.StateCreated),
	})
	keep(t, o, js, listing())
	<-o.Ready()
	want := `
# HELP flotilla_fleet_agent_versions Connected agents by the version they report (a version with none is left out): more than one, or one that is not the managers', means agents to upgrade.
# TYPE flotilla_fleet_agent_versions gauge
flotilla_fleet_agent_versions{version="0.1.1"} 1
# HELP flotilla_fleet_agents_connected Instances with a VM whose agent has a stream to an agent gateway.
# TYPE flotilla_fleet_agents_connected gauge
flotilla_fleet_agents_connected 1
# HELP flotilla_fleet_agents_expected Instances with a VM, whose agent should be connected.
# TYPE flotilla_fleet_agents_expected gauge
flotilla_fleet_agents_expected 2
# HELP flotilla_fleet_certificates_ending Instances with a VM whose node certificate ends within the overview's window (FLOTILLA_CERTIFICATE_WARNING, 14 days by default), or has ended.
# TYPE flotilla_fleet_certificates_ending gauge
flotilla_fleet_certificates_ending 1
# HELP flotilla_fleet_instances Instances by state, as the gateway's fleet overview counts them (every state, 0 included).
# TYPE flotilla_fleet_instances gauge
flotilla_fleet_instances{state="created"} 1
flotilla_fleet_instances{state="deleting"} 0
flotilla_fleet_instances{state="deprovisioned"} 0
flotilla_fleet_instances{state="deprovisioning"} 0
flotilla_fleet_instances{state="failed"} 1
flotilla_fleet_instances{state="provisioning"} 0
flotilla_fleet_instances{state="running"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
