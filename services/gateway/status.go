package gateway

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
)

// statusFresh is how long a status answer is served again: load balancers
// and monitors ask every second or two each, and one round of pings serves
// them all.
const statusFresh = time.Second

// statusCache keeps the last status for statusFresh, and lets one check run
// at a time: requests that arrive while it runs wait for its answer.
type statusCache struct {
	mu      sync.Mutex
	last    *systemv1.Status
	at      time.Time
	running chan struct{} // closed when the check under way is done
}

func (c *statusCache) get(ctx context.Context, check func(context.Context) *systemv1.Status) *systemv1.Status {
	for {
		c.mu.Lock()
		if c.last != nil && time.Since(c.at) < statusFresh {
			st := c.last
			c.mu.Unlock()
			return proto.Clone(st).(*systemv1.Status)
		}
		if wait := c.running; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return check(ctx) // this caller gives up waiting: check for itself
			}
		}
		done := make(chan struct{})
		c.running = done
		c.mu.Unlock()
		// The check outlives a caller that goes away: others may wait on it.
		st := check(context.WithoutCancel(ctx))
		c.mu.Lock()
		c.last, c.at, c.running = st, time.Now(), nil
		c.mu.Unlock()
		close(done)
		return proto.Clone(st).(*systemv1.Status)
	}
}
