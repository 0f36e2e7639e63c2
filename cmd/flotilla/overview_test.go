package main

import (
	"strings"
	"testing"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
)

// TestTheOverviewsFirstLineCountsInstances: one instance, or several.
func TestTheOverviewsFirstLineCountsInstances(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{1: "1 instance; agents: 1 of 1 connected", 2: "2 instances; agents: 1 of 2 connected"} {
		var out strings.Builder
		if err := printOverview(&out, &systemv1.Overview{Instances: n, AgentsConnected: 1, AgentsExpected: n}); err != nil {
			t.Fatal(err)
		}
		if first, _, _ := strings.Cut(out.String(), "\n"); first != want {
			t.Errorf("%d instances: %q, want %q", n, first, want)
		}
	}
}
