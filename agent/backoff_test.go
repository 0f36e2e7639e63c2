package agent

import (
	"testing"
	"time"
)

func TestBackoffIsJitteredAndCapped(t *testing.T) {
	t.Parallel()
	// With the largest draw, the waits double from the base up to the cap.
	top := &Backoff{base: backoffBase, cap: backoffCap, rand: func(n int64) int64 { return n - 1 }}
	want := []time.Duration{200, 400, 800, 1600, 3200, 6400, 10000, 10000}
	for i, w := range want {
		if got := top.Next().Round(time.Millisecond); got != w*time.Millisecond {
			t.Fatalf("wait %d = %s, want just under %s", i, got, w*time.Millisecond)
		}
	}
	for range 100 {
		if got := top.Next(); got >= backoffCap {
			t.Fatalf("wait %s is not under the cap %s", got, backoffCap)
		}
	}
	top.Reset()
	if got := top.Next(); got >= backoffBase {
		t.Fatalf("after Reset the wait is %s, want under %s", got, backoffBase)
	}

	// The real draws spread over the whole range, so agents that lost the
	// same gateway come back at different times.
	seen := map[time.Duration]bool{}
	var low, high bool
	for range 200 {
		b := NewBackoff()
		for range 6 {
			b.Next()
		}
		w := b.Next() // ceiling 10s
		if w < 0 || w >= backoffCap {
			t.Fatalf("wait %s out of [0, %s)", w, backoffCap)
		}
		seen[w] = true
		low = low || w < 3*time.Second
		high = high || w > 7*time.Second
	}
	if len(seen) < 150 || !low || !high {
		t.Fatalf("200 agents drew %d distinct waits (low %v, high %v): not jittered", len(seen), low, high)
	}
}
