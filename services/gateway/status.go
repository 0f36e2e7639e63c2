package gateway

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
)

// statusFresh is how long a status answer is served again: load balancers
// and monitors ask every second or two each, and one round of pings serves
// them all. clusterFresh is the same for the cluster status, whose round
// (streams, monitoring endpoints, Patroni) costs more.
const (
	statusFresh  = time.Second
	clusterFresh = 2 * time.Second
)

// freshCache keeps the last answer of a check for fresh, and lets one check
// run at a time: requests that arrive while it runs wait for its answer.
// Callers get copies.
type freshCache[T proto.Message] struct {
	fresh   time.Duration
	mu      sync.Mutex
	last    T
	have    bool
	at      time.Time
	running chan struct{} // closed when the check under way is done
}

func newFreshCache[T proto.Message](fresh time.Duration) *freshCache[T] {
	return &freshCache[T]{fresh: fresh}
}

func (c *freshCache[T]) get(ctx context.Context, check func(context.Context) T) T {
	for {
		c.mu.Lock()
		if c.have && time.Since(c.at) < c.fresh {
			last := c.last
			c.mu.Unlock()
			return proto.Clone(last).(T)
		}
		if wait := c.running; wait != nil {
			last, have := c.last, c.have
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				// This caller gives up waiting (a load balancer's check
				// timed out, say): it gets the last answer, however old.
				// A check of its own, with its context ended, would only
				// find every service failing.
				if have {
					return proto.Clone(last).(T)
				}
				return check(ctx)
			}
		}
		done := make(chan struct{})
		c.running = done
		c.mu.Unlock()
		// The check outlives a caller that goes away: others may wait on it.
		answer := check(context.WithoutCancel(ctx))
		c.mu.Lock()
		c.last, c.have, c.at, c.running = answer, true, time.Now(), nil
		c.mu.Unlock()
		close(done)
		return proto.Clone(answer).(T)
	}
}

// forget drops the last answer: the next get checks again (a change this
// gateway made, which its callers expect to see).
func (c *freshCache[T]) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.have = false
}
