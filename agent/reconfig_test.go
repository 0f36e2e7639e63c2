package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// nodeEnv is the environment the running node software was started with.
func (ta *testAgent) nodeEnv() []string {
	ta.node.mu.Lock()
	defer ta.node.mu.Unlock()
	if ta.node.cur == nil {
		return nil
	}
	ta.node.cur.mu.Lock()
	defer ta.node.cur.mu.Unlock()
	return ta.node.cur.cmd.Env
}

// TestRefreshingTheConfigurationRewritesFilesAndRestartsTheNode: a
// rotated secret and a changed file and env action reach the VM without a
// new setup: the files are written again with the new value, the node
// software restarts with the new environment on its port, and the state
// keeps the references, never a value. A template whose scripts changed
// is refused, changing nothing; so is a VM whose setup nobody recorded.
func TestRefreshingTheConfigurationRewritesFilesAndRestartsTheNode(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.secrets["db-password"] = "first-s3cret"
	acts := []*inventoryv1.SetupAction{
		{Type: "script", Script: "echo setting up"},
		{Type: "env", Name: "DB_PASSWORD", Value: "${secret:db-password}"},
		{Type: "file", Path: "conf/db.conf", Content: "password=${secret:db-password}\n", Mode: "0600"},
	}
	ta.bootstrap(t.Context(), "vm-test", &agentv1.Bootstrap{InstanceName: "alpha", SetupActions: acts})
	url := ta.node.URL()
	if url == "" || !slices.Contains(ta.nodeEnv(), "DB_PASSWORD=first-s3cret") {
		t.Fatalf("the node after setup: %q, env %v (last progress %v)", url, ta.nodeEnv(), ta.lastProgress())
	}
	refresh := func(acts ...*inventoryv1.SetupAction) *agentv1.Progress {
		t.Helper()
		ta.mu.Lock()
		ta.progress = nil
		ta.mu.Unlock()
		ta.refreshConfiguration(t.Context(), "refresh-1", &agentv1.RefreshConfiguration{SetupActions: acts})
		p := ta.lastProgress()
		if p.GetStep() != string(vocab.StepRefreshingConfiguration) || p.GetCommandId() != "vm-test" {
			t.Fatalf("the refresh's progress: %v", p)
		}
		return p
	}
	file := filepath.Join(ta.cfg.DataDir, "conf", "db.conf")

	// The secret rotated, the file and the environment changed.
	ta.mu.Lock()
	ta.secrets["db-password"] = "second-s3cret"
	ta.mu.Unlock()
	now := slices.Clone(acts)
	now[2] = &inventoryv1.SetupAction{Type: "file", Path: "conf/db.conf", Content: "password=${secret:db-password}\npool=5\n", Mode: "0600"}
	now = append(now, &inventoryv1.SetupAction{Type: "env", Name: "POOL", Value: "5"})
	p := refresh(now...)
	if p.GetStatus() != string(vocab.ProgressSucceeded) || !strings.Contains(p.GetMessage(), "restarted at "+url) {
		t.Fatalf("the refresh: %v (steps %v)", p, ta.steps(t))
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "password=second-s3cret\npool=5\n" {
		t.Fatalf("the file after the refresh: %q, %v", b, err)
	}
	if env := ta.nodeEnv(); !slices.Contains(env, "DB_PASSWORD=second-s3cret") || !slices.Contains(env, "POOL=5") || ta.node.URL() != url {
		t.Fatalf("the node after the refresh: %q, env %v", ta.node.URL(), env)
	}
	st := ta.state.Get()
	if !slices.Equal(st.Node.Env, []string{"DB_PASSWORD=${secret:db-password}", "POOL=5"}) {
		t.Fatalf("the state's environment: %v", st.Node.Env)
	}
	if raw, _ := os.ReadFile(filepath.Join(ta.cfg.StateDir, stateFileName)); strings.Contains(string(raw), "s3cret") {
		t.Fatalf("a secret value in the state file:\n%s", raw)
	}
	for _, l := range ta.logs.Next(1<<20, 1<<20) {
		if strings.Contains(l.GetText(), "second-s3cret") {
			t.Fatalf("the new value reached the logs: %q", l.GetText())
		}
	}

	// A script changed: refused, nothing written.
	changed := slices.Clone(now)
	changed[0] = &inventoryv1.SetupAction{Type: "script", Script: "echo something else"}
	changed[2] = &inventoryv1.SetupAction{Type: "file", Path: "conf/db.conf", Content: "replaced\n"}
	if p := refresh(changed...); p.GetStatus() != string(vocab.ProgressFailed) || !strings.Contains(p.GetMessage(), "scripts or packages are not those this VM's setup ran") {
		t.Fatalf("a changed script: %v", p)
	}
	if b, _ := os.ReadFile(file); string(b) != "password=second-s3cret\npool=5\n" {
		t.Fatalf("a refused refresh wrote the file: %q", b)
	}

	// A secret gone: the failure names the action, the node runs on.
	ta.mu.Lock()
	delete(ta.secrets, "db-password")
	ta.mu.Unlock()
	if p := refresh(now...); p.GetStatus() != string(vocab.ProgressFailed) || !strings.HasPrefix(p.GetMessage(), "setupActions[1]: ") || ta.node.URL() != url {
		t.Fatalf("a secret gone: %v, node %q", p, ta.node.URL())
	}

	// A setup nobody recorded (an agent from before): refused.
	if err := ta.state.Update(func(s *state) { s.Setup = nil }); err != nil {
		t.Fatal(err)
	}
	if p := refresh(now...); p.GetStatus() != string(vocab.ProgressFailed) || !strings.Contains(p.GetMessage(), "did not record it: reprovision") {
		t.Fatalf("an unrecorded setup: %v", p)
	}
}
