package app_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory/adapters"
	"flotilla.dev/flotilla/services/inventory/app"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// newPool is a migrated database of the test's own.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := adapters.Migrate(t.Context(), pool, nil); err != nil {
		t.Fatal(err)
	}
	return pool
}

func newApp(t *testing.T, opts ...app.Option) (*app.App, *inventoryv1.Instance) {
	t.Helper()
	return newAppOn(t, newPool(t), opts...)
}

// newAppOn is an App on pool with a network, a template and an instance.
func newAppOn(t *testing.T, pool *pgxpool.Pool, opts ...app.Option) (*app.App, *inventoryv1.Instance) {
	t.Helper()
	ctx := context.Background()
	a := app.New(pool, slog.New(slog.DiscardHandler), opts...)
	n, err := a.CreateNetwork(ctx, "test", &inventoryv1.Network{Name: "n", Provider: "local", HttpsStrategy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := a.CreateTemplate(ctx, "test", &inventoryv1.Template{Name: "t", Provider: "local", DataDiskGb: 1})
	if err != nil {
		t.Fatal(err)
	}
	in, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: "i", Kind: "design", TemplateId: tp.GetId(), NetworkId: n.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	return a, in
}

// testClock is a clock that starts now and moves only when advanced.
type testClock struct{ micros atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.micros.Store(time.Now().UTC().Truncate(time.Microsecond).UnixMicro())
	return c
}

func (c *testClock) now() time.Time          { return time.UnixMicro(c.micros.Load()).UTC() }
func (c *testClock) advance(d time.Duration) { c.micros.Add(d.Microseconds()) }

func TestAgentsWithoutHeartbeatsAreShownDisconnected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := newTestClock()
	now := clock.now
	pool := newPool(t)
	a, in := newAppOn(t, pool, app.WithClock(now))
	beat := func() {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.New(now()),
			Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	status := func() string {
		got, err := a.GetInstance(ctx, in.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return got.GetAgent().GetStatus()
	}
	beat()
	clock.advance(20 * time.Second)
	beat() // held in memory, not on the row: it still counts
	clock.advance(20 * time.Second)
	if n, err := a.MarkStaleAgents(ctx, 30*time.Second); err != nil || n != 0 || status() != "connected" {
		t.Fatalf("an agent whose last heartbeat is 20 s old was marked stale: %d %v %s", n, err, status())
	}
	clock.advance(time.Minute)
	if n, err := a.MarkStaleAgents(ctx, 30*time.Second); err != nil || n != 1 || status() != "disconnected" {
		t.Fatalf("a stale agent: %d %v %s", n, err, status())
	}
	// The next heartbeat brings it back, with an agent-connected event as
	// the sweep's agent-disconnected had one: the overview follows events.
	connectedEvents := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox_messages WHERE metadata->>'Flotilla-Subject' LIKE '%.agent-connected'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := connectedEvents()
	beat()
	if status() != "connected" {
		t.Fatalf("after a new heartbeat: %s", status())
	}
	if n := connectedEvents() - before; n != 1 {
		t.Fatalf("agent-connected events of the heartbeat that brought it back: %d; want 1", n)
	}
	beat()
	if n := connectedEvents() - before; n != 1 {
		t.Fatalf("agent-connected events after one more heartbeat: %d; want still 1", n)
	}
	// Observed state never takes a new version: an operator's update at the
	// version they read still works after heartbeats.
	if _, err := a.UpdateInstance(ctx, "test", &inventoryv1.Instance{Id: in.GetId(), Version: in.GetVersion(), Name: "renamed"}, []string{"name"}); err != nil {
		t.Fatalf("update after heartbeats: %v", err)
	}
}

// TestAStaleSweepMarksEachAgentOnce: a gateway that died leaves hundreds
// of agents without heartbeats; two inventory replicas sweeping at once
// mark each disconnected exactly once (more agents than one batch), and a
// disconnect reported for an agent shown disconnected already records
// nothing new.
func TestAStaleSweepMarksEachAgentOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := newTestClock()
	now := clock.now
	pool := newPool(t)
	a, first := newAppOn(t, pool, app.WithClock(now))
	other := app.New(pool, slog.New(slog.DiscardHandler), app.WithClock(now))
	const agents = 300 // more than one of the sweep's transactions
	ids := []string{first.GetId()}
	for i := 1; i < agents; i++ {
		in, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: fmt.Sprintf("i%d", i), Kind: "design",
			TemplateId: first.GetTemplateId(), NetworkId: first.GetNetworkId()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.GetId())
	}
	for _, id := range ids {
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: id, Time: timestamppb.New(now()),
			Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(time.Minute)
	marked := make(chan int, 2)
	for _, sweeper := range []*app.App{a, other} {
		go func() {
			n, err := sweeper.MarkStaleAgents(ctx, 30*time.Second)
			if err != nil {
				t.Errorf("sweep: %v", err)
			}
			marked <- n
		}()
	}
	if n := <-marked + <-marked; n != agents {
		t.Errorf("the two sweeps marked %d agents, want %d", n, agents)
	}
	// The gateway's own report of a stream's end comes after the sweep.
	if err := other.Observe(ctx, &agentv1.AgentEvent{InstanceId: first.GetId(), Time: timestamppb.New(now()),
		Body: &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: "stream ended"}}}); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	rows, err := pool.Query(ctx, `SELECT metadata->>'Flotilla-Subject' FROM outbox_messages
		WHERE metadata->>'Flotilla-Subject' LIKE '%.agent-disconnected'`)
	if err != nil {
		t.Fatal(err)
	}
	subjects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subjects {
		counts[s]++
	}
	for _, id := range ids {
		got, err := a.GetInstance(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.GetAgent().GetStatus() != "disconnected" {
			t.Errorf("instance %s: agent %s after the sweep", id, got.GetAgent().GetStatus())
		}
	}
	if len(counts) != agents {
		t.Errorf("disconnected events for %d instances, want %d", len(counts), agents)
	}
	for s, n := range counts {
		if n != 1 {
			t.Errorf("%s: %d events, want 1", s, n)
		}
	}
}

// TestHeartbeatsLeaveTheInstanceRowAlone: once an agent is shown connected,
// heartbeats that change nothing an operator sees do not rewrite the
// instance row (its update time stays), yet reads show the latest one —
// from memory at once, from the liveness table after a flush (to another
// inventory process too); a new agent version or disk usage beyond the step
// is written to the row.
func TestHeartbeatsLeaveTheInstanceRowAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t)
	a, in := newAppOn(t, pool)
	other := app.New(pool, slog.New(slog.DiscardHandler))
	const gib = 1 << 30
	beat := func(at time.Time, used int64, version string) {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.New(at),
			Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: used, DiskTotalBytes: 10 * gib, AgentVersion: version}}}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(a *app.App) *inventoryv1.Instance {
		t.Helper()
		got, err := a.GetInstance(ctx, in.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	beat(t0, gib, "1.0.0")
	written := get(a).GetUpdateTime().AsTime()
	for i := 1; i <= 5; i++ {
		beat(t0.Add(time.Duration(i)*time.Second), gib+int64(i)<<20, "1.0.0")
	}
	got := get(a)
	if !got.GetUpdateTime().AsTime().Equal(written) {
		t.Fatalf("heartbeats that changed nothing shown rewrote the row (update time %v, was %v)", got.GetUpdateTime().AsTime(), written)
	}
	if hb := got.GetAgent().GetLastHeartbeat().AsTime(); !hb.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("last heartbeat shown = %v, want the latest, %v", hb, t0.Add(5*time.Second))
	}
	if got.GetDataDisk().GetUsedBytes() != gib+5<<20 {
		t.Fatalf("disk used shown = %d, want the latest", got.GetDataDisk().GetUsedBytes())
	}
	if hb := get(other).GetAgent().GetLastHeartbeat().AsTime(); !hb.Equal(t0) {
		t.Fatalf("before a flush another process sees %v, want the row's %v", hb, t0)
	}
	if err := a.FlushHeartbeats(ctx); err != nil {
		t.Fatal(err)
	}
	if hb := get(other).GetAgent().GetLastHeartbeat().AsTime(); !hb.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("after a flush another process sees %v, want %v", hb, t0.Add(5*time.Second))
	}

	beat(t0.Add(6*time.Second), 3*gib, "1.0.0") // 2 GiB more: beyond the step
	if got := get(other); got.GetUpdateTime().AsTime().Equal(written) || got.GetDataDisk().GetUsedBytes() != 3*gib {
		t.Fatalf("disk usage beyond the step was not written to the row: %v", got.GetDataDisk())
	}
	beat(t0.Add(7*time.Second), 3*gib, "1.1.0")
	if got := get(other); got.GetAgent().GetVersion() != "1.1.0" {
		t.Fatalf("a new agent version was not written to the row: %v", got.GetAgent())
	}

	// The node certificate's end is written when it changes (a renewal),
	// and only then.
	certBeat := func(at, ends time.Time) {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.New(at),
			Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 3 * gib, DiskTotalBytes: 10 * gib, AgentVersion: "1.1.0",
				NodeCertificateNotAfter: timestamppb.New(ends)}}}); err != nil {
			t.Fatal(err)
		}
	}
	ends := t0.Add(90 * 24 * time.Hour).Truncate(time.Second)
	certBeat(t0.Add(8*time.Second), ends)
	got = get(other)
	if !got.GetAgent().GetNodeCertificateNotAfter().AsTime().Equal(ends) {
		t.Fatalf("the node certificate's end was not written to the row: %v", got.GetAgent())
	}
	certBeat(t0.Add(9*time.Second), ends)
	if again := get(other); !again.GetUpdateTime().AsTime().Equal(got.GetUpdateTime().AsTime()) {
		t.Fatal("the same certificate end again rewrote the row")
	}
	certBeat(t0.Add(10*time.Second), ends.Add(60*24*time.Hour))
	if renewed := get(other); !renewed.GetAgent().GetNodeCertificateNotAfter().AsTime().Equal(ends.Add(60 * 24 * time.Hour)) {
		t.Fatalf("a renewed certificate's end was not written to the row: %v", renewed.GetAgent())
	}
}

