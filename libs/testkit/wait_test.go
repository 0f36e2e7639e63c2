package testkit_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
)

// fatalTB records a Fatalf and stops the caller, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

type stopped struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(stopped{})
}

// TestWaitForWaitsThenGivesUpNamingWhat: WaitFor returns once the
// condition holds, and otherwise fails after the time given, saying what it
// waited for.
func TestWaitForWaitsThenGivesUpNamingWhat(t *testing.T) {
	t.Parallel()
	calls := 0
	testkit.WaitFor(t, time.Second, "the third call", func() bool { calls++; return calls == 3 })
	if calls != 3 {
		t.Fatalf("returned after %d calls, want 3", calls)
	}

	f := &fatalTB{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if r := recover(); r != nil && r != (stopped{}) {
				panic(r)
			}
		}()
		testkit.WaitFor(f, 50*time.Millisecond, "what never comes", func() bool { return false })
	}()
	if !strings.Contains(f.msg, "what never comes") || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("after %v: %q; want a failure naming what it waited for, after 50ms", time.Since(start), f.msg)
	}
}
