package overview_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/gateway/overview"
)

func eventsStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(testkit.NATSConn(tb, testkit.NATS(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	if err := bus.EnsureStreams(context.Background(), js, 1, subjects.EventsStream); err != nil {
		tb.Fatal(err)
	}
	return js
}

// publish puts events on the stream as the inventory's outbox does, and
// waits until every one is stored.
func publish(tb testing.TB, js jetstream.JetStream, events []bus.Message) {
	tb.Helper()
	var futures []jetstream.PubAckFuture
	for i, e := range events {
		f, err := js.PublishMsgAsync(&nats.Msg{Subject: e.Subject, Header: e.Header, Data: e.Data})
		if err != nil {
			tb.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == 4096 || i == len(events)-1 {
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					tb.Fatal(err)
				case <-time.After(30 * time.Second):
					tb.Fatal("no acknowledgement")
				}
			}
			futures = futures[:0]
		}
	}
}

func instanceEvent(tb testing.TB, id string, verb vocab.Verb, state vocab.State) bus.Message {
	tb.Helper()
	return event(tb, verb, &inventoryv1.Instance{Id: id, Name: id, State: string(state)})
}

func event(tb testing.TB, verb vocab.Verb, in *inventoryv1.Instance) bus.Message {
	tb.Helper()
	m, err := bus.NewEvent(context.Background(), subjects.NounInstance, in.GetId(), verb, vocab.System("test"), 1, time.Now(), in)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// keep runs o.Keep with list until the test ends, failing the test on an
// error it reports.
func keep(tb testing.TB, o *overview.Overview, js jetstream.JetStream, list overview.Lister) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		o.Keep(ctx, js, list, func(err error) {
			if !strings.Contains(err.Error(), "listing fails once") {
				tb.Errorf("keep: %v", err)
			}
		})
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
}

func listing(ins ...*inventoryv1.Instance) overview.Lister {
	return func(_ context.Context, each func(*inventoryv1.Instance)) error {
		for _, in := range ins {
			each(in)
		}
		return nil
	}
}

// waitFor waits until the overview's snapshot satisfies ok, and returns it.
func waitFor(t *testing.T, o *overview.Overview, what string, ok func(overview.Snapshot) bool) overview.Snapshot {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := o.Snapshot()
		if err == nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: the overview is %+v (%v)", what, s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTheOverviewCountsInstancesByStateFromTheirEvents: created, moved
// through states and deleted, instances are counted by their latest state,
// their agents and failures with them; other entities' events count for
// nothing, and an event applied twice changes nothing. Once built, the
// overview follows new events.
func TestTheOverviewCountsInstancesByStateFromTheirEvents(t *testing.T) {
	t.Parallel()
	js := eventsStream(t)
	netEv, err := bus.NewEvent(t.Context(), subjects.NounNetwork, "n-1", vocab.VerbCreated, vocab.System("test"), 1, time.Now(), &inventoryv1.Network{Id: "n-1"})
	if err != nil {
		t.Fatal(err)
	}
	connected := &inventoryv1.Instance{Id: "a", Name: "alpha", State: string(vocab.StateRunning), VmId: "vm-a",
		Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected), Version: "0.0.9"}}
	publish(t, js, []bus.Message{
		instanceEvent(t, "a", vocab.VerbCreated, vocab.StateCreated),
		instanceEvent(t, "b", vocab.VerbCreated, vocab.StateCreated),
		instanceEvent(t, "c", vocab.VerbCreated, vocab.StateCreated),
		netEv,
		instanceEvent(t, "a", vocab.ActionProvision.Requested(), vocab.StateProvisioning),
		instanceEvent(t, "b", vocab.ActionProvision.Requested(), vocab.StateProvisioning),
		event(t, vocab.VerbAgentConnected, connected),
		event(t, vocab.VerbFailed, &inventoryv1.Instance{Id: "b", Name: "beta", State: string(vocab.StateFailed), VmId: "vm-b",
			StateDetail: "setup exited with 2", Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentDisconnected)}}),
		instanceEvent(t, "c", vocab.VerbDeleted, vocab.StateDeleted),
	})
	o := overview.New(0)
	keep(t, o, js, listing())
	<-o.Ready()
	s, err := o.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := overview.Snapshot{States: map[string]int{string(vocab.StateRunning): 1, string(vocab.StateFailed): 1}, Instances: 2,
		AgentsExpected: 2, AgentsConnected: 1, AgentVersions: map[string]int{"0.0.9": 1},
		Failures: []overview.Failure{{ID: "b", Name: "beta", Detail: "setup exited with 2"}}, Sequence: 9,
		CertificateWarning: overview.DefaultCertificateWarning}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("after the replay: %+v, want %+v", s, want)
	}
	// An event applied again (a redelivery) changes nothing.
	again := instanceEvent(t, "a", vocab.ActionProvision.Requested(), vocab.StateProvisioning)
	if err := o.Apply(5, again.Subject, again.Data); err != nil {
		t.Fatal(err)
	}
	if s, _ := o.Snapshot(); !reflect.DeepEqual(s, want) {
		t.Fatalf("after an old event again: %+v, want %+v", s, want)
	}
	// New events are followed.
	publish(t, js, []bus.Message{instanceEvent(t, "d", vocab.VerbCreated, vocab.StateCreated), instanceEvent(t, "b", vocab.VerbDeleted, vocab.StateDeleted)})
	s = waitFor(t, o, "d created and b deleted", func(s overview.Snapshot) bool { return s.Sequence == 11 })
	if want := map[string]int{string(vocab.StateRunning): 1, string(vocab.StateCreated): 1}; !maps.Equal(s.States, want) || s.Instances != 2 ||
		s.AgentsExpected != 1 || s.AgentsConnected != 1 || len(s.Failures) != 0 {
		t.Fatalf("after following: %+v, want %v, 2 instances, 1 of 1 agents, no failures", s, want)
	}
	// An agent upgraded: counted at its new version, not its old.
	upgraded := proto.Clone(connected).(*inventoryv1.Instance)
	upgraded.Agent.Version = "0.1.1"
	publish(t, js, []bus.Message{event(t, vocab.VerbAgentConnected, upgraded)})
	s = waitFor(t, o, "a's agent upgraded", func(s overview.Snapshot) bool { return s.Sequence == 12 })
	if want := map[string]int{"0.1.1": 1}; !maps.Equal(s.AgentVersions, want) {
		t.Fatalf("agent versions after the upgrade: %v, want %v", s.AgentVersions, want)
	}
}

