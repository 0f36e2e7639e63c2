package console

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// TestATimelineLineSaysTheAgentsReport: a progress event is shown with the
// agent's report (running-setup/succeeded), any other with the step.
func TestATimelineLineSaysTheAgentsReport(t *testing.T) {
	t.Parallel()
	var e apiEvent
	e.Type, e.Data.StateDetail, e.Data.AgentProgress = "instance.progress", "running-setup", "running-setup/succeeded"
	if got := e.Detail(); got != "running-setup/succeeded" {
		t.Errorf("progress: %q", got)
	}
	e.Type = "instance.step-started"
	if got := e.Detail(); got != "running-setup" {
		t.Errorf("step-started: %q", got)
	}
}

// TestAFailedDeleteMayBeForced: the delete confirmation of an instance
// whose delete failed offers to force it; any other does not.
func TestAFailedDeleteMayBeForced(t *testing.T) {
	t.Parallel()
	c, err := New(Deps{API: http.NotFoundHandler(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*inventoryv1.Instance{
		{Id: "i-1", Name: "web-1", State: "failed", DesiredState: "deleted", StateDetail: "stopping-vm: connection refused"},
		{Id: "i-1", Name: "web-1", State: "failed", DesiredState: "provisioned", StateDetail: "launching-vm: no"},
		{Id: "i-1", Name: "web-1", State: "deprovisioned", DesiredState: "deprovisioned"},
	} {
		w := httptest.NewRecorder()
		c.render(w, httptest.NewRequest(http.MethodGet, "/instances/i-1/delete", nil), nil, http.StatusOK, "confirm", "Delete web-1?",
			confirmData{In: in, C: consequences(in, vocab.ActionDelete, nil)})
		offered := strings.Contains(w.Body.String(), `name="force" value="true"`)
		if want := in.GetDesiredState() == "deleted"; offered != want {
			t.Errorf("%s (asked: %s): force offered %v, want %v", in.GetState(), in.GetDesiredState(), offered, want)
		}
	}
}

// TestAStandardErrorLineIsMarked: the instance page shows a line written
// to standard error with its source so marked.
func TestAStandardErrorLineIsMarked(t *testing.T) {
	t.Parallel()
	c, err := New(Deps{API: http.NotFoundHandler(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	in := &inventoryv1.Instance{Id: "i-1", Name: "web-1", State: "running", DesiredState: "provisioned"}
	d := instanceData{In: in, Network: &inventoryv1.Network{}, Template: &inventoryv1.Template{}, Logs: []*inventoryv1.InstanceLogLine{
		{Source: "setup", Text: "all good"}, {Source: "setup", Text: "a warning", Stderr: true}}}
	w := httptest.NewRecorder()
	c.render(w, httptest.NewRequest(http.MethodGet, "/instances/i-1", nil), nil, http.StatusOK, "instance", "web-1", d)
	body := w.Body.String()
	if !strings.Contains(body, `<span class="src">setup</span> <span class="txt">all good</span>`) ||
		!strings.Contains(body, `<li class="stderr">`) || !strings.Contains(body, `<span class="src">setup/stderr</span> <span class="txt">a warning</span>`) {
		t.Fatalf("the log lines:\n%s", body)
	}
}

// TestTheInstancePageSaysItsTemplateMovedOn: an instance brought up with
// an older version of its template says so beside the template; one on
// the template's version, or without a VM, says nothing.
func TestTheInstancePageSaysItsTemplateMovedOn(t *testing.T) {
	t.Parallel()
	c, err := New(Deps{API: http.NotFoundHandler(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		made int64
		want string
	}{{1, `<span class="badge outdated" id="template-behind">v1, now v3: reprovision`}, {3, ""}, {0, ""}} {
		in := &inventoryv1.Instance{Id: "i-1", Name: "web-1", State: "running", DesiredState: "provisioned", TemplateVersion: tc.made}
		d := instanceData{In: in, Network: &inventoryv1.Network{}, Template: &inventoryv1.Template{Name: "small", Version: 3}}
		w := httptest.NewRecorder()
		c.render(w, httptest.NewRequest(http.MethodGet, "/instances/i-1", nil), nil, http.StatusOK, "instance", "web-1", d)
		body := w.Body.String()
		if has := strings.Contains(body, `id="template-behind"`); has != (tc.want != "") || (tc.want != "" && !strings.Contains(body, tc.want)) {
			t.Errorf("made from v%d of v3: badge shown %v, want %q", tc.made, has, tc.want)
		}
	}
}
