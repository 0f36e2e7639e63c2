package testkit

import (
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
