package agent

import (
	"fmt"
	"testing"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
)

func refreshCmd(id string) *agentv1.Command {
	return &agentv1.Command{Id: id, Action: &agentv1.Command_RefreshConfiguration{RefreshConfiguration: &agentv1.RefreshConfiguration{}}}
}

// next takes the next command, which must be there already.
func next(t *testing.T, q *commandQueue) *agentv1.Command {
	t.Helper()
	select {
	case <-q.notify:
	default:
	}
	q.mu.Lock()
	n := len(q.items)
	q.mu.Unlock()
	if n == 0 {
		t.Fatal("no command is waiting")
	}
	c, err := q.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A command delivered again — waiting, running or finished — runs once; a
// bootstrap delivered again after it finished runs again, to report its
// outcome once more.
func TestCommandDeliveredAgainRunsOnce(t *testing.T) {
	t.Parallel()
	q := newCommandQueue()
	if !q.Push(refreshCmd("refresh-1")) {
		t.Fatal("first delivery refused")
	}
	if q.Push(refreshCmd("refresh-1")) {
		t.Error("a waiting command was queued again")
	}
	if got := next(t, q).GetId(); got != "refresh-1" {
		t.Fatalf("next = %s", got)
	}
	if q.Push(refreshCmd("refresh-1")) {
		t.Error("a running command was queued again")
	}
	boot := &agentv1.Command{Id: "vm-1", Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{}}}
	if !q.Push(boot) {
		t.Fatal("bootstrap refused")
	}
	if got := next(t, q).GetId(); got != "vm-1" { // refresh-1 finished
		t.Fatalf("next = %s", got)
	}
	if q.Push(refreshCmd("refresh-1")) {
		t.Error("a finished command was queued again")
	}
	if !q.Push(refreshCmd("refresh-2")) {
		t.Fatal("refresh-2 refused")
	}
	next(t, q) // vm-1 finished
	if !q.Push(boot) {
		t.Error("a finished bootstrap delivered again was refused: its sender would not learn its outcome")
	}
}

// The queue remembers the last finishedKept commands, no more.
func TestCommandQueueForgetsTheOldestFinished(t *testing.T) {
	t.Parallel()
	q := newCommandQueue()
	for i := range finishedKept + 1 {
		if !q.Push(refreshCmd(fmt.Sprintf("c%d", i))) {
			t.Fatalf("c%d refused", i)
		}
		next(t, q)
	}
	q.Push(refreshCmd("last"))
	next(t, q) // c<finishedKept> finished: c0 falls out
	if n := len(q.finished); n != finishedKept {
		t.Fatalf("%d finished ids kept, want %d", n, finishedKept)
	}
	if !q.Push(refreshCmd("c0")) {
		t.Error("c0, beyond the remembered ones, was refused")
	}
	if q.Push(refreshCmd("c1")) {
		t.Error("c1, still remembered, was queued again")
	}
}
