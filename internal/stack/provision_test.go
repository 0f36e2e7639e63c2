package stack_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// agentBinary builds flotilla-agent once.
var agentBinary = testkit.BuiltBinary("flotilla-agent", false)

// localRoot is a directory for the local provider's disks and VMs.
func localRoot(t *testing.T) string {
	root := testkit.LocalRoot(t)
	t.Cleanup(func() { local.KillAll(root) })
	return root
}

// TestProvisioningFollowsEventsAlone provisions local instances with a
// provisioner that never looks on its own (its safety-net recheck is an
// hour) and agents whose heartbeats come an hour apart: instances still
// reach running, so the provisioner is woken by the instances' events and
// running follows the agent's done report, which carries the node URL.
// With one worker and a setup action that takes a second, every VM is
// launched before the first instance runs: a wait gives its worker back.
func TestProvisioningFollowsEventsAlone(t *testing.T) {
	t.Parallel()
	agent, err := agentBinary()
	must(t, err)
	bus := testkit.SecureNATS(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{
		LocalRoot:          localRoot(t),
		AgentCommand:       []string{agent, "--heartbeat-interval", "1h"},
		ProvisionerWorkers: 1,
		ProvisionerRecheck: time.Hour,
	}, bus))
	ctx := t.Context()
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "none"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "slow-setup", Provider: "local", DataDiskGb: 1,
		SetupActions: []*inventoryv1.SetupAction{{Type: "script", Script: "sleep 1"}}}}, admin)
	must(t, err)
	var ids []string
	for _, name := range []string{"a", "b", "c"} {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
			Name: name, Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
		must(t, err)
		ids = append(ids, in.GetId())
	}
	for _, id := range ids {
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(vocab.ActionProvision)}, admin)
		must(t, err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, id := range ids {
		for {
			in, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
			must(t, err)
			if vocab.State(in.GetState()) == vocab.StateRunning {
				if in.GetAddresses().GetUrl() == "" {
					t.Fatalf("instance %s is running without a node URL: %v", in.GetName(), in)
				}
				break
			}
			if vocab.State(in.GetState()) == vocab.StateFailed || time.Now().After(deadline) {
				t.Fatalf("instance %s did not reach running: %s %s", in.GetName(), in.GetState(), in.GetStateDetail())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// The order of the instances' events.
	js, err := jetstream.New(bus.Conn(t, busauth.Observer))
	must(t, err)
	cons, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, "*")}})
	must(t, err)
	var launched, firstRunning int
	for i := 1; ; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			break
		}
		_, _, verb, _ := subjects.ParseEvent(m.Subject())
		switch vocab.Verb(verb) {
		case vocab.VerbVMLaunched:
			launched = i
		case vocab.VerbRunning:
			if firstRunning == 0 {
				firstRunning = i
			}
		}
	}
	if launched == 0 || firstRunning == 0 || launched > firstRunning {
		t.Fatalf("the last VM was launched at event %d, the first instance ran at event %d: waits held the only worker", launched, firstRunning)
	}
}
