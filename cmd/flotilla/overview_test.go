package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
)

// TestTheOverviewsFirstLineCountsInstances: one instance, or several.
func TestTheOverviewsFirstLineCountsInstances(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{1: "1 instance; agents: 1 of 1 connected", 2: "2 instances; agents: 1 of 2 connected"} {
		var out strings.Builder
		if err := printOverview(&out, &systemv1.Overview{Instances: n, AgentsConnected: 1, AgentsExpected: n}, "0.1.1"); err != nil {
			t.Fatal(err)
		}
		if first, _, _ := strings.Cut(out.String(), "\n"); first != want {
			t.Errorf("%d instances: %q, want %q", n, first, want)
		}
	}
}

// TestTheOverviewNamesCertificatesEndingSoon: the instances whose node
// certificate ends soon are listed with when, soonest first, and how many
// more there are.
func TestTheOverviewNamesCertificatesEndingSoon(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ov := &systemv1.Overview{Instances: 3, CertificatesEndingCount: 3, CertificatesEnding: []*systemv1.CertificateEnding{
		{Name: "db-1", NotAfter: timestamppb.New(now.Add(-time.Hour))},
		{Name: "web-2", NotAfter: timestamppb.New(now.Add(5*24*time.Hour + time.Hour))},
	}}
	var out strings.Builder
	if err := printOverview(&out, ov, "0.1.1"); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"CERTIFICATE ENDS", "1h ago (" + now.Add(-time.Hour).UTC().Format("2006-01-02 15:04 UTC") + ")", "db-1", "in 5d (", "web-2", "(and 1 more)"} {
		if !strings.Contains(text, want) {
			t.Errorf("the overview lacks %q:\n%s", want, text)
		}
	}
	if strings.Index(text, "db-1") > strings.Index(text, "web-2") {
		t.Errorf("not soonest first:\n%s", text)
	}
}

// TestTheOverviewCountsAgentsAtAnotherVersion: connected agents at another
// version than the manager's are counted by version, with the command
// that upgrades them; all at the manager's, nothing is said of them.
func TestTheOverviewCountsAgentsAtAnotherVersion(t *testing.T) {
	t.Parallel()
	ov := &systemv1.Overview{Instances: 3, AgentsConnected: 3, AgentsExpected: 3, AgentVersions: map[string]int64{"0.1.1": 1, "0.0.9": 2}}
	var out strings.Builder
	if err := printOverview(&out, ov, "0.1.1"); err != nil {
		t.Fatal(err)
	}
	want := "AGENT VERSION          CONNECTED\n0.0.9                  2\n0.1.1 (the manager's)  1\n" +
		"(2 at another version than the manager's 0.1.1: flotilla instances upgrade-agent --all)\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("the overview:\n%s\nwant in it:\n%s", &out, want)
	}
	out.Reset()
	ov.AgentVersions = map[string]int64{"0.1.1": 3}
	if err := printOverview(&out, ov, "0.1.1"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "AGENT VERSION") {
		t.Errorf("every agent at the manager's version, the overview says:\n%s", &out)
	}
}

// TestTheOverviewListsTheRolloutsOpen: each open rollout by name and
// state, its instances counted by state, and what it says (a stopped one:
// why); none open, nothing is said of them.
func TestTheOverviewListsTheRolloutsOpen(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if err := printOpenRollouts(&out, nil); err != nil || out.Len() != 0 {
		t.Fatalf("no rollout open: %q, %v", &out, err)
	}
	open := []*inventoryv1.Rollout{{Name: "refresh-configuration-20261205-010000-ab12", State: "stopped", Message: "stopped: refresh-configuration failed on web-2",
		Instances: []*inventoryv1.RolloutInstance{{State: "succeeded"}, {State: "failed"}, {State: "pending"}, {State: "pending"}}}}
	if err := printOpenRollouts(&out, open); err != nil {
		t.Fatal(err)
	}
	want := "\nROLLOUT                                     STATE    INSTANCES                         MESSAGE\n" +
		"refresh-configuration-20261205-010000-ab12  stopped  1 succeeded, 1 failed, 2 pending  stopped: refresh-configuration failed on web-2\n"
	if out.String() != want {
		t.Errorf("the rollouts open:\n%q\nwant\n%q", out.String(), want)
	}
}
