package agentgw_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// storeLogs stores lines from..to of instance id as the agent gateway does.
func (e *env) storeLogs(id string, from, to int) {
	e.t.Helper()
	testkit.StoreAgentLogs(e.t, e.bus.Conn(e.t, subjects.AgentGW), id, from, to)
}

// seqs returns the seq of every line stored for id.
func (e *env) seqs(id string) []uint64 {
	e.t.Helper()
	var out []uint64
	for _, m := range readLogsNow(e.t, e, id) {
		l := &agentv1.LogLine{}
		if err := proto.Unmarshal(m.Data(), l); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, l.GetSeq())
	}
	return out
}

func TestEachInstancesLogRetentionIsEnforced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{services: true, retentionInterval: 100 * time.Millisecond})
	short := e.instance("short")
	young := e.instance("young")
	plain := e.instance("plain")
	for id, r := range map[string]*inventoryv1.LogRetention{
		short: {MaxLines: 100},
		young: {MaxAge: durationpb.New(time.Hour)},
	} {
		in := request(e, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id})
		in.LogRetention = r
		request(e, endpoints.InstanceUpdate, &inventoryv1.UpdateInstanceRequest{Instance: in})
	}
	e.storeLogs(short, 1, 250)
	e.storeLogs(young, 1, 40)
	e.storeLogs(plain, 1, 10)
	time.Sleep(50 * time.Millisecond)
	mid := time.Now()
	time.Sleep(50 * time.Millisecond)
	e.storeLogs(young, 41, 60)

	// By lines: the gateway's own loop keeps the newest 100.
	deadline := time.Now().Add(10 * time.Second)
	for got := e.seqs(short); len(got) != 100 || got[0] != 151 || got[99] != 250; got = e.seqs(short) {
		if time.Now().After(deadline) {
			t.Fatalf("the instance keeping 100 lines holds %d (%v…)", len(got), got[:min(3, len(got))])
		}
		time.Sleep(50 * time.Millisecond)
	}
	// By age: an hour after the middle, only what was stored after it is
	// young enough.
	if err := e.gw.EnforceRetentionAt(t.Context(), mid.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := e.seqs(young); len(got) != 20 || got[0] != 41 {
		t.Fatalf("the instance keeping an hour holds %v after an hour", got)
	}
	// Two hours later nothing is young enough.
	if err := e.gw.EnforceRetentionAt(t.Context(), mid.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := e.seqs(young); len(got) != 0 {
		t.Fatalf("the instance keeping an hour holds %v after two hours", got)
	}
	// The defaults (100 000 lines, 7 days) leave the other alone.
	if got := e.seqs(plain); len(got) != 10 {
		t.Fatalf("an instance with the default retention holds %d of its 10 lines", len(got))
	}
	in := request(e, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: plain})
	if r := in.GetLogRetention(); r.GetMaxLines() != bus.AgentLogDefaultLines || r.GetMaxAge().AsDuration() != bus.AgentLogDefaultAge {
		t.Fatalf("an instance created without logRetention shows %v, want the defaults", r)
	}
}
