package gateway

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/libs/testkit"
)

// What a watch keeps is reset when messages may have been missed: after
// the connection was lost, and after its subscription fell behind and NATS
// dropped messages; not while it keeps up.
func TestWatchesResetWhenMessagesMayHaveBeenMissed(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	nc := testkit.NATSConn(t, ns)
	var seen, resets atomic.Int64
	release := make(chan struct{})
	var slow atomic.Bool
	err := watchBus(t.Context(), nc, []string{"watched.>"}, func(*nats.Msg) {
		seen.Add(1)
		if slow.Load() {
			<-release
		}
	}, func() { resets.Add(1) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10 s (seen %d, resets %d)", what, seen.Load(), resets.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	pub := testkit.NATSConn(t, ns)
	for range 100 {
		if err := pub.Publish("watched.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("100 messages seen", func() bool { return seen.Load() == 100 })
	time.Sleep(1100 * time.Millisecond) // one look at the dropped counts
	if n := resets.Load(); n != 0 {
		t.Fatalf("a watch that kept up was reset %d times", n)
	}

	if err := nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	waitFor("a reset after the connection was lost", func() bool { return resets.Load() > 0 })

	// The handler stalls; more than watchPending messages arrive.
	waitFor("the connection back", nc.IsConnected)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	before := resets.Load()
	slow.Store(true)
	for range watchPending + 1000 {
		if err := pub.Publish("watched.b", nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor("a reset after dropped messages", func() bool { return resets.Load() > before })
	close(release)
}
