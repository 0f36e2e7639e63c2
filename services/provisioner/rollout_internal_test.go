package provisioner

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestARolloutPassAsksOnlyTheInstancesItLookedUp: a pending instance
// found deleted is refused, and the pass goes no further than the group
// it looked up: the next pending one is left for the next pass, not taken
// for deleted because it was not read.
func TestARolloutPassAsksOnlyTheInstancesItLookedUp(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	inv := testkit.FakeInventory(t, bus.Conn(t, subjects.Inventory))
	const gone, next, last = "0192f0a0-0000-7000-8000-000000000001", "0192f0a0-0000-7000-8000-000000000002", "0192f0a0-0000-7000-8000-000000000003"
	inv.Remove(gone)
	for _, id := range []string{next, last} {
		inv.Set(&inventoryv1.Instance{Id: id, Name: id[len(id)-1:], State: "running", VmId: "vm-" + id})
	}
	recorded := recordRollouts(t, bus)

	s := &Service{log: slog.New(slog.DiscardHandler), d: Deps{Recheck: 30 * time.Second},
		bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
	d := newRolloutDriver(s, "r")
	r := &inventoryv1.Rollout{Id: "r", Action: string(vocab.RolloutRefreshConfiguration), Parallel: 1, TimeoutSeconds: 600, State: "running", Version: 1}
	for _, id := range []string{gone, next, last} {
		r.Instances = append(r.Instances, &inventoryv1.RolloutInstance{InstanceId: id, State: string(vocab.RolloutPending)})
	}
	newly, wait, err := d.step(t.Context(), r)
	must(t, err)
	if len(newly) != 0 || wait != 0 {
		t.Fatalf("the first pass asks %v and waits %v; want nothing asked, a record and another pass at once", newly, wait)
	}
	got := <-recorded
	if states := []string{got.GetInstances()[0].GetState(), got.GetInstances()[1].GetState(), got.GetInstances()[2].GetState()}; states[0] != "refused" ||
		states[1] != "pending" || states[2] != "pending" || got.GetInstances()[0].GetMessage() != "the instance was deleted" {
		t.Fatalf("recorded %v", got.GetInstances())
	}
	// The next pass (at the version recorded) asks the next one.
	got.Version = 2
	newly, _, err = d.step(t.Context(), got)
	must(t, err)
	if len(newly) != 1 || newly[0].GetInstanceId() != next {
		t.Fatalf("the second pass asks %v; want %s", newly, next)
	}
	if got = <-recorded; got.GetInstances()[1].GetState() != "asked" || got.GetInstances()[1].GetAskedAtVmId() != "vm-"+next {
		t.Fatalf("recorded %v", got.GetInstances())
	}
}

// recordRollouts answers rollout.record on bus with the rollout as
// recorded, and passes each on.
func recordRollouts(t *testing.T, bus *testkit.Bus) <-chan *inventoryv1.Rollout {
	recorded := make(chan *inventoryv1.Rollout, 1)
	nc := bus.Conn(t, subjects.Inventory)
	sub, err := nc.Subscribe(endpoints.RolloutRecord.Info().ServeSubject(), func(m *nats.Msg) {
		req := &inventoryv1.RecordRolloutRequest{}
		_ = proto.Unmarshal(m.Data, req)
		recorded <- req.GetRollout()
		data, _ := proto.Marshal(req.GetRollout())
		_ = m.Respond(data)
	})
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	must(t, nc.Flush())
	return recorded
}

// TestAnAgentReconnectingKeepsItsPlaceInTheRollout: an agent away when
// asked (no agent gateway has its stream, or the inventory shows it
// disconnected, as just after the managers' restart) stays asked, holding
// its group's place, and is asked again; the next instance waits. Once the
// retries' time is up, it is refused, saying why, and the next one is
// asked.
func TestAnAgentReconnectingKeepsItsPlaceInTheRollout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, status, refusal string }{
		{"without a stream", string(vocab.AgentConnected), "has no stream to an agent gateway"},
		{"shown disconnected", string(vocab.AgentDisconnected), `is not connected: it is upgraded while connected`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bus := testkit.SecureNATS(t)
			inv := testkit.FakeInventory(t, bus.Conn(t, subjects.Inventory))
			const first, second = "0192f0a0-0000-7000-8000-000000000011", "0192f0a0-0000-7000-8000-000000000012"
			for _, id := range []string{first, second} {
				inv.Set(&inventoryv1.Instance{Id: id, Name: id[len(id)-2:], State: "running", VmId: "vm-" + id,
					Agent: &inventoryv1.AgentStatus{Status: tc.status, Version: "0.1.0", VmId: "vm-" + id}})
			}
			recorded := recordRollouts(t, bus)
			s := &Service{log: slog.New(slog.DiscardHandler), d: Deps{Recheck: 30 * time.Second, Version: "0.2.0", AgentSHA256: strings.Repeat("0f", 32)},
				bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
			d := newRolloutDriver(s, "r")
			r := &inventoryv1.Rollout{Id: "r", Action: string(vocab.RolloutUpgradeAgent), AgentVersion: "0.2.0", Parallel: 1, TimeoutSeconds: 600,
				State: "running", Version: 1, Creator: "user:ops"}
			for _, id := range []string{first, second} {
				r.Instances = append(r.Instances, &inventoryv1.RolloutInstance{InstanceId: id, State: string(vocab.RolloutPending)})
			}
			ctx := t.Context()
			newly, _, err := d.step(ctx, r)
			must(t, err)
			r = <-recorded
			if len(newly) != 1 || newly[0].GetInstanceId() != first {
				t.Fatalf("asked %v; want %s", newly, first)
			}
			d.ask(ctx, r, newly)
			if _, ok := d.resendAt[first]; !ok {
				t.Fatalf("an agent away is not to be asked again")
			}
			newly, wait, err := d.step(ctx, r)
			must(t, err)
			if len(newly) != 0 || wait <= 0 || wait > rolloutRetryEvery {
				t.Fatalf("with the first reconnecting, the pass asks %v and waits %v; want nothing asked, a wait of at most %v", newly, wait, rolloutRetryEvery)
			}
			select {
			case got := <-recorded:
				t.Fatalf("recorded %v while the first reconnects", got.GetInstances())
			default:
			}
			// Its retries' time up, it is refused, and the second is asked.
			d.firstUnavailable[first] = time.Now().Add(-rolloutRetryFor)
			d.ask(ctx, r, r.GetInstances()[:1]) // as run does once it is due
			newly, _, err = d.step(ctx, r)
			must(t, err)
			got := <-recorded
			if len(newly) != 1 || newly[0].GetInstanceId() != second || got.GetInstances()[0].GetState() != "refused" ||
				!strings.Contains(got.GetInstances()[0].GetMessage(), tc.refusal) {
				t.Fatalf("after the retries: asked %v, recorded %v", newly, got.GetInstances())
			}
		})
	}
}

