package agent

import (
	"math/rand/v2"
	"time"
)

// Reconnect backoff bounds.
const (
	backoffBase = 200 * time.Millisecond
	backoffCap  = 10 * time.Second
)

// Backoff is exponential backoff with full jitter: the n-th wait is drawn
// uniformly from [0, min(cap, base·2ⁿ)), so agents that lost the same
// gateway do not come back in step. It is not safe for concurrent use.
type Backoff struct {
	base, cap time.Duration
	attempt   int
	rand      func(n int64) int64 // uniform in [0, n)
}

// NewBackoff returns the agent's reconnect backoff: 200ms doubling up to 10s.
func NewBackoff() *Backoff {
	return &Backoff{base: backoffBase, cap: backoffCap, rand: rand.Int64N}
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	ceiling := b.cap
	if b.attempt < 30 { // beyond that base·2ⁿ overflows; the cap applies anyway
		ceiling = min(b.cap, b.base<<b.attempt)
	}
	b.attempt++
	return time.Duration(b.rand(int64(ceiling)))
}

// Reset starts again from the base, after a connection that worked.
func (b *Backoff) Reset() { b.attempt = 0 }
