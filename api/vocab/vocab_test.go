package vocab_test

import (
	"slices"
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

// TestWhatAForcedDeleteLeftReadsBack: the steps named in a forced delete's
// detail are read back from it, the reasons' own words notwithstanding.
func TestWhatAForcedDeleteLeftReadsBack(t *testing.T) {
	t.Parallel()
	detail := vocab.LeftInCloud([]vocab.Left{
		{What: "vm i-0ab", Step: vocab.StepStoppingVM, Why: "connection refused (deleting-disk: no)"},
		{What: "disk vol-1", Step: vocab.StepDeletingDisk, Why: "operation not permitted"},
	})
	want := "forced: left in the cloud: vm i-0ab (stopping-vm: connection refused (deleting-disk: no)); disk vol-1 (deleting-disk: operation not permitted)"
	if detail != want {
		t.Errorf("LeftInCloud = %q, want %q", detail, want)
	}
	if got := vocab.StepsLeft(detail); !slices.Equal(got, vocab.DeleteSteps) {
		t.Errorf("StepsLeft = %v", got)
	}
	for want, only := range map[vocab.Step]string{
		vocab.StepDeletingDisk: vocab.LeftInCloud([]vocab.Left{{What: "disk vol-1", Step: vocab.StepDeletingDisk, Why: "gone (stopping-vm: no)"}}),
		vocab.StepStoppingVM:   vocab.LeftInCloud([]vocab.Left{{What: "vm i-1", Step: vocab.StepStoppingVM, Why: "refused; disk vol-1 (deleting-disk: no"}}),
	} {
		if got := vocab.StepsLeft(only); !slices.Equal(got, []vocab.Step{want}) {
			t.Errorf("StepsLeft(%q) = %v, want %v", only, got, want)
		}
	}
	for _, d := range []string{vocab.LeftInCloud(nil), "stopping-vm: connection refused", "deleted (stopping-vm: x)"} {
		if got := vocab.StepsLeft(d); got != nil {
			t.Errorf("StepsLeft(%q) = %v, want none", d, got)
		}
	}
}

// TestAFailureReadsBack: a failed instance's stateDetail splits into the
// step and the reason it was made of, the reason keeping its own colons;
// a detail without a step says so.
func TestAFailureReadsBack(t *testing.T) {
	t.Parallel()
	detail := vocab.Failure(vocab.StepRunningSetup, "setupActions[1]: script exited with code 3")
	if step, reason, ok := vocab.SplitFailure(detail); !ok || step != vocab.StepRunningSetup || reason != "setupActions[1]: script exited with code 3" {
		t.Errorf("SplitFailure(%q) = %q, %q, %v", detail, step, reason, ok)
	}
	if _, _, ok := vocab.SplitFailure("broken"); ok {
		t.Error("a detail without a step split")
	}
}
