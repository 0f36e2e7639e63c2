package vocab_test

import (
	"testing"

	"flotilla.dev/flotilla/api/vocab"
)

func TestActors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		a    vocab.Actor
		kind vocab.ActorKind
		name string
	}{
		{vocab.User("ada"), vocab.ActorUser, "ada"},
		{vocab.System("provisioner"), vocab.ActorSystem, "provisioner"},
		{vocab.Agent("0190c3e1-aaaa"), vocab.ActorAgent, "0190c3e1-aaaa"},
	} {
		if c.a.Kind() != c.kind || c.a.Name() != c.name {
			t.Errorf("%s: kind %q name %q", c.a, c.a.Kind(), c.a.Name())
		}
		if got, err := vocab.ParseActor(string(c.a)); err != nil || got != c.a {
			t.Errorf("ParseActor(%s) = %s, %v", c.a, got, err)
		}
	}
	for _, bad := range []string{"", "anonymous", "robot:x", "user:", ":x"} {
		if _, err := vocab.ParseActor(bad); err == nil {
			t.Errorf("ParseActor(%q) accepted", bad)
		}
	}
}

func TestWordsOfTheLifecycle(t *testing.T) {
	t.Parallel()
	if vocab.ActionReprovision.Requested() != "reprovision-requested" || vocab.ActionDelete.WorkType() != "provision.delete" {
		t.Error("action verbs")
	}
	if vocab.AgentProgress(vocab.StepDone, vocab.ProgressSucceeded) != "done/succeeded" {
		t.Error("agent progress")
	}
	for _, s := range vocab.States {
		if !s.Valid() {
			t.Errorf("%s is not valid", s)
		}
		rest, busy := s.AtRest(), s.Transitional()
		if rest && busy {
			t.Errorf("%s is both at rest and in transition", s)
		}
	}
	if vocab.State("paused").Valid() || !vocab.ActionProvision.Valid() || vocab.Action("reboot").Valid() {
		t.Error("validity")
	}
	if got := vocab.Clear(vocab.ClearVMID, vocab.ClearAgent); len(got) != 2 || got[0] != "vm_id" || got[1] != "agent" {
		t.Errorf("Clear = %v", got)
	}
}

func TestTemplateBehind(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		made, now int64
		want      string
	}{{0, 3, ""}, {3, 3, ""}, {4, 3, ""}, {2, 3, "v2, now v3"}} {
		if got := vocab.TemplateBehind(c.made, c.now); got != c.want {
			t.Errorf("TemplateBehind(%d, %d) = %q, want %q", c.made, c.now, got, c.want)
		}
	}
}

func TestLogSource(t *testing.T) {
	t.Parallel()
	if got := vocab.LogSource("setup", false); got != "setup" {
		t.Errorf("stdout: %q", got)
	}
	if got := vocab.LogSource("node", true); got != "node/stderr" {
		t.Errorf("stderr: %q", got)
	}
}