// observeAt has a record ev, an event of in's agent at at, and returns in
// as read then.
func observeAt(t *testing.T, a *app.App, in *inventoryv1.Instance, at time.Time, ev *agentv1.AgentEvent) *inventoryv1.Instance {
	t.Helper()
	ev.InstanceId, ev.Time = in.GetId(), timestamppb.New(at)
	if err := a.Observe(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	got, err := a.GetInstance(t.Context(), in.GetId())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestAReconnectOfAConnectedAgentLeavesTheRowAlone: when an agent's
// gateway restarts and the agent connects again before anyone saw it gone,
// its new stream is a heartbeat, not a row write (nor a timeline event);
// a reconnect after a disconnect, with a new version, or from another VM
// (a re-provisioned instance's new one) is written, and the row names the
// VM whose agent connected.
func TestAReconnectOfAConnectedAgentLeavesTheRowAlone(t *testing.T) {
	t.Parallel()
	a, in := newApp(t)
	const gib = 1 << 30
	observe := func(at time.Time, ev *agentv1.AgentEvent) *inventoryv1.Instance {
		t.Helper()
		return observeAt(t, a, in, at, ev)
	}
	connectedFrom := func(vm, version string) *agentv1.AgentEvent {
		return &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Connected{Connected: &agentv1.Hello{AgentVersion: version, VmId: vm}}}
	}
	connected := func(version string) *agentv1.AgentEvent { return connectedFrom("vm-1", version) }
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	observe(t0, connected("1.0.0"))
	got := observe(t0.Add(time.Second), &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: gib, DiskTotalBytes: 10 * gib}}})
	written := got.GetUpdateTime().AsTime()

	got = observe(t0.Add(3*time.Second), connected("1.0.0"))
	if !got.GetUpdateTime().AsTime().Equal(written) {
		t.Fatalf("a reconnect of a connected agent rewrote the row (update time %v, was %v)", got.GetUpdateTime().AsTime(), written)
	}
	if hb := got.GetAgent().GetLastHeartbeat().AsTime(); !hb.Equal(t0.Add(3*time.Second)) || got.GetDataDisk().GetUsedBytes() != gib {
		t.Fatalf("after the reconnect: last heartbeat %v (want %v), disk %v", hb, t0.Add(3*time.Second), got.GetDataDisk())
	}

	observe(t0.Add(4*time.Second), &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: "gone"}}})
	got = observe(t0.Add(5*time.Second), connected("1.0.0"))
	if got.GetAgent().GetStatus() != "connected" || got.GetUpdateTime().AsTime().Equal(written) {
		t.Fatalf("a reconnect after a disconnect was not written: %v", got.GetAgent())
	}
	if got = observe(t0.Add(6*time.Second), connected("1.1.0")); got.GetAgent().GetVersion() != "1.1.0" {
		t.Fatalf("a reconnect with a new version was not written: %v", got.GetAgent())
	}
	if got.GetAgent().GetVmId() != "vm-1" {
		t.Fatalf("the row names the agent's VM %q, want vm-1", got.GetAgent().GetVmId())
	}
	if got = observe(t0.Add(7*time.Second), connectedFrom("vm-2", "1.1.0")); got.GetAgent().GetVmId() != "vm-2" {
		t.Fatalf("a connect from another VM was not written: %v", got.GetAgent())
	}
}

