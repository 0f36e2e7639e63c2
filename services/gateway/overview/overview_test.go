package overview_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	m, err := bus.NewEvent(context.Background(), subjects.NounInstance, id, verb, vocab.System("test"), 1, time.Now(),
		&inventoryv1.Instance{Id: id, Name: id, State: string(state)})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// TestTheOverviewCountsInstancesByStateFromTheirEvents: created, moved
// through states and deleted, instances are counted by their latest state;
// other entities' events count for nothing, and applying an event twice
// changes nothing.
func TestTheOverviewCountsInstancesByStateFromTheirEvents(t *testing.T) {
	t.Parallel()
	js := eventsStream(t)
	netEv, err := bus.NewEvent(t.Context(), subjects.NounNetwork, "n-1", vocab.VerbCreated, vocab.System("test"), 1, time.Now(), &inventoryv1.Network{Id: "n-1"})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, js, []bus.Message{
		instanceEvent(t, "a", vocab.VerbCreated, vocab.StateCreated),
		instanceEvent(t, "b", vocab.VerbCreated, vocab.StateCreated),
		instanceEvent(t, "c", vocab.VerbCreated, vocab.StateCreated),
		netEv,
		instanceEvent(t, "a", vocab.ActionProvision.Requested(), vocab.StateProvisioning),
		instanceEvent(t, "b", vocab.ActionProvision.Requested(), vocab.StateProvisioning),
		instanceEvent(t, "a", vocab.VerbRunning, vocab.StateRunning),
		instanceEvent(t, "c", vocab.VerbDeleted, vocab.StateDeleted),
	})
	o := overview.New()
	n, err := o.Rebuild(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{string(vocab.StateRunning): 1, string(vocab.StateProvisioning): 1}
	if got := o.Counts(); n != 7 || !maps.Equal(got, want) {
		t.Fatalf("after replaying %d events: %v, want 7 events and %v", n, got, want)
	}
	// Replaying again from the start skips what was applied.
	if _, err := o.Rebuild(t.Context(), js); err != nil {
		t.Fatal(err)
	}
	if got := o.Counts(); !maps.Equal(got, want) {
		t.Fatalf("after a second replay: %v, want %v", got, want)
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
		for seen := 0; seen < n; {
			batch, err := cons.Fetch(4096, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				b.Fatal(err)
			}
			for range batch.Messages() {
				seen++
			}
		}
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
}

func BenchmarkReplayOverview(b *testing.B) {
	js, n := replayEnv(b)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		got, err := overview.New().Rebuild(b.Context(), js)
		if err != nil || got != n {
			b.Fatalf("rebuilt from %d events (%v), want %d", got, err, n)
		}
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
}
