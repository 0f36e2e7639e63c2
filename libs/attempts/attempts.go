// Package attempts slows down guessing. A Policy says how long the next
// attempt must wait after a run of failures: nothing for the first few,
// then a wait that doubles with each further failure, up to a cap; a run
// is forgotten after a quiet spell. The inventory keeps runs per user name
// in PostgreSQL; a Limiter keeps them in memory, per client address, for
// the gateway.
package attempts

import (
	"sync"
	"time"
)

// Policy is how failures turn into waits.
type Policy struct {
	// Free failures in a row cost nothing.
	Free int
	// Base is the wait after failure Free+1, doubled after each further one,
	// up to Max.
	Base, Max time.Duration
	// Forget ends a run of failures this long after its last failure.
	Forget time.Duration
}

// Wait is how long after the last of failures consecutive failures the
// next attempt must wait.
func (p Policy) Wait(failures int) time.Duration {
	over := failures - p.Free
	if over <= 0 {
		return 0
	}
	w := p.Base
	for range over - 1 {
		if w *= 2; w >= p.Max {
			return p.Max
		}
	}
	return min(w, p.Max)
}

// Run is a run of failures: how many, and when the last was.
type Run struct {
	Failures int
	Last     time.Time
}

// RetryAfter is how long from now the next attempt must wait, in whole
// seconds rounded up as Retry-After says it (0: it may go ahead).
func (p Policy) RetryAfter(r Run, now time.Time) time.Duration {
	if r.Failures == 0 || now.Sub(r.Last) >= p.Forget {
		return 0
	}
	d := r.Last.Add(p.Wait(r.Failures)).Sub(now)
	if d <= 0 {
		return 0
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

// Fail returns the run after one more failure at now.
func (p Policy) Fail(r Run, now time.Time) Run {
	if now.Sub(r.Last) >= p.Forget {
		r.Failures = 0
	}
	return Run{Failures: r.Failures + 1, Last: now}
}

// Limiter keeps runs of failures in memory, by key (a client address),
// for at most MaxKeys keys: when full, forgotten runs are dropped first,
// then the oldest half.
type Limiter struct {
	policy  Policy
	maxKeys int
	now     func() time.Time

	mu   sync.Mutex
	runs map[string]Run
}

// NewLimiter returns a limiter for up to maxKeys keys.
func NewLimiter(p Policy, maxKeys int, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{policy: p, maxKeys: maxKeys, now: now, runs: map[string]Run{}}
}

// RetryAfter is how long key must wait before its next attempt (0: none).
func (l *Limiter) RetryAfter(key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.policy.RetryAfter(l.runs[key], l.now())
}

// Fail records a failure of key.
func (l *Limiter) Fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if _, ok := l.runs[key]; !ok && len(l.runs) >= l.maxKeys {
		l.evict(now)
	}
	l.runs[key] = l.policy.Fail(l.runs[key], now)
}

func (l *Limiter) evict(now time.Time) {
	var newest time.Time
	for k, r := range l.runs {
		if now.Sub(r.Last) >= l.policy.Forget {
			delete(l.runs, k)
		} else if r.Last.After(newest) {
			newest = r.Last
		}
	}
	if len(l.runs) < l.maxKeys {
		return
	}
	// Still full of live runs: keep the newer half by time.
	var oldest time.Time
	for _, r := range l.runs {
		if oldest.IsZero() || r.Last.Before(oldest) {
			oldest = r.Last
		}
	}
	cut := oldest.Add(newest.Sub(oldest) / 2)
	for k, r := range l.runs {
		if !r.Last.After(cut) {
			delete(l.runs, k)
		}
	}
}

// Len is how many keys the limiter holds.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.runs)
}