// TestALateDisconnectOfAReplacedStreamIsIgnored: an agent's stream ends
// and its next one connects at once (an upgrade, a refresh), or the agent
// moves to another agent gateway, which takes it before the first notices
// it gone; the first stream's disconnect, sent on its own, reaches the
// inventory after the second's connect. The agent stays connected, whether
// the new stream was written to the row (a new version) or held as a beat
// (the same one), and whichever inventory process hears it; the instance
// shows when its newest stream began.
func TestALateDisconnectOfAReplacedStreamIsIgnored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t)
	a, in := newAppOn(t, pool)
	observeBy := func(a *app.App, at time.Time, ev *agentv1.AgentEvent) *inventoryv1.Instance {
		t.Helper()
		return observeAt(t, a, in, at, ev)
	}
	observe := func(at time.Time, ev *agentv1.AgentEvent) *inventoryv1.Instance {
		t.Helper()
		return observeAt(t, a, in, at, ev)
	}
	connected := func(version string) *agentv1.AgentEvent {
		return &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Connected{Connected: &agentv1.Hello{AgentVersion: version, VmId: "vm-1"}}}
	}
	// The disconnect of the stream that began at start (zero: one that
	// names none, as the inventory's own for missed heartbeats).
	disconnected := func(start time.Time) *agentv1.AgentEvent {
		d := &agentv1.Disconnected{Reason: "the agent closed the stream"}
		if !start.IsZero() {
			d.StreamStart = timestamppb.New(start)
		}
		return &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Disconnected{Disconnected: d}}
	}
	status := func(got *inventoryv1.Instance, want string, since time.Time) {
		t.Helper()
		if got.GetAgent().GetStatus() != want || !got.GetAgent().GetConnectTime().AsTime().Equal(since) {
			t.Fatalf("agent %v; want %s, connected since %v", got.GetAgent(), want, since)
		}
	}
	s := func(n int) time.Time {
		return time.Now().UTC().Truncate(time.Second).Add(time.Duration(n) * time.Second)
	}
	status(observe(s(0), connected("1.0.0")), "connected", s(0))
	// Upgraded: 1.1.0 connects (written) before 1.0.0's stream's end is in.
	status(observe(s(2), connected("1.1.0")), "connected", s(2))
	status(observe(s(1), disconnected(s(0))), "connected", s(2))
	// Moved to another agent gateway at the same version (held as a beat,
	// the row untouched), the first noticing the old stream gone only
	// after the move, and after the new stream's first heartbeats.
	status(observe(s(4), connected("1.1.0")), "connected", s(4))
	status(observe(s(9), disconnected(s(2))), "connected", s(4))
	// Another inventory process, once the beat is in the liveness table.
	if err := a.FlushHeartbeats(ctx); err != nil {
		t.Fatal(err)
	}
	// A beat held since, which starts no stream, leaves the start written.
	status(observe(s(5), &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}}), "connected", s(4))
	other := app.New(pool, slog.New(slog.DiscardHandler))
	status(observeBy(other, s(10), disconnected(s(2))), "connected", s(4))
	// A disconnect naming no stream, older than the agent's last beat.
	status(observe(s(3), disconnected(time.Time{})), "connected", s(4))
	// The newest stream's own disconnect counts.
	if got := observe(s(11), disconnected(s(4))); got.GetAgent().GetStatus() != "disconnected" {
		t.Fatalf("the newest stream's disconnect: %v", got.GetAgent())
	}
}

func TestProgressCountsOnlyForTheInstancesCurrentCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	setVM := func(vm string) {
		t.Helper()
		if _, err := a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: in.GetId(),
			State: string(vocab.StateProvisioning), StateDetail: string(vocab.StepRunningSetup), VmId: vm}); err != nil {
			t.Fatal(err)
		}
	}
	progress := func(cmd string, step vocab.Step, status vocab.Progress) *inventoryv1.Instance {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.Now(),
			Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{CommandId: cmd, Step: string(step), Status: string(status)}}}); err != nil {
			t.Fatal(err)
		}
		got, err := a.GetInstance(ctx, in.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	setVM("vm-old")
	progress("vm-old", vocab.StepInstalling, vocab.ProgressStarted)
	// Re-provisioned onto a new VM: the old agent's late report of being
	// done, or of failing, does not count for the new run.
	setVM("vm-new")
	for _, status := range []vocab.Progress{vocab.ProgressSucceeded, vocab.ProgressFailed} {
		got := progress("vm-old", vocab.StepDone, status)
		if got.GetAgentProgress() == vocab.AgentProgress(vocab.StepDone, status) || got.GetState() != string(vocab.StateProvisioning) {
			t.Fatalf("the previous VM's %s counted for the new one: %s, %s", status, got.GetAgentProgress(), got.GetState())
		}
	}
	if got := progress("", vocab.StepDone, vocab.ProgressSucceeded); got.GetAgentProgress() == vocab.AgentProgress(vocab.StepDone, vocab.ProgressSucceeded) {
		t.Fatalf("progress naming no command counted: %s", got.GetAgentProgress())
	}
	if got := progress("vm-new", vocab.StepDone, vocab.ProgressSucceeded); got.GetAgentProgress() != vocab.AgentProgress(vocab.StepDone, vocab.ProgressSucceeded) {
		t.Fatalf("the current command's progress did not count: %q", got.GetAgentProgress())
	}
}