// TestTheOverviewNamesCertificatesEndingSoon: instances with a VM whose
// node certificate ends within 14 days (the default window), or has
// ended, are named soonest first; one ending later, one without a VM and
// one without HTTPS are not. A wider window names more.
// A renewal the agent reports takes its instance off.
func TestTheOverviewNamesCertificatesEndingSoon(t *testing.T) {
	t.Parallel()
	js := eventsStream(t)
	now := time.Now().UTC().Truncate(time.Second)
	running := func(id string, ends time.Duration, vm bool) *inventoryv1.Instance {
		in := &inventoryv1.Instance{Id: id, Name: "i-" + id, State: string(vocab.StateRunning),
			Agent: &inventoryv1.AgentStatus{Status: string(vocab.AgentConnected)}}
		if vm {
			in.VmId = "vm-" + id
		}
		if ends != 0 {
			in.Agent.NodeCertificateNotAfter = timestamppb.New(now.Add(ends))
		}
		return in
	}
	publish(t, js, []bus.Message{
		event(t, vocab.VerbRunning, running("soon", 3*24*time.Hour, true)),
		event(t, vocab.VerbRunning, running("later", 60*24*time.Hour, true)),
		event(t, vocab.VerbRunning, running("ended", -time.Hour, true)),
		event(t, vocab.VerbUpdated, running("novm", time.Hour, false)),
		event(t, vocab.VerbRunning, running("plain", 0, true)),
	})
	o := overview.New(0)
	keep(t, o, js, listing())
	<-o.Ready()
	s, err := o.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := []overview.CertificateEnding{{ID: "ended", Name: "i-ended", NotAfter: now.Add(-time.Hour)}, {ID: "soon", Name: "i-soon", NotAfter: now.Add(3 * 24 * time.Hour)}}
	if !reflect.DeepEqual(s.CertificatesEnding, want) || s.CertificatesEndingCount != 2 {
		t.Fatalf("certificates ending: %+v (%d); want %+v", s.CertificatesEnding, s.CertificatesEndingCount, want)
	}
	// Another window (FLOTILLA_CERTIFICATE_WARNING): 61 days names the
	// one ending in 60 too.
	wide := overview.New(61 * 24 * time.Hour)
	keep(t, wide, js, listing())
	<-wide.Ready()
	if s, err := wide.Snapshot(); err != nil || s.CertificatesEndingCount != 3 || s.CertificateWarning != 61*24*time.Hour {
		t.Fatalf("a 61-day window: %+v %v; want 3 named", s, err)
	}
	publish(t, js, []bus.Message{event(t, vocab.VerbUpdated, running("ended", 90*24*time.Hour, true))})
	waitFor(t, o, "the renewal", func(s overview.Snapshot) bool {
		return s.CertificatesEndingCount == 1 && s.CertificatesEnding[0].ID == "soon"
	})
}