// TestAnInstanceTakenOverWhileItsAgentReconnectsStaysAsked: a provisioner
// that takes over a rollout asks again the instance another marked asked;
// its agent has no stream at the moment (the provisioner that died took
// its host's agent gateway with it). The command is recorded as not sent,
// but the instance stays asked, to be asked again, and does not fail the
// rollout.
func TestAnInstanceTakenOverWhileItsAgentReconnectsStaysAsked(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	inv := testkit.FakeInventory(t, bus.Conn(t, subjects.Inventory))
	const id = "0192f0a0-0000-7000-8000-000000000021"
	asked := timestamppb.New(time.Now().Add(-time.Minute))
	in := &inventoryv1.Instance{Id: id, Name: "21", State: "running", VmId: "vm-21", UpdateTime: asked,
		Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected), Version: "0.1.0", VmId: "vm-21"}}
	inv.Set(in)
	recorded := recordRollouts(t, bus)
	s := &Service{log: slog.New(slog.DiscardHandler), d: Deps{Recheck: 30 * time.Second, Version: "0.2.0", AgentSHA256: strings.Repeat("0f", 32)},
		bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
	d := newRolloutDriver(s, "r")
	r := &inventoryv1.Rollout{Id: "r", Action: string(vocab.RolloutUpgradeAgent), AgentVersion: "0.2.0", Parallel: 1, TimeoutSeconds: 600,
		State: "running", Version: 1, Creator: "user:ops", Instances: []*inventoryv1.RolloutInstance{{InstanceId: id, InstanceName: "21",
			State: string(vocab.RolloutAsked), AskTime: asked, AskedAtUpdateTime: asked, AskedAtVmId: "vm-21"}}}
	ctx := t.Context()
	d.adopt(ctx, r, r.GetInstances())
	// What the inventory now shows: the command recorded as not sent.
	records := inv.Records()
	if len(records) == 0 || records[len(records)-1].GetAgentProgress() != vocab.AgentProgress(vocab.StepUpgradingAgent, vocab.ProgressFailed) {
		t.Fatalf("records: %v", records)
	}
	in.AgentProgress, in.AgentProgressMessage = records[len(records)-1].GetAgentProgress(), records[len(records)-1].GetAgentProgressMessage()
	in.UpdateTime = timestamppb.Now()
	inv.Set(in)
	newly, wait, err := d.step(ctx, r)
	must(t, err)
	if len(newly) != 0 || wait <= 0 {
		t.Fatalf("the pass asks %v and waits %v", newly, wait)
	}
	select {
	case got := <-recorded:
		t.Fatalf("recorded %v while the adopted instance's agent reconnects", got.GetInstances())
	default:
	}
	if _, ok := d.resendAt[id]; !ok {
		t.Fatal("an adopted instance whose agent has no stream is not to be asked again")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
