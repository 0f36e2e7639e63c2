package agentgw

import "testing"

// TestPendingLinesKeepOrderAndHoldMemoryOnlyWhileLinesWait: the queue of
// lines waiting for JetStream gives them back in order, stays within what
// waits when it never empties, and lets its array go once empty.
func TestPendingLinesKeepOrderAndHoldMemoryOnlyWhileLinesWait(t *testing.T) {
	t.Parallel()
	q := pendingLines{ready: make(chan struct{}, 1)}
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
	select {
	case <-q.ready:
	default:
		t.Fatal("no token after pushes")
	}
}
