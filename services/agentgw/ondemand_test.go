package agentgw

import "testing"

// TestOnDemandLeavesNoWorkUnattended walks the worker's hand-overs one
// step at a time: work queued while a worker is finishing is taken by that
// worker, or by a new one, never by both and never by none.
func TestOnDemandLeavesNoWorkUnattended(t *testing.T) {
	t.Parallel()
	var o onDemand
	spawned := 0
	spawn := func() { spawned++ }
	nothing := func() bool { return false }
	something := func() bool { return true }

	o.start(spawn)
	o.start(spawn) // a worker runs: no second
	if spawned != 1 || o.idle() {
		t.Fatalf("spawned %d, idle %v; want one worker running", spawned, o.idle())
	}
	if o.stop(nothing) || !o.idle() {
		t.Fatal("a worker with nothing waiting went on, or was not counted out")
	}
	o.start(spawn)
	if spawned != 2 {
		t.Fatalf("spawned %d after the worker stopped, want 2", spawned)
	}

	// Work queued as the worker looks for more, before it stops: the
	// start finds it running; stopping, it sees the work and goes on.
	o.start(spawn)
	if spawned != 2 {
		t.Fatal("a second worker was started while one ran")
	}
	if !o.stop(something) || o.idle() {
		t.Fatal("the worker left work queued while it ran unattended")
	}

	// Work queued just after the worker said it stops: the start makes a
	// new worker, and the old one, seeing the work, leaves it to that one.
	if o.stop(func() bool { o.start(spawn); return true }) {
		t.Fatal("both the old and the new worker go on")
	}
	if spawned != 3 || o.idle() {
		t.Fatalf("spawned %d, idle %v; want the new worker running", spawned, o.idle())
	}
}
