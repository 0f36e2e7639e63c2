package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
)

const (
	// DefaultInstanceReadTTL is how long the gateway answers GET
	// /instances/{id} from the copy it last read, unless the instance's
	// event says it changed first.
	DefaultInstanceReadTTL = time.Second
	// droppedFor is how long the gateway remembers that it dropped an
	// instance's copy: longer than any read of it still under way may
	// take, so that such a read, begun before the change, is not kept.
	droppedFor = time.Minute
)

// instanceCache keeps the instances this gateway read from the inventory
// for a moment (ttl), so that an instance read again and again (a console
// or a script polling it, many clients watching one rollout) is answered
// without a bus round trip and a database query each time. A copy is
// dropped as soon as the instance's event goes by on the bus (any change:
// an operator's, the provisioner's, an agent's), and as soon as this
// gateway has forwarded a change of it; everything is dropped when the bus
// connection was lost or the subscription fell behind, since events may
// have been missed. So a read through this gateway sees every change made
// through it, and trails one made elsewhere by the moment its event takes
// to arrive, never by more than ttl.
type instanceCache struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	// seq counts drops; a read stores its copy only if nothing dropped
	// the instance since it began (and nothing cleared everything).
	seq, floor uint64
	m          map[string]cachedInstance
}

// cachedInstance is a copy read at seq, or (in nil) a drop at seq.
type cachedInstance struct {
	in  *inventoryv1.Instance
	seq uint64
	at  time.Time
}

func newInstanceCache(ttl time.Duration, now func() time.Time) *instanceCache {
	return &instanceCache{ttl: ttl, now: now, m: map[string]cachedInstance{}}
}

// get returns a copy of instance id read less than ttl ago, or nil.
func (c *instanceCache) get(id string) *inventoryv1.Instance {
	if c.ttl <= 0 {
		return nil
	}
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if !ok || e.in == nil || c.now().Sub(e.at) >= c.ttl {
		return nil
	}
	return proto.Clone(e.in).(*inventoryv1.Instance)
}

// begin marks the start of a read from the inventory; put takes the mark.
func (c *instanceCache) begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq
}

// put keeps in, read from the inventory since mark, unless the instance
// was dropped (or everything cleared) after the read began.
func (c *instanceCache) put(in *inventoryv1.Instance, mark uint64) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if mark < c.floor {
		return
	}
	if e, ok := c.m[in.GetId()]; ok && e.seq > mark {
		return
	}
	c.m[in.GetId()] = cachedInstance{in: proto.Clone(in).(*inventoryv1.Instance), seq: mark, at: c.now()}
}

// drop forgets instance id's copy: it changed.
func (c *instanceCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.m[id] = cachedInstance{seq: c.seq, at: c.now()}
}

// clear forgets every copy, and every read under way.
func (c *instanceCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	c.floor = c.seq
	clear(c.m)
}

// sweep forgets copies past ttl and drops past droppedFor.
func (c *instanceCache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for id, e := range c.m {
		if (e.in != nil && now.Sub(e.at) >= c.ttl) || now.Sub(e.at) >= droppedFor {
			delete(c.m, id)
		}
	}
}

// watch drops the copy of each instance whose event goes by, and every
// copy when events may have been missed, until ctx ends.
func (c *instanceCache) watch(ctx context.Context, nc *nats.Conn) error {
	if c.ttl <= 0 {
		return nil
	}
	return watchBus(ctx, nc, endpoints.InstanceWatches(), func(m *nats.Msg) {
		if entity, id, _, ok := subjects.ParseEvent(m.Subject); ok && entity == subjects.NounInstance {
			c.drop(id)
		}
	}, c.clear, c.sweep)
}
