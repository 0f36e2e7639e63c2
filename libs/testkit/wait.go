package testkit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// WaitFor polls ok every few milliseconds until it holds, failing the test
// (naming what it waited for) if it does not within d.
func WaitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
	}
}

// Calls is the tally of KeepCalling's calls.
type Calls struct {
	tb           testing.TB
	done         chan struct{}
	wg           sync.WaitGroup
	sent, failed atomic.Int64
	first        atomic.Pointer[error]
	halt         sync.Once
}

// KeepCalling runs call on workers goroutines, each again as soon as it
// returns, until Stop or the end of the test: load that is in flight
// whenever a fault strikes.
func KeepCalling(tb testing.TB, workers int, call func() error) *Calls {
	c := &Calls{tb: tb, done: make(chan struct{})}
	for range workers {
		c.wg.Go(func() {
			for {
				select {
				case <-c.done:
					return
				default:
				}
				c.sent.Add(1)
				if err := call(); err != nil {
					c.failed.Add(1)
					c.first.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	tb.Cleanup(c.end)
	return c
}

// end stops the calls and waits for those running.
func (c *Calls) end() {
	c.halt.Do(func() { close(c.done) })
	c.wg.Wait()
}

// Stop ends the calls, waits for those running, and fails the test if any
// failed, naming how many, the first error and what they ran across.
func (c *Calls) Stop(across string) {
	c.tb.Helper()
	c.end()
	if n := c.failed.Load(); n > 0 {
		c.tb.Fatalf("%d of %d calls failed across %s; the first: %v", n, c.sent.Load(), across, *c.first.Load())
	}
}
