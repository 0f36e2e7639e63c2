package gateway_test

import (
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestInstanceReadsComeFromACopyEventsKeepCurrent: an instance read again
// through a gateway is answered from its copy, without asking the
// inventory; a change through that gateway shows at the next read there,
// and a change through another gateway shows within moments, carried by
// the instance's event (the copies here are trusted for an hour, so only
// the event can refresh them); a deleted instance reads 404.
func TestInstanceReadsComeFromACopyEventsKeepCurrent(t *testing.T) {
	t.Parallel()
	hour := func(c *stack.Config) { c.InstanceReadTTL = time.Hour }
	e := newEnv(t, envOptions{only: []string{}, config: hour})
	otherCfg := stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus)
	hour(&otherCfg)
	other := stacktest.Start(t, otherCfg)
	asked := func() int { return e.served("inventory GetInstanceRequest") }
	in := e.instance("copied", e.template("copied"), e.network("copied"))
	path := "/api/v1/instances/" + in["id"].(string)

	// The instance's created event may go by after the first read (and
	// drop its copy): at most two of twenty reads ask the inventory.
	before := asked()
	for range 20 {
		if got := e.must(200, "GET", path, nil); got["version"] != "1" {
			t.Fatalf("read %v, want version 1", got["version"])
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := asked() - before; n > 2 {
		t.Fatalf("20 reads of one instance asked the inventory %d times, want at most 2", n)
	}

	// A change through this gateway: the very next read shows it.
	e.must(200, "PATCH", path, reply{"version": "1", "name": "copied-2"})
	if got := e.must(200, "GET", path, nil); got["name"] != "copied-2" || got["version"] != "2" {
		t.Fatalf("read after a change through the same gateway: %v v%v", got["name"], got["version"])
	}

	// A change through another gateway: its event reaches this one.
	mine := e.base
	e.base = "http://" + other.HTTPAddr
	e.must(200, "PATCH", path, reply{"version": "2", "name": "copied-3"})
	e.base = mine
	deadline := time.Now().Add(5 * time.Second)
	for e.must(200, "GET", path, nil)["name"] != "copied-3" {
		if time.Now().After(deadline) {
			t.Fatal("a change through another gateway did not show here within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Deleted through the other gateway: 404 here too.
	e.base = "http://" + other.HTTPAddr
	e.must(200, "GET", path, nil) // the other gateway keeps a copy
	e.must(200, "DELETE", path, nil)
	if code := e.call("GET", path, nil, nil, ""); code != 404 {
		t.Fatalf("read of a deleted instance through the gateway that deleted it: %d", code)
	}
	e.base = mine
	deadline = time.Now().Add(5 * time.Second)
	for e.call("GET", path, nil, nil, "") != 404 {
		if time.Now().After(deadline) {
			t.Fatal("an instance deleted through another gateway still reads here after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
