package attempts_test

import (
	"fmt"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/attempts"
)

var policy = attempts.Policy{Free: 3, Base: 10 * time.Second, Max: time.Minute, Forget: time.Hour}

func TestWaitsDoubleAfterTheFreeFailuresUpToTheCap(t *testing.T) {
	t.Parallel()
	want := []time.Duration{0, 0, 0, 0, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute}
	for n, w := range want {
		if got := policy.Wait(n); got != w {
			t.Errorf("Wait(%d) = %v, want %v", n, got, w)
		}
	}
	if got := policy.Wait(1000); got != time.Minute {
		t.Errorf("Wait(1000) = %v", got)
	}
}

func TestARunIsForgottenAfterAQuietSpell(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var r attempts.Run
	for i := range 5 {
		r = policy.Fail(r, t0.Add(time.Duration(i)*time.Second))
	}
	last := t0.Add(4 * time.Second)
	if got := policy.RetryAfter(r, last); got != 20*time.Second {
		t.Errorf("after 5 failures: %v", got)
	}
	if got := policy.RetryAfter(r, last.Add(15*time.Second)); got != 5*time.Second {
		t.Errorf("15 s later: %v", got)
	}
	if got := policy.RetryAfter(r, last.Add(15*time.Second+300*time.Millisecond)); got != 5*time.Second {
		t.Errorf("15.3 s later: %v, want whole seconds rounded up", got)
	}
	if got := policy.RetryAfter(r, last.Add(time.Hour)); got != 0 {
		t.Errorf("an hour later: %v", got)
	}
	if r = policy.Fail(r, last.Add(time.Hour)); r.Failures != 1 {
		t.Errorf("a failure after the quiet spell starts a new run: %d", r.Failures)
	}
}

func TestALimiterStaysBounded(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := attempts.NewLimiter(policy, 100, func() time.Time { return now })
	for range 4 {
		l.Fail("10.0.0.1")
	}
	if got := l.RetryAfter("10.0.0.1"); got != 10*time.Second {
		t.Errorf("after 4 failures: %v", got)
	}
	if got := l.RetryAfter("10.0.0.2"); got != 0 {
		t.Errorf("another address: %v", got)
	}
	// A flood of addresses cannot grow it past its size; the newest stay.
	for i := range 1000 {
		now = now.Add(time.Millisecond)
		l.Fail(fmt.Sprintf("192.0.2.%d", i))
	}
	if l.Len() > 100 {
		t.Errorf("the limiter holds %d addresses", l.Len())
	}
	for range 4 {
		l.Fail("198.51.100.7")
	}
	if got := l.RetryAfter("198.51.100.7"); got != 10*time.Second {
		t.Errorf("the newest address after a flood: %v", got)
	}
}