// TestNothingOutgrowsTheBus: a resource too large for the bus is refused
// naming the field that makes it so, and list pages end by size as well as
// by count, so every reply fits in one bus message.
func TestNothingOutgrowsTheBus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, _ := newApp(t)
	file := func(n int) *inventoryv1.SetupAction {
		return &inventoryv1.SetupAction{Type: "file", Path: "f", Mode: "0644", Content: strings.Repeat("x", n)}
	}
	_, err := a.CreateTemplate(ctx, "test", &inventoryv1.Template{Name: "huge", Provider: "local", DataDiskGb: 1,
		SetupActions: []*inventoryv1.SetupAction{file(10), file(app.MaxResourceBytes)}})
	var e *apierr.Error
	if !errors.As(err, &e) || e.Reason != apierr.ReasonTooLarge || e.Field != "setupActions[1].content" {
		t.Fatalf("oversized template: %v", err)
	}
	// Big templates, each well within the limit: pages hold fewer of them.
	const n = 7
	for i := range n {
		if _, err := a.CreateTemplate(ctx, "test", &inventoryv1.Template{Name: fmt.Sprintf("big-%d", i), Provider: "local", DataDiskGb: 1,
			SetupActions: []*inventoryv1.SetupAction{file(app.MaxResourceBytes * 3 / 4)}}); err != nil {
			t.Fatal(err)
		}
	}
	seen, pages, token := 0, 0, ""
	for {
		page, next, err := a.ListTemplates(ctx, app.MaxPageSize, token)
		if err != nil {
			t.Fatal(err)
		}
		size := proto.Size(&inventoryv1.ListTemplatesResponse{Templates: page, NextPageToken: next})
		if size > app.MaxPageBytes+1024 {
			t.Errorf("page %d is %d bytes", pages, size)
		}
		seen, pages, token = seen+len(page), pages+1, next
		if next == "" {
			break
		}
	}
	if seen != n+1 || pages < 3 { // and the template "t" newApp made
		t.Errorf("listed %d templates in %d pages", seen, pages)
	}
	// An update cannot grow a template past the limit either.
	page, _, _ := a.ListTemplates(ctx, 1, "")
	tp := page[0]
	tp.SetupActions = append(tp.SetupActions, file(app.MaxResourceBytes))
	if _, err := a.UpdateTemplate(ctx, "test", tp, []string{"setup_actions"}); apierr.ReasonOf(err) != apierr.ReasonTooLarge {
		t.Errorf("update past the limit: %v", err)
	}
}

