package agentsim

import (
	"context"
	"testing"
	"time"
)

// With Opening set, at most that many agents open their stream at once: a
// further one waits until a turn ends (ending it twice frees one turn), or
// gives up with its context; without it, nobody waits.
func TestOpeningBoundsTheStreamsOpeningAtOnce(t *testing.T) {
	t.Parallel()
	f := newFleet(Config{Opening: 2})
	first, err := f.takeTurn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.takeTurn(t.Context()); err != nil {
		t.Fatal(err)
	}
	waiting, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := f.takeTurn(waiting); err == nil {
		t.Fatal("a third agent opened while two held their turns")
	}
	first()
	first()
	if _, err := f.takeTurn(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(f.opening) != 2 {
		t.Fatalf("%d turns held, want 2 (one ended twice frees one)", len(f.opening))
	}
	unbounded := newFleet(Config{})
	for range 100 {
		if _, err := unbounded.takeTurn(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}
