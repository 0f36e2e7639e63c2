package agentgw

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestPendingLinesKeepOrderAndHoldMemoryOnlyWhileLinesWait: the queue of
// lines waiting for JetStream gives them back in order, stays within what
// waits when it never empties, and lets its array go once empty.
func TestPendingLinesKeepOrderAndHoldMemoryOnlyWhileLinesWait(t *testing.T) {
	t.Parallel()
	var q pendingLines
	if _, ok := q.pop(); ok {
		t.Fatal("a line from an empty queue")
	}
	var pushed, popped uint64
	// Never empty, at most 100 waiting, for many times that many lines.
	for range 100 {
		pushed++
		q.push(pending{seq: pushed})
	}
	for range 100_000 {
		l, ok := q.pop()
		if !ok || l.seq != popped+1 {
			t.Fatalf("popped %d (%v) after %d", l.seq, ok, popped)
		}
		popped++
		pushed++
		q.push(pending{seq: pushed})
		if c := cap(q.lines); c > 256 {
			t.Fatalf("the queue's array grew to %d for 100 lines waiting", c)
		}
	}
	if q.len() != 100 {
		t.Fatalf("len %d, want 100", q.len())
	}
	for q.len() > 0 {
		if l, _ := q.pop(); l.seq != popped+1 {
			t.Fatalf("popped %d after %d", l.seq, popped)
		}
		popped++
	}
	if _, ok := q.pop(); ok || q.lines != nil {
		t.Fatalf("empty queue keeps an array of %d", cap(q.lines))
	}
}

// TestTheAcknowledgerRunsWhileLinesWaitOnly: lines published one at a time
// and in bursts, against a real JetStream, are each acknowledged to the
// agent in order, the last LogAck naming the last line, also a line
// published just as the acknowledger is done with the ones before; and
// once every line is acknowledged no acknowledger is left running.
func TestTheAcknowledgerRunsWhileLinesWaitOnly(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1, endpoints.StreamsOf(subjects.AgentGW)...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acks []uint64
	p := newLogPublisher(js, "i-1", 10*time.Second, func(seq uint64) bool {
		mu.Lock()
		acks = append(acks, seq)
		mu.Unlock()
		// A LogAck takes a moment to queue: the next line may come
		// meanwhile, as the acknowledger is about to finish.
		time.Sleep(200 * time.Microsecond)
		return true
	})
	defer p.Stop()
	var seq uint64
	publish := func(n int) {
		t.Helper()
		lines := make([]*agentv1.LogLine, n)
		for i := range lines {
			seq++
			lines[i] = &agentv1.LogLine{Seq: seq, Text: fmt.Sprintf("line %d", seq)}
		}
		if err := p.Publish(ctx, lines); err != nil {
			t.Fatal(err)
		}
	}
	allAcknowledged := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acks) > 0 && acks[len(acks)-1] == seq
	}
	for round := range 300 {
		// A line, then another as the first one's LogAck goes or after;
		// every few rounds a burst in one publish.
		publish(1)
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
		publish(1)
		if round%10 == 0 {
			publish(100)
		}
		testkit.WaitFor(t, 10*time.Second, "every line acknowledged", allAcknowledged)
		testkit.WaitFor(t, 10*time.Second, "the acknowledger to stop", p.acking.idle)
		if n := p.queue.len(); n != 0 {
			t.Fatalf("round %d: %d lines left waiting with no acknowledger", round, n)
		}
	}
	mu.Lock()
	for i := 1; i < len(acks); i++ {
		if acks[i] < acks[i-1] {
			t.Fatalf("LogAck %d after %d", acks[i], acks[i-1])
		}
	}
	mu.Unlock()
	if err := p.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}