// TestFailedLoginsSlowTheNext: after the free failures for a user name,
// the next login waits (429 with the wait), even with the right password;
// once the wait is over the right password works and ends the run. A user
// name that does not exist is treated alike.
func TestFailedLoginsSlowTheNext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	pool := newPool(t)
	policy := attempts.Policy{Free: 2, Base: time.Minute, Max: 10 * time.Minute, Forget: time.Hour}
	logs := &testkit.Buffer{}
	a := app.New(pool, slog.New(slog.NewTextHandler(logs, nil)), app.WithClock(func() time.Time { return now }), app.WithLoginPolicy(policy))
	if err := a.InitialSetup(ctx, "ada", "correct-horse"); err != nil {
		t.Fatal(err)
	}
	login := func(user, pw string) error {
		_, err := a.Login(ctx, user, pw, "192.0.2.7")
		return err
	}
	for _, user := range []string{"ada", "nobody"} {
		for i := range 3 {
			if err := login(user, "wrong"); apierr.ReasonOf(err) != apierr.ReasonUnauthenticated {
				t.Fatalf("%s: failure %d: %v", user, i+1, err)
			}
		}
		err := login(user, "correct-horse")
		var e *apierr.Error
		if !errors.As(err, &e) || e.Reason != apierr.ReasonTooManyAttempts || e.RetryAfter < time.Minute || e.RetryAfter > 2*time.Minute {
			t.Fatalf("%s: login while locked out: %v", user, err)
		}
	}
	now = now.Add(2 * time.Minute)
	if err := login("ada", "correct-horse"); err != nil {
		t.Fatalf("after the wait: %v", err)
	}
	// The run ended with the success: the free failures are free again.
	for range 2 {
		if err := login("ada", "wrong"); apierr.ReasonOf(err) != apierr.ReasonUnauthenticated {
			t.Fatalf("a new run: %v", err)
		}
	}
	if err := login("ada", "correct-horse"); err != nil {
		t.Fatalf("within the free failures: %v", err)
	}
	// Every failure, refusal and token issued is an audit record, in the
	// outbox with the rest; none holds the password.
	var records []string
	rows, err := pool.Query(ctx, `SELECT metadata->>'Flotilla-Subject', payload FROM outbox_messages
		WHERE metadata->>'Flotilla-Subject' LIKE 'flotilla.audit.%' ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var subject string
		var payload []byte
		if err := rows.Scan(&subject, &payload); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(payload, []byte("correct-horse")) || bytes.Contains(bytes.ReplaceAll(payload, []byte("wrong password"), nil), []byte("wrong")) {
			t.Errorf("an audit record holds a password: %q", payload)
		}
		records = append(records, subject[strings.LastIndexByte(subject, '.')+1:])
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := "login-failed login-failed login-failed login-refused login-failed login-failed login-failed login-refused token-issued login-failed login-failed token-issued"
	if got := strings.Join(records, " "); got != want {
		t.Errorf("audit records:\n got %s\nwant %s", got, want)
	}
	// The log says the same, without the passwords.
	if l := logs.String(); strings.Count(l, "auth: login-failed") != 8 || strings.Count(l, "auth: token-issued") != 2 || strings.Contains(l, "correct-horse") {
		t.Errorf("log:\n%s", l)
	}
}

// TestObservedStateCannotOutgrowTheBus: what the provisioner records and
// agents report is bounded like what operators send.
func TestObservedStateCannotOutgrowTheBus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	if _, err := a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: in.GetId(),
		State: string(vocab.StateProvisioning), VmId: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.Now(),
		Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{CommandId: "vm-1", Step: "installing", Status: "failed",
			Message: strings.Repeat("x", app.MaxResourceBytes)}}})
	if apierr.ReasonOf(err) != apierr.ReasonTooLarge {
		t.Fatalf("an oversized report: %v", err)
	}
	_, err = a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: in.GetId(),
		Addresses: &inventoryv1.Addresses{PrivateDns: strings.Repeat("d", app.MaxResourceBytes)}})
	if apierr.ReasonOf(err) != apierr.ReasonTooLarge {
		t.Fatalf("an oversized record: %v", err)
	}
	if got, err := a.GetInstance(ctx, in.GetId()); err != nil || got.GetState() != string(vocab.StateProvisioning) || proto.Size(got) > 4096 {
		t.Errorf("the instance after refused updates: %v", err)
	}
}

// TestGetInstancesReadsManyAtOnce: instance.get-many's read returns the
// instances that exist among those asked for, with their latest
// heartbeats, and refuses a bad id or too many ids naming the field.
func TestGetInstancesReadsManyAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	second, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: "second", Kind: "design", TemplateId: in.GetTemplateId(), NetworkId: in.GetNetworkId()})
	if err != nil {
		t.Fatal(err)
	}
	beat := time.Now().UTC().Truncate(time.Microsecond)
	for _, id := range []string{in.GetId(), second.GetId()} {
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: id, Time: timestamppb.New(beat),
			Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	missing := "0190c3e1-0000-7000-8000-000000000000"
	got, err := a.GetInstances(ctx, []string{second.GetId(), missing, in.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, g := range got {
		names[g.GetId()] = g.GetName()
		if !g.GetAgent().GetLastHeartbeat().AsTime().Equal(beat) {
			t.Errorf("%s: last heartbeat %v, want %v", g.GetName(), g.GetAgent().GetLastHeartbeat().AsTime(), beat)
		}
	}
	if len(got) != 2 || names[in.GetId()] != "i" || names[second.GetId()] != "second" {
		t.Errorf("got %v; want i and second, without the missing one", names)
	}
	field := func(err error) string {
		var e *apierr.Error
		if errors.As(err, &e) && e.Kind == apierr.KindInvalid {
			return e.Field
		}
		return ""
	}
	if _, err := a.GetInstances(ctx, []string{in.GetId(), "nope"}); field(err) != "ids[1]" {
		t.Errorf("a bad id: %v; want an error naming ids[1]", err)
	}
	if _, err := a.GetInstances(ctx, make([]string, 257)); field(err) != "ids" {
		t.Errorf("257 ids: %v; want an error naming ids", err)
	}
}

// TestInstanceListsFilterSearchAndOrder: a list of instances is narrowed
// by state, kind, network, template and a search of names, ids and
// addresses, ordered by name or oldest first, paged through with tokens
// bound to its filters, skipped into, and counted across its pages; bad
// filters name their field.
func TestInstanceListsFilterSearchAndOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, first := newApp(t) // "i", design, created
	net2, err := a.CreateNetwork(ctx, "test", &inventoryv1.Network{Name: "n2", Provider: "local", HttpsStrategy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	tpl2, err := a.CreateTemplate(ctx, "test", &inventoryv1.Template{Name: "t2", Provider: "local", DataDiskGb: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Names out of creation order, so the two orders differ.
	mk := func(name, kind, net, tpl string) *inventoryv1.Instance {
		t.Helper()
		in, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: name, Kind: kind, TemplateId: tpl, NetworkId: net})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	zeta := mk("zeta", "automation", first.GetNetworkId(), first.GetTemplateId())
	alpha := mk("alpha", "design", net2.GetId(), first.GetTemplateId())
	mk("a-b", "deployer", first.GetNetworkId(), tpl2.GetId())
	axb := mk("axb", "design", first.GetNetworkId(), first.GetTemplateId())
	// A DNS name with LIKE's wildcards in it, and one they would match.
	if _, err := a.RecordState(ctx, "test", &inventoryv1.RecordStateRequest{Id: zeta.GetId(), State: "failed", StateDetail: "no room",
		Addresses: &inventoryv1.Addresses{PrivateDns: "ip_10%.internal"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RecordState(ctx, "test", &inventoryv1.RecordStateRequest{Id: axb.GetId(), Addresses: &inventoryv1.Addresses{PrivateDns: "ipx10y.internal"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RecordState(ctx, "test", &inventoryv1.RecordStateRequest{Id: alpha.GetId(), State: "running", VmId: "vm-77",
		Addresses: &inventoryv1.Addresses{PrivateIp: "10.9.8.7", Url: "https://Alpha.example:8443"}}); err != nil {
		t.Fatal(err)
	}
	names := func(r *inventoryv1.ListInstancesRequest) ([]string, int32) {
		t.Helper()
		resp, err := a.ListInstances(ctx, r)
		if err != nil {
			t.Fatalf("%v: %v", r, err)
		}
		var out []string
		for _, in := range resp.GetInstances() {
			out = append(out, in.GetName())
		}
		return out, resp.GetTotalSize()
	}
	for _, c := range []struct {
		name  string
		r     *inventoryv1.ListInstancesRequest
		want  string
		total int32
	}{
		{"everything, oldest first", &inventoryv1.ListInstancesRequest{}, "i zeta alpha a-b axb", 5},
		{"by name", &inventoryv1.ListInstancesRequest{OrderBy: "name"}, "a-b alpha axb i zeta", 5},
		{"a state", &inventoryv1.ListInstancesRequest{State: "failed"}, "zeta", 1},
		{"a kind", &inventoryv1.ListInstancesRequest{Kind: "design", OrderBy: "name"}, "alpha axb i", 3},
		{"a network", &inventoryv1.ListInstancesRequest{NetworkId: net2.GetId()}, "alpha", 1},
		{"a template", &inventoryv1.ListInstancesRequest{TemplateId: tpl2.GetId()}, "a-b", 1},
		{"two filters", &inventoryv1.ListInstancesRequest{Kind: "design", NetworkId: first.GetNetworkId(), OrderBy: "name"}, "axb i", 2},
		{"wildcards are text", &inventoryv1.ListInstancesRequest{Query: "p_10%"}, "zeta", 1},
		{"a VM id", &inventoryv1.ListInstancesRequest{Query: "VM-77"}, "alpha", 1},
		{"an address", &inventoryv1.ListInstancesRequest{Query: " 10.9.8 "}, "alpha", 1},
		{"the node's URL, any case", &inventoryv1.ListInstancesRequest{Query: "alpha.EXAMPLE"}, "alpha", 1},
		{"an id", &inventoryv1.ListInstancesRequest{Query: zeta.GetId()[24:]}, "zeta", 1},
		{"nothing matches", &inventoryv1.ListInstancesRequest{Query: "nowhere"}, "", 0},
		{"skipped into", &inventoryv1.ListInstancesRequest{OrderBy: "name", Skip: 3}, "i zeta", 5},
		{"skipped into, oldest first", &inventoryv1.ListInstancesRequest{Skip: 2}, "alpha a-b axb", 5},
		{"skipped into a filter", &inventoryv1.ListInstancesRequest{Kind: "design", OrderBy: "name", Skip: 1}, "axb i", 3},
		{"skipped past the end", &inventoryv1.ListInstancesRequest{OrderBy: "name", Skip: 9}, "", 5},
	} {
		if got, total := names(c.r); strings.Join(got, " ") != c.want || total != c.total {
			t.Errorf("%s: %q (total %d); want %q (total %d)", c.name, got, total, c.want, c.total)
		}
	}

	// Paging by name, two at a time, with the filter kept.
	var got []string
	r := &inventoryv1.ListInstancesRequest{OrderBy: "name", NetworkId: first.GetNetworkId(), PageSize: 2}
	for pages := 0; ; pages++ {
		resp, err := a.ListInstances(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetTotalSize() != 4 {
			t.Errorf("page %d: total %d; want 4", pages, resp.GetTotalSize())
		}
		for _, in := range resp.GetInstances() {
			got = append(got, in.GetName())
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		// The token belongs to this filter and order.
		for _, other := range []*inventoryv1.ListInstancesRequest{
			{OrderBy: "name", NetworkId: net2.GetId(), PageToken: resp.GetNextPageToken()},
			{NetworkId: first.GetNetworkId(), PageToken: resp.GetNextPageToken()},
		} {
			if _, err := a.ListInstances(ctx, other); fieldOf(err) != "pageToken" {
				t.Errorf("a token with another filter or order: %v; want an error naming pageToken", err)
			}
		}
		r.PageToken = resp.GetNextPageToken()
	}
	if strings.Join(got, " ") != "a-b axb i zeta" {
		t.Errorf("paged by name: %q", got)
	}
	// A skip counts from the page token's place.
	page, err := a.ListInstances(ctx, &inventoryv1.ListInstancesRequest{OrderBy: "name", PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := names(&inventoryv1.ListInstancesRequest{OrderBy: "name", PageToken: page.GetNextPageToken(), Skip: 1}); strings.Join(got, " ") != "i zeta" {
		t.Errorf("after the first page of two, skipping one: %q; want i zeta", got)
	}

	for field, r := range map[string]*inventoryv1.ListInstancesRequest{
		"state":      {State: "sleeping"},
		"kind":       {Kind: "robot"},
		"networkId":  {NetworkId: "n2"},
		"templateId": {TemplateId: "t"},
		"query":      {Query: strings.Repeat("x", 201)},
		"orderBy":    {OrderBy: "age"},
		"skip":       {Skip: -1},
		"pageSize":   {PageSize: 501},
		"pageToken":  {PageToken: "not-a-token"},
	} {
		if _, err := a.ListInstances(ctx, r); fieldOf(err) != field {
			t.Errorf("%v: %v; want an error naming %s", r, err, field)
		}
	}
}

// fieldOf is the field an invalid-input error names ("" for any other).
func fieldOf(err error) string {
	var e *apierr.Error
	if errors.As(err, &e) && e.Kind == apierr.KindInvalid {
		return e.Field
	}
	return ""
}

// rowReads counts the reads of one instance's row (the spec) a pool's
// connections send.
type rowReads struct {
	id string
	n  atomic.Int64
}

func (r *rowReads) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(d.SQL, "SELECT spec") && len(d.Args) > 0 && d.Args[0] == r.id {
		r.n.Add(1)
	}
	return ctx
}

func (r *rowReads) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestSteadyHeartbeatsReadTheRowOnce: an agent that keeps beating has its
// instance row read once, not again every little while (each flush
// confirms in one query, for every agent whose beats it wrote, that their
// rows are as they were); a change another inventory process makes to the
// row is noticed at the next flush, and the next heartbeat after it is
// written to the row.
func TestSteadyHeartbeatsReadTheRowOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testkit.NewDatabase(t)
	clock := newTestClock()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	reads := &rowReads{}
	cfg.ConnConfig.Tracer = reads
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := adapters.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	a, in := newAppOn(t, pool, app.WithClock(clock.now))
	other := app.New(pool, slog.New(slog.DiscardHandler), app.WithClock(clock.now))
	reads.id = in.GetId()
	observe := func(a *app.App, ev *agentv1.AgentEvent) {
		t.Helper()
		ev.InstanceId, ev.Time = in.GetId(), timestamppb.New(clock.now())
		if err := a.Observe(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	beat := func() {
		observe(a, &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 1, DiskTotalBytes: 1 << 30}}})
	}
	status := func() string {
		t.Helper()
		got, err := other.GetInstance(ctx, in.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return got.GetAgent().GetStatus()
	}
	flush := func() {
		t.Helper()
		if err := a.FlushHeartbeats(ctx); err != nil {
			t.Fatal(err)
		}
	}
	observe(a, &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Connected{Connected: &agentv1.Hello{AgentVersion: "1.0.0", VmId: "vm-1"}}})
	beat() // the first beat writes the disk's size to the row
	start := reads.n.Load()
	for range 60 { // ten minutes of beats every 10 s, a flush after each
		clock.advance(10 * time.Second)
		beat()
		flush()
	}
	if n := reads.n.Load() - start; n != 0 {
		t.Errorf("ten minutes of steady heartbeats read the instance row %d times; want none", n)
	}

	// Another inventory process marks the agent disconnected (it saw no
	// beat); this one's next beat is held, its flush notices the change,
	// and the beat after that is written.
	clock.advance(10 * time.Second)
	observe(other, &agentv1.AgentEvent{Body: &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: "no heartbeat"}}})
	beat()
	flush()
	clock.advance(10 * time.Second)
	beat()
	if s := status(); s != "connected" {
		t.Fatalf("after another process marked it disconnected, a flush and a beat: %s; want connected", s)
	}
}

// TestABatchOfAgentEventsKeepsEachAgentsOrder: the agent gateway reports
// many agents' events in one request; each agent's are recorded in the
// order given, each event has its own answer, and a batch too large is
// refused naming the field.
func TestABatchOfAgentEventsKeepsEachAgentsOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, first := newApp(t)
	second, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: "i2", Kind: "design", TemplateId: first.GetTemplateId(), NetworkId: first.GetNetworkId()})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	event := func(id string, body func(*agentv1.AgentEvent)) *agentv1.AgentEvent {
		at = at.Add(time.Millisecond)
		ev := &agentv1.AgentEvent{InstanceId: id, Time: timestamppb.New(at)}
		body(ev)
		return ev
	}
	connected := func(ev *agentv1.AgentEvent) {
		ev.Body = &agentv1.AgentEvent_Connected{Connected: &agentv1.Hello{AgentVersion: "1.0.0", VmId: "vm-1"}}
	}
	disconnected := func(ev *agentv1.AgentEvent) {
		ev.Body = &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: "gone"}}
	}
	heartbeat := func(ev *agentv1.AgentEvent) {
		ev.Body = &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{AgentVersion: "1.0.0", DiskUsedBytes: 1}}
	}
	errs, err := a.ObserveMany(ctx, []*agentv1.AgentEvent{
		event(first.GetId(), connected),
		event(second.GetId(), connected),
		event(first.GetId(), disconnected), // after its connect: the agent is shown disconnected
		event(second.GetId(), heartbeat),
		event("", heartbeat),
		event("0190c3e1-0000-7000-8000-000000000000", heartbeat), // gone: nothing to record
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != 6 {
		t.Fatalf("%d answers for 6 events", len(errs))
	}
	for i, err := range errs {
		var e *apierr.Error
		switch {
		case i == 4 && (!errors.As(err, &e) || e.Kind != apierr.KindInvalid || e.Field != "events[4].instanceId"):
			t.Errorf("an event without an instance id: %v; want invalid, naming events[4].instanceId", err)
		case i != 4 && err != nil:
			t.Errorf("event %d: %v", i, err)
		}
	}
	for id, want := range map[string]string{first.GetId(): "disconnected", second.GetId(): "connected"} {
		got, err := a.GetInstance(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.GetAgent().GetStatus() != want {
			t.Errorf("instance %s: agent %q, want %q", got.GetName(), got.GetAgent().GetStatus(), want)
		}
	}

	tooMany := make([]*agentv1.AgentEvent, 257)
	for i := range tooMany {
		tooMany[i] = event(first.GetId(), heartbeat)
	}
	var e *apierr.Error
	if _, err := a.ObserveMany(ctx, tooMany); !errors.As(err, &e) || e.Field != "events" {
		t.Errorf("257 events: %v; want invalid, naming events", err)
	}
}

// TestRecordsUnderASupersededLeaseAreRefused: a provisioner's record carries
// its lease of the instance; once a record came under a newer lease (the
// instance's work taken over), one under an older lease changes nothing
// and answers lease_superseded, whichever of the two arrives later.
func TestRecordsUnderASupersededLeaseAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t)
	a, in := newAppOn(t, pool)
	id := in.GetId()
	lease := func(epoch int64, rev uint64) *inventoryv1.LeaseFence {
		return &inventoryv1.LeaseFence{Epoch: epoch, Revision: rev}
	}
	record := func(state vocab.State, l *inventoryv1.LeaseFence) error {
		_, err := a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: id,
			State: string(state), StateDetail: fmt.Sprintf("under %v", l), Event: string(vocab.VerbFailed), Lease: l})
		return err
	}
	stateIs := func(want vocab.State, detail string) {
		t.Helper()
		got, err := a.GetInstance(ctx, id)
		if err != nil || got.GetState() != string(want) || !strings.Contains(got.GetStateDetail(), detail) {
			t.Fatalf("instance %s/%q (%v), want %s with %q", got.GetState(), got.GetStateDetail(), err, want, detail)
		}
	}
	const e1, e2 = 1_700_000_000_000_000_000, 1_800_000_000_000_000_000
	for _, c := range []struct {
		what  string
		state vocab.State
		lease *inventoryv1.LeaseFence
		ok    bool
	}{
		{"the first holder", vocab.StateProvisioning, lease(e1, 5), true},
		{"a holder that took over", vocab.StateRunning, lease(e1, 9), true},
		{"the first holder again, resumed after a pause", vocab.StateFailed, lease(e1, 5), false},
		{"the newer holder again", vocab.StateProvisioning, lease(e1, 9), true},
		{"a record without a lease (not checked)", vocab.StateProvisioning, nil, true},
		{"a holder under a bucket made again (its revisions start over)", vocab.StateRunning, lease(e2, 1), true},
		{"a holder under the old bucket", vocab.StateFailed, lease(e1, 100), false},
	} {
		err := record(c.state, c.lease)
		if c.ok != (err == nil) || (!c.ok && apierr.ReasonOf(err) != apierr.ReasonLeaseSuperseded) {
			t.Fatalf("%s: %v", c.what, err)
		}
		if c.ok {
			stateIs(c.state, fmt.Sprint(c.lease))
		} else {
			stateIs(vocab.StateRunning, "") // the refused record changed nothing
		}
	}
	if err := record(vocab.StateFailed, lease(e2, 0)); apierr.ReasonOf(err) != apierr.ReasonInvalidField || !strings.Contains(err.Error(), "lease.revision") {
		t.Fatalf("a lease without a revision: %v", err)
	}
	// The instance removed, its newest lease goes with it.
	if _, err := a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: id,
		State: string(vocab.StateDeleted), Remove: true, Lease: lease(e2, 2)}); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM instance_leases`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("leases left after the instance's removal: %d (%v)", left, err)
	}
}

