package stack_test

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestProfilesAreServedOnlyWhenAsked: the metrics address serves Go's
// profiles with Profiling (FLOTILLA_PPROF) and not without it.
func TestProfilesAreServedOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	for _, profiling := range []bool{true, false} {
		st := stacktest.Start(t, stack.Config{Services: []string{subjects.CA}, MetricsAddr: "127.0.0.1:0", Profiling: profiling})
		resp, err := http.Get("http://" + st.MetricsAddr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: 200, false: 404}[profiling]; resp.StatusCode != want {
			t.Errorf("profiling=%v: /debug/pprof/ answered %d, want %d", profiling, resp.StatusCode, want)
		}
		if resp, err := http.Get("http://" + st.MetricsAddr + "/metrics"); err != nil || resp.StatusCode != 200 {
			t.Errorf("profiling=%v: /metrics: %v %v", profiling, resp, err)
		} else {
			resp.Body.Close()
		}
	}
}

// TestTheAgentGatewaysMetricsAreServed: a process running an agent gateway
// serves its streams and handshakes metrics on the metrics address.
func TestTheAgentGatewaysMetricsAreServed(t *testing.T) {
	t.Parallel()
	st := stacktest.Start(t, stack.Config{Services: []string{subjects.Inventory, subjects.CA, subjects.AgentGW}, MetricsAddr: "127.0.0.1:0"})
	resp, err := http.Get("http://" + st.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"flotilla_agentgw_streams", "flotilla_agentgw_handshake_seconds_count", "flotilla_agentgw_check_seconds_count"} {
		if !strings.Contains(string(body), "\n"+name+" ") {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// TestTheFleetIsServedAsMetrics: a process running a gateway serves the
// fleet its overview counts (flotilla_fleet_*) on the metrics address,
// once the overview is built.
func TestTheFleetIsServedAsMetrics(t *testing.T) {
	t.Parallel()
	st := stacktest.Start(t, stack.Config{Services: []string{subjects.Inventory, subjects.Gateway}, MetricsAddr: "127.0.0.1:0"})
	want := []string{`flotilla_fleet_instances{state="running"} `, "flotilla_fleet_agents_expected ", "flotilla_fleet_agents_connected ",
		"flotilla_fleet_certificates_ending "}
	var body []byte
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + st.MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		missing := slices.DeleteFunc(slices.Clone(want), func(name string) bool { return strings.Contains(string(body), "\n"+name) })
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %v:\n%s", missing, body)
		}
	}
}
