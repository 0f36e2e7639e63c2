package agentgw

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAStreamsEventsGoInOrderWhileTheyWaitOnly: an agent stream's events
// reach the inventory in the order they were queued, whether they come
// one at a time or in bursts, and once none waits no sender is left
// running and nothing is left queued.
func TestAStreamsEventsGoInOrderWhileTheyWaitOnly(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	s := &Service{
		nc:           testkit.NATSConn(t, testkit.NATS(t)),
		log:          slog.New(slog.DiscardHandler),
		observeRetry: time.Second,
		conns:        map[string]*agentConn{},
	}
	s.events = &batcher[*agentv1.AgentEvent]{flights: maxEventBatches, send: func(batch []*agentv1.AgentEvent) []error {
		mu.Lock()
		for _, ev := range batch {
			got = append(got, ev.GetProgress().GetMessage())
		}
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // the inventory's answer takes a moment
		return make([]error, len(batch))
	}}
	c := &agentConn{id: "i-1", events: make(chan queuedEvent, eventQueue), evCtx: context.Background()}
	var want []string
	queue := func(msg string) {
		ev := c.event()
		ev.Body = &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{Message: msg}}
		s.queueEvent(c, queuedEvent{ev: ev, retry: true}, true)
		want = append(want, msg)
	}
	for round := range 500 {
		// An event, then another as the sender finishes with the first
		// or after it has gone; every few rounds a burst that fills the
		// queue.
		queue(fmt.Sprintf("%d.a", round))
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		queue(fmt.Sprintf("%d.b", round))
		if round%10 == 0 {
			for i := range 2 * eventQueue {
				queue(fmt.Sprintf("%d.burst.%d", round, i))
			}
		}
		s.workers.Wait()
		if n := len(c.events); n != 0 {
			t.Fatalf("round %d: %d events left queued with no sender", round, n)
		}
		if !c.sending.idle() {
			t.Fatalf("round %d: a sender is marked running with nothing queued", round)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("%d events delivered, %d queued", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: delivered %q, queued %q", i, got[i], want[i])
		}
	}
}