// TestAFailedStepsReasonIsKeptUntilTheNextReport: a step the agent reports
// failed leaves its message on the instance (cut to 2000 bytes, on a rune
// boundary); its next report, of any step, clears it.
func TestAFailedStepsReasonIsKeptUntilTheNextReport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	if _, err := a.RecordState(ctx, vocab.System("provisioner"), &inventoryv1.RecordStateRequest{Id: in.GetId(),
		State: string(vocab.StateRunning), VmId: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	report := func(status vocab.Progress, message string) *inventoryv1.Instance {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.Now(),
			Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{CommandId: "vm-1", Step: string(vocab.StepRefreshingConfiguration),
				Status: string(status), Message: message}}}); err != nil {
			t.Fatal(err)
		}
		got, err := a.GetInstance(ctx, in.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := report(vocab.ProgressFailed, "setupActions[1]: secret \"db\": not set"); got.GetAgentProgressMessage() != "setupActions[1]: secret \"db\": not set" ||
		got.GetState() != string(vocab.StateRunning) {
		t.Fatalf("a failed step: %q, %s", got.GetAgentProgressMessage(), got.GetState())
	}
	long := strings.Repeat("é", 1500) // 3000 bytes
	if got := report(vocab.ProgressFailed, long).GetAgentProgressMessage(); got != strings.Repeat("é", 1000)+"…" {
		t.Fatalf("a long reason kept as %d bytes: %q…", len(got), got[:20])
	}
	if got := report(vocab.ProgressStarted, "again"); got.GetAgentProgressMessage() != "" {
		t.Fatalf("the next report keeps the failure's reason: %q", got.GetAgentProgressMessage())
	}
}

