package app

import "testing"

// A rollout's reason too long is cut in its middle: its start (what
// failed) and its end (what became of it) stay, on rune boundaries.
func TestARolloutReasonKeepsItsStartAndEnd(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"version 0.1.1: the binary has SHA-256 abcdef: not installed; version 0.0.9 runs on", 40, "version 0.1.1: the b…ersion 0.0.9 runs on"},
		{"ééééééééééé", 10, "éé…éé"},
	} {
		if got := cutMiddle(c.s, c.n); got != c.want {
			t.Errorf("cutMiddle(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}
