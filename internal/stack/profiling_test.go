package stack_test

import (
	"net/http"
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
