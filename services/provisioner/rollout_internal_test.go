package provisioner

import (
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

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

	s := &Service{log: slog.New(slog.DiscardHandler), d: Deps{Recheck: 30 * time.Second},
		bus: rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 5*time.Second)}
	d := &rolloutDriver{s: s, id: "r", answers: map[string]rolloutAnswer{}, firstUnavailable: map[string]time.Time{},
		notBefore: map[string]time.Time{}, mine: map[string]bool{}}
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

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
