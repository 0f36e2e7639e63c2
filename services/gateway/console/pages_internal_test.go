package console

import "testing"

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
