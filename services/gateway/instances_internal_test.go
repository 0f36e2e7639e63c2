package gateway

import (
	"testing"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
)

// A copy is served until ttl; a read that a change overtook, or that began
// before the cache was cleared, is not kept; sweeping forgets stale copies
// but remembers drops while a read may still be under way.
func TestInstanceCacheKeepsOnlyWhatNoChangeOvertook(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	c := newInstanceCache(time.Second, func() time.Time { return now })
	v := func(version int64) *inventoryv1.Instance { return &inventoryv1.Instance{Id: "i", Version: version} }

	if c.get("i") != nil {
		t.Fatal("a copy of what was never read")
	}
	c.put(v(1), c.begin())
	if got := c.get("i"); got.GetVersion() != 1 {
		t.Fatalf("got %v", got)
	}
	got := c.get("i")
	got.Version = 99
	if c.get("i").GetVersion() != 1 {
		t.Fatal("a caller changed the cached copy")
	}
	now = now.Add(time.Second)
	if c.get("i") != nil {
		t.Fatal("a copy served past its ttl")
	}

	// A read under way when the instance changed is not kept...
	mark := c.begin()
	c.drop("i")
	c.put(v(1), mark)
	if c.get("i") != nil {
		t.Fatal("kept a read that began before the change")
	}
	// ...even after a sweep, which forgets copies but not drops.
	c.sweep()
	c.put(v(1), mark)
	if c.get("i") != nil {
		t.Fatal("kept a read that began before the change, after a sweep")
	}
	// A read begun after the change is kept.
	c.put(v(2), c.begin())
	if c.get("i").GetVersion() != 2 {
		t.Fatal("a read after the change was not kept")
	}

	// Clearing forgets every copy and every read under way.
	mark = c.begin()
	c.clear()
	if c.get("i") != nil {
		t.Fatal("a copy survived clear")
	}
	c.put(&inventoryv1.Instance{Id: "j", Version: 1}, mark)
	if c.get("j") != nil {
		t.Fatal("kept a read that began before clear")
	}

	// Drops are forgotten once no read can still be under way.
	c.drop("k")
	now = now.Add(droppedFor)
	c.sweep()
	if len(c.m) != 0 {
		t.Fatalf("left after sweeping: %v", c.m)
	}

	// A negative ttl keeps nothing.
	off := newInstanceCache(-1, time.Now)
	off.put(v(1), off.begin())
	if off.get("i") != nil {
		t.Fatal("a disabled cache served a copy")
	}
}
