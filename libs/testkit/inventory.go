package testkit

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// Inventory plays the inventory's part for tests of the agent gateway and
// the agent, which need no database: it answers instance.get and
// instance.get-many with an instance being provisioned on VM FakeVM(id)
// (any id exists) unless the test Set or Removed it, and lifecycle.observe
// and lifecycle.observe-many taking every event, recording every agent
// event it is sent.
type Inventory struct {
	mu        sync.Mutex
	events    []*agentv1.AgentEvent
	batches   [][]*agentv1.AgentEvent          // each observe-many request's
	instances map[string]*inventoryv1.Instance // nil: removed
	records   []*inventoryv1.RecordStateRequest
}

// FakeVM is the VM a fake inventory's instances run on unless Set says
// otherwise.
func FakeVM(instanceID string) string { return "vm-of-" + instanceID }

// Set makes instance.get answer in for its id.
func (inv *Inventory) Set(in *inventoryv1.Instance) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.instances[in.GetId()] = proto.Clone(in).(*inventoryv1.Instance)
}

// Remove makes instance.get answer that id does not exist.
func (inv *Inventory) Remove(id string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.instances[id] = nil
}

func (inv *Inventory) instance(id string) (*inventoryv1.Instance, bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	in, set := inv.instances[id]
	if !set {
		return &inventoryv1.Instance{Id: id, Name: id, State: string(vocab.StateProvisioning), VmId: FakeVM(id)}, true
	}
	return in, in != nil
}

// FakeInventory serves the inventory's part on nc (connected with the
// inventory's identity on a secure bus) until tb ends.
func FakeInventory(tb testing.TB, nc *nats.Conn) *Inventory {
	tb.Helper()
	inv := &Inventory{instances: map[string]*inventoryv1.Instance{}}
	reply := func(m *nats.Msg, resp proto.Message) {
		data, _ := proto.Marshal(resp)
		_ = m.Respond(data)
	}
	subs := map[string]nats.MsgHandler{
		endpoints.LifecycleObserve.Info().ServeSubject(): func(m *nats.Msg) {
			ev := &agentv1.AgentEvent{}
			if err := proto.Unmarshal(m.Data, ev); err != nil {
				tb.Errorf("testkit: lifecycle.observe got a malformed AgentEvent: %v", err)
				return
			}
			inv.mu.Lock()
			inv.events = append(inv.events, ev)
			inv.mu.Unlock()
			_ = m.Respond(nil)
		},
		endpoints.LifecycleObserveMany.Info().ServeSubject(): func(m *nats.Msg) {
			req := &agentv1.AgentEvents{}
			if err := proto.Unmarshal(m.Data, req); err != nil {
				tb.Errorf("testkit: lifecycle.observe-many got malformed AgentEvents: %v", err)
				return
			}
			inv.mu.Lock()
			inv.events = append(inv.events, req.GetEvents()...)
			inv.batches = append(inv.batches, req.GetEvents())
			inv.mu.Unlock()
			resp := &agentv1.AgentEventResults{Results: make([]*agentv1.AgentEventResult, len(req.GetEvents()))}
			for i := range resp.Results {
				resp.Results[i] = &agentv1.AgentEventResult{}
			}
			reply(m, resp)
		},
		endpoints.InstanceGet.Info().ServeSubject(): func(m *nats.Msg) {
			req := &inventoryv1.GetInstanceRequest{}
			_ = proto.Unmarshal(m.Data, req)
			in, ok := inv.instance(req.GetId())
			if !ok {
				e := apierr.NotFound("instance", req.GetId())
				resp := &nats.Msg{Header: nats.Header{micro.ErrorCodeHeader: {string(e.Kind)}, micro.ErrorHeader: {e.Message}}}
				for k, v := range e.BusHeaders() {
					resp.Header[k] = v
				}
				_ = m.RespondMsg(resp)
				return
			}
			reply(m, in)
		},
		endpoints.LifecycleRecord.Info().ServeSubject(): func(m *nats.Msg) {
			req := &inventoryv1.RecordStateRequest{}
			_ = proto.Unmarshal(m.Data, req)
			inv.mu.Lock()
			inv.records = append(inv.records, req)
			inv.mu.Unlock()
			in, _ := inv.instance(req.GetId())
			reply(m, in)
		},
		endpoints.InstanceGetMany.Info().ServeSubject(): func(m *nats.Msg) {
			req := &inventoryv1.GetInstancesRequest{}
			_ = proto.Unmarshal(m.Data, req)
			resp := &inventoryv1.GetInstancesResponse{}
			for _, id := range req.GetIds() {
				if in, ok := inv.instance(id); ok {
					resp.Instances = append(resp.Instances, in)
				}
			}
			reply(m, resp)
		},
	}
	for subject, h := range subs {
		sub, err := nc.Subscribe(subject, h)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	return inv
}

// Records returns the lifecycle.record requests made so far.
func (inv *Inventory) Records() []*inventoryv1.RecordStateRequest {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return append([]*inventoryv1.RecordStateRequest(nil), inv.records...)
}

// Events returns the agent events recorded so far.
func (inv *Inventory) Events() []*agentv1.AgentEvent {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return append([]*agentv1.AgentEvent(nil), inv.events...)
}

// Batches returns the events of each lifecycle.observe-many request so
// far, request by request.
func (inv *Inventory) Batches() [][]*agentv1.AgentEvent {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return append([][]*agentv1.AgentEvent(nil), inv.batches...)
}

// Count returns how many recorded events satisfy ok.
func (inv *Inventory) Count(ok func(*agentv1.AgentEvent) bool) int {
	n := 0
	for _, ev := range inv.Events() {
		if ok(ev) {
			n++
		}
	}
	return n
}

// WaitFor waits up to d until an event satisfies ok and returns the latest
// such event; it fails the test naming what it waited for.
func (inv *Inventory) WaitFor(tb testing.TB, d time.Duration, what string, ok func(*agentv1.AgentEvent) bool) *agentv1.AgentEvent {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		evs := inv.Events()
		for i := len(evs) - 1; i >= 0; i-- {
			if ok(evs[i]) {
				return evs[i]
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no %s event in %s; observed %d events, last %v", what, d, len(evs), evs[max(0, len(evs)-3):])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