// TestTheProvisionerRecordsAnOperatorsCommandRequested: the provisioner's
// record of an agent command it sends sets the instance's agent progress
// (an earlier command's result no longer shows); the agent's report of the
// command then replaces it; a failed send's reason is kept, cut like an
// agent's.
func TestTheProvisionerRecordsAnOperatorsCommandRequested(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	prov := vocab.System("provisioner")
	if _, err := a.RecordState(ctx, prov, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: string(vocab.StateRunning), VmId: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	report := func(status string) {
		t.Helper()
		if err := a.Observe(ctx, &agentv1.AgentEvent{InstanceId: in.GetId(), Time: timestamppb.Now(),
			Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{CommandId: "vm-1", Step: "refreshing-configuration", Status: status}}}); err != nil {
			t.Fatal(err)
		}
	}
	report("succeeded")
	got, err := a.RecordState(ctx, prov, &inventoryv1.RecordStateRequest{Id: in.GetId(), AgentProgress: "refreshing-configuration/requested"})
	if err != nil || got.GetAgentProgress() != "refreshing-configuration/requested" || got.GetState() != string(vocab.StateRunning) {
		t.Fatalf("recorded requested: %v, %v", got, err)
	}
	report("started")
	if got, _ := a.GetInstance(ctx, in.GetId()); got.GetAgentProgress() != "refreshing-configuration/started" {
		t.Fatalf("after the agent's report: %q", got.GetAgentProgress())
	}
	got, err = a.RecordState(ctx, prov, &inventoryv1.RecordStateRequest{Id: in.GetId(), AgentProgress: "refreshing-configuration/failed",
		AgentProgressMessage: "command c not sent: " + strings.Repeat("x", 3000)})
	if err != nil || got.GetAgentProgress() != "refreshing-configuration/failed" || !strings.HasPrefix(got.GetAgentProgressMessage(), "command c not sent: xxx") ||
		len(got.GetAgentProgressMessage()) > 2010 {
		t.Fatalf("recorded failed: %v, %v", got, err)
	}
}