// Instances no event in the stream speaks of (older than its 90 days) are
// counted from a listing of them, which is retried until it succeeds; a
// listed instance an event speaks of is counted as its last event says,
// whatever the listing, which may have read it before or after. The
// overview is not ready until both are done.
func TestTheOverviewFillsInInstancesWithoutEventsFromAListing(t *testing.T) {
	t.Parallel()
	js := eventsStream(t)
	publish(t, js, []bus.Message{
		instanceEvent(t, "evented", vocab.VerbCreated, vocab.StateCreated),
		instanceEvent(t, "evented", vocab.VerbRunning, vocab.StateRunning),
		instanceEvent(t, "gone", vocab.VerbDeleted, vocab.StateDeleted),
	})
	release := make(chan struct{})
	calls := 0
	list := func(ctx context.Context, each func(*inventoryv1.Instance)) error {
		if calls++; calls == 1 {
			return errors.New("listing fails once")
		}
		<-release
		return listing(
			&inventoryv1.Instance{Id: "old", Name: "old", State: string(vocab.StateRunning), VmId: "vm-old"},
			&inventoryv1.Instance{Id: "evented", Name: "evented", State: string(vocab.StateProvisioning)}, // read before its last event
			&inventoryv1.Instance{Id: "gone", Name: "gone", State: string(vocab.StateDeprovisioning)},     // read before it was deleted
		)(ctx, each)
	}
	o := overview.New(0)
	keep(t, o, js, list)
	time.Sleep(1500 * time.Millisecond) // the replay is done, the listing retried and waiting
	if _, err := o.Snapshot(); !errors.Is(err, overview.ErrNotReady) {
		t.Fatalf("before the listing: err = %v, want ErrNotReady", err)
	}
	close(release)
	<-o.Ready()
	s, err := o.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{string(vocab.StateRunning): 2}; !maps.Equal(s.States, want) || s.Instances != 2 || s.AgentsExpected != 1 {
		t.Fatalf("after the listing: %+v, want %v, 2 instances, 1 agent expected", s, want)
	}
	// Once listed, an event for a listed instance counts as for any other.
	publish(t, js, []bus.Message{instanceEvent(t, "old", vocab.VerbDeleted, vocab.StateDeleted)})
	waitFor(t, o, "old deleted", func(s overview.Snapshot) bool { return s.Instances == 1 && s.AgentsExpected == 0 })
}

// A gateway may start before the events stream exists (the inventory
// creates it): the overview's consumer is retried until it does.
func TestTheOverviewWaitsForTheEventsStream(t *testing.T) {
	t.Parallel()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	o := overview.New(0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var errs []error
	go func() {
		defer close(done)
		o.Keep(ctx, js, listing(), func(err error) { errs = append(errs, err) })
	}()
	time.Sleep(500 * time.Millisecond)
	if _, err := o.Snapshot(); !errors.Is(err, overview.ErrNotReady) {
		t.Fatalf("without the stream: err = %v, want ErrNotReady", err)
	}
	if err := bus.EnsureStreams(t.Context(), js, 1, subjects.EventsStream); err != nil {
		t.Fatal(err)
	}
	publish(t, js, []bus.Message{instanceEvent(t, "a", vocab.VerbCreated, vocab.StateCreated)})
	s := waitFor(t, o, "the instance created once the stream exists", func(s overview.Snapshot) bool { return s.Instances == 1 })
	cancel()
	<-done
	if s.States[string(vocab.StateCreated)] != 1 || len(errs) == 0 || !strings.Contains(errs[0].Error(), "replay instance events") {
		t.Fatalf("overview %+v, errors reported %v: want one created, and the missing stream reported", s, errs)
	}
}

// Rebuilding the overview against replaying the same events raw, with an
// ordered consumer in the same way (docs/benchmarks.md):
//
//	FLOTILLA_BENCH_EVENTS=1000000 go test -run '^$' -bench Replay -benchtime 1x ./services/gateway/overview/
//
// Each iteration replays every event; both report events/s.
func replayEnv(b *testing.B) (jetstream.JetStream, int) {
	b.Helper()
	n := 1_000_000
	if v := os.Getenv("FLOTILLA_BENCH_EVENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("FLOTILLA_BENCH_EVENTS=%q: want a positive number", v)
		}
	}
	js := eventsStream(b)
	states := []vocab.State{vocab.StateCreated, vocab.StateProvisioning, vocab.StateRunning, vocab.StateDeprovisioned}
	const chunk = 50_000
	for done := 0; done < n; {
		events := make([]bus.Message, 0, min(chunk, n-done))
		for i := done; i < n && len(events) < chunk; i++ {
			events = append(events, instanceEvent(b, fmt.Sprintf("i-%d", i%10_000), vocab.VerbUpdated, states[i%len(states)]))
		}
		publish(b, js, events)
		done += len(events)
	}
	return js, n
}

func BenchmarkReplayRaw(b *testing.B) {
	js, n := replayEnv(b)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		cons, err := js.OrderedConsumer(b.Context(), subjects.EventsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, "*")}})
		if err != nil {
			b.Fatal(err)
		}
		seen, done := 0, make(chan struct{})
		cc, err := cons.Consume(func(jetstream.Msg) {
			if seen++; seen == n {
				close(done)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		<-done
		cc.Stop()
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
}

func BenchmarkReplayOverview(b *testing.B) {
	js, n := replayEnv(b)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		o := overview.New(0)
		ctx, cancel := context.WithCancel(b.Context())
		go o.Keep(ctx, js, listing(), func(err error) { b.Error(err) })
		<-o.Ready()
		cancel()
		if s, err := o.Snapshot(); err != nil || s.Sequence != uint64(n) {
			b.Fatalf("rebuilt up to event %d (%v), want %d", s.Sequence, err, n)
		}
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
}
