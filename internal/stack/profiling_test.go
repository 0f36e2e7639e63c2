package stack_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

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
