package gateway

import (
	"context"
	"testing"
	"time"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAStatusCallerThatStopsWaitingGetsTheLastAnswer: while a status check
// is slow (a service's ping waiting out its timeout), a caller that stops
// waiting (a load balancer's check timing out) gets the last answer, not a
// check of its own with its context ended, which would find every service
// failing and say so in the log.
func TestAStatusCallerThatStopsWaitingGetsTheLastAnswer(t *testing.T) {
	t.Parallel()
	c := newFreshCache[*systemv1.Status](time.Millisecond)
	c.get(t.Context(), func(context.Context) *systemv1.Status { return &systemv1.Status{Status: "ok"} })
	time.Sleep(5 * time.Millisecond) // the answer is no longer fresh
	release := make(chan struct{})
	done := make(chan *systemv1.Status, 1)
	go func() {
		done <- c.get(t.Context(), func(context.Context) *systemv1.Status {
			<-release
			return &systemv1.Status{Status: "ok"}
		})
	}()
	testkit.WaitFor(t, 5*time.Second, "the slow check to start", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.running != nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	checked := false
	got := c.get(ctx, func(context.Context) *systemv1.Status {
		checked = true
		return &systemv1.Status{Status: "degraded"}
	})
	if checked || got.GetStatus() != "ok" {
		t.Errorf("a caller that stopped waiting got %q (checked itself: %v); want the last answer, ok", got.GetStatus(), checked)
	}
	close(release)
	if s := <-done; s.GetStatus() != "ok" {
		t.Errorf("the slow check answered %q", s.GetStatus())
	}
}