// TestRolloutsOfOneActionStartedAtOnceTakeTurns: of two rollouts of one
// action created at the same moment, one is made and the other is refused,
// naming it, as if it had come later.
func TestRolloutsOfOneActionStartedAtOnceTakeTurns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Each write's transaction is held open a while, so the two overlap.
	a, in := newApp(t, app.WithAfterWrite(func(context.Context, pgx.Tx) error { time.Sleep(300 * time.Millisecond); return nil }))
	ro := &inventoryv1.Rollout{Action: "refresh-configuration", Parallel: 1, TimeoutSeconds: 600, Creator: "user:ops",
		Instances: []*inventoryv1.RolloutInstance{{InstanceId: in.GetId(), InstanceName: in.GetName()}}}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := a.CreateRollout(ctx, ro)
			errs <- err
		}()
	}
	var made, refused int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			made++
		case apierr.ReasonOf(err) == apierr.ReasonInvalidState && strings.Contains(err.Error(), "is running: one refresh-configuration rollout at a time"):
			refused++
		default:
			t.Errorf("a rollout created at the same moment as another: %v", err)
		}
	}
	if made != 1 || refused != 1 {
		t.Errorf("%d made, %d refused; want one of each", made, refused)
	}
}

// TestTheProvisionerActsForARolloutsCreatorOnlyWhereItAsked: a lifecycle
// request the provisioner makes for a reprovision rollout is recorded as
// the rollout's creator's, but only for an instance the running rollout
// has asked; any other caller, action, rollout or instance is refused.
func TestTheProvisionerActsForARolloutsCreatorOnlyWhereItAsked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, in := newApp(t)
	provisioner := vocab.System("provisioner")
	ro, err := a.CreateRollout(ctx, &inventoryv1.Rollout{Action: "reprovision", Parallel: 1, TimeoutSeconds: 600, Creator: "user:ops",
		Instances: []*inventoryv1.RolloutInstance{{InstanceId: in.GetId(), InstanceName: in.GetName()}}})
	if err != nil {
		t.Fatal(err)
	}
	refused := func(caller vocab.Actor, id, instance string, action vocab.Action, want string) {
		t.Helper()
		if got, err := a.RolloutCreator(ctx, caller, id, instance, action); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s for rollout %s, instance %s, %s: %q, %v; want refused, %q", caller, id, instance, action, got, err, want)
		}
	}
	refused(provisioner, ro.GetId(), in.GetId(), vocab.ActionReprovision, "has not asked instance") // pending, not asked
	asked := proto.Clone(ro).(*inventoryv1.Rollout)
	asked.Instances[0].State, asked.Instances[0].AskTime = string(vocab.RolloutAsked), timestamppb.Now()
	if ro, err = a.RecordRollout(ctx, provisioner, asked); err != nil {
		t.Fatal(err)
	}
	if got, err := a.RolloutCreator(ctx, provisioner, ro.GetId(), in.GetId(), vocab.ActionReprovision); err != nil || got != "user:ops" {
		t.Fatalf("the provisioner for the rollout's asked instance: %q, %v; want user:ops", got, err)
	}
	refused("system:gateway", ro.GetId(), in.GetId(), vocab.ActionReprovision, "only the provisioner drives them")
	refused(provisioner, ro.GetId(), in.GetId(), vocab.ActionDelete, "it asks for no delete")
	refused(provisioner, ro.GetId(), "0192f0a0-0000-7000-8000-0000000000ff", vocab.ActionReprovision, "has not asked instance")
	refused(provisioner, "0192f0a0-0000-7000-8000-0000000000fe", in.GetId(), vocab.ActionReprovision, "rolloutId: there is no rollout")
	if _, err := a.ControlRollout(ctx, "user:ops", ro.GetId(), 0, "cancel"); err != nil {
		t.Fatal(err)
	}
	refused(provisioner, ro.GetId(), in.GetId(), vocab.ActionReprovision, "is cancelled: it asks no instance")
}
