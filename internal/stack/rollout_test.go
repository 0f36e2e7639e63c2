package stack_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
)

// TestARolloutRefreshesAGroupAtATimeAndStopsAtAFailure: three running
// local instances get a rotated fleet secret through one rollout, one at a
// time (each asked only once the one before it succeeded). A rollout
// whose second instance fails stops there, leaving the third pending, and
// another rollout of the same action is refused while it is open; resumed,
// it goes on with the third. A rollout cancelled after a failure leaves
// the rest unasked.
func TestARolloutRefreshesAGroupAtATimeAndStopsAtAFailure(t *testing.T) {
	t.Parallel()
	agent, err := agentBinary()
	must(t, err)
	lab := newLocalLab(t, stack.Config{AgentCommand: []string{agent}})
	ctx := t.Context()
	actions := []*inventoryv1.SetupAction{
		{Type: "script", Script: "echo setting up"},
		{Type: "file", Path: "conf/app.env", Content: "TOKEN=${secret:registry-token}\n", Mode: "0600"},
	}
	var tpls []*inventoryv1.Template
	for _, name := range []string{"web", "db"} {
		tpl, err := rpc.Call(ctx, lab.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
			Name: name, Provider: "local", DataDiskGb: 1, SetupActions: actions}}, lab.admin)
		must(t, err)
		tpls = append(tpls, tpl)
	}
	token := func(v string) {
		t.Helper()
		_, err := rpc.Call(ctx, lab.gateway, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry-token", Value: v,
			TemplateIds: []string{tpls[0].GetId(), tpls[1].GetId()}}, lab.admin)
		must(t, err)
	}
	token("v1")
	// a and c of template web, b of template db.
	var ids []string
	for i, name := range []string{"a", "b", "c"} {
		in, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
			Name: name, Kind: "design", TemplateId: tpls[i%2].GetId(), NetworkId: lab.network.GetId()}}, lab.admin)
		must(t, err)
		lab.act(in.GetId(), vocab.ActionProvision)
		ids = append(ids, in.GetId())
	}
	files := map[string]string{}
	for i, id := range ids {
		in := lab.until(id, "running", inState(vocab.StateRunning))
		files[[]string{"a", "b", "c"}[i]] = filepath.Join(lab.root, "disks", in.GetDataDisk().GetId(), "conf", "app.env")
	}
	tokenIn := func(name string) string {
		b, err := os.ReadFile(files[name])
		must(t, err)
		return strings.TrimSpace(string(b))
	}
	start := func(r *inventoryv1.CreateRolloutRequest) *inventoryv1.Rollout {
		t.Helper()
		ro, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutStart, r, lab.admin)
		must(t, err)
		return ro
	}
	until := func(ro *inventoryv1.Rollout, state vocab.RolloutState) *inventoryv1.Rollout {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutGet, &inventoryv1.GetRolloutRequest{Id: ro.GetId()}, lab.admin)
			must(t, err)
			if vocab.RolloutState(got.GetState()) == state {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("rollout %s is %s (%s), never %s: %v", got.GetName(), got.GetState(), got.GetMessage(), state, got.GetInstances())
			}
		}
	}
	states := func(ro *inventoryv1.Rollout) string {
		var out []string
		for _, in := range ro.GetInstances() {
			out = append(out, in.GetInstanceName()+"="+in.GetState())
		}
		return strings.Join(out, " ")
	}

	// Every running instance, one at a time: each asked after the one
	// before it ended.
	token("v2")
	ro := start(&inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), All: true})
	if ro.GetParallel() != 1 || ro.GetTimeoutSeconds() != 600 || !strings.HasPrefix(ro.GetName(), "refresh-configuration-") || ro.GetCreator() != "user:admin" {
		t.Errorf("a new rollout: %v", ro)
	}
	ro = until(ro, vocab.RolloutDone)
	if got := states(ro); got != "a=succeeded b=succeeded c=succeeded" || ro.GetMessage() != "done: 3 succeeded" {
		t.Fatalf("the rollout done: %s (%s)", got, ro.GetMessage())
	}
	for i := 1; i < 3; i++ {
		prev, cur := ro.GetInstances()[i-1], ro.GetInstances()[i]
		if cur.GetAskTime().AsTime().Before(prev.GetEndTime().AsTime()) {
			t.Errorf("%s asked at %v, before %s ended at %v", cur.GetInstanceName(), cur.GetAskTime().AsTime(), prev.GetInstanceName(), prev.GetEndTime().AsTime())
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		if got := tokenIn(name); got != "TOKEN=v2" {
			t.Errorf("%s after the rollout: %q", name, got)
		}
	}

	// Template db gains a script: b's agent refuses, the rollout stops
	// with c pending.
	tpls[1].SetupActions = append(actions, &inventoryv1.SetupAction{Type: "script", Script: "echo new"})
	_, err = rpc.Call(ctx, lab.gateway, endpoints.TemplateUpdate, &inventoryv1.UpdateTemplateRequest{Template: tpls[1],
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"setupActions"}}}, lab.admin)
	must(t, err)
	token("v3")
	ro = until(start(&inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), InstanceIds: ids}), vocab.RolloutStopped)
	if got := states(ro); got != "a=succeeded b=failed c=pending" || !strings.Contains(ro.GetInstances()[1].GetMessage(), "not those this VM's setup ran") ||
		!strings.Contains(ro.GetMessage(), "refresh-configuration failed on b") {
		t.Fatalf("the rollout stopped: %s (%s; b: %s)", got, ro.GetMessage(), ro.GetInstances()[1].GetMessage())
	}
	if got := tokenIn("c"); got != "TOKEN=v2" {
		t.Errorf("c, not asked: %q", got)
	}
	resumed, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutResume, &inventoryv1.RolloutActionRequest{Id: ro.GetId(), Version: ro.GetVersion()}, lab.admin)
	must(t, err)
	if resumed.GetMessage() != "resumed by user:admin" {
		t.Errorf("resumed: %q", resumed.GetMessage())
	}
	ro = until(ro, vocab.RolloutDone)
	if got := states(ro); got != "a=succeeded b=failed c=succeeded" || ro.GetMessage() != "done: 2 succeeded, 1 failed" {
		t.Fatalf("the rollout resumed: %s (%s)", got, ro.GetMessage())
	}
	if got := tokenIn("c"); got != "TOKEN=v3" {
		t.Errorf("c, after the resume: %q", got)
	}
	_, err = rpc.Call(ctx, lab.gateway, endpoints.RolloutPause, &inventoryv1.RolloutActionRequest{Id: ro.GetId()}, lab.admin)
	if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), "is done: it cannot be paused") {
		t.Errorf("a done rollout paused: %v", err)
	}

	// Stopped at b; a new rollout takes its place, cancelling it (a is not
	// asked by it).
	stopped := until(start(&inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), InstanceIds: []string{ids[1], ids[0]}}), vocab.RolloutStopped)
	next := until(start(&inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), InstanceIds: []string{ids[0]}}), vocab.RolloutDone)
	if stopped = until(stopped, vocab.RolloutCancelled); states(stopped) != "b=failed a=cancelled" || stopped.GetMessage() != "cancelled: rollout "+next.GetName()+" took its place" {
		t.Fatalf("a stopped rollout another took the place of: %s (%s)", states(stopped), stopped.GetMessage())
	}

	// a's agent stops: the rollout waits on a. Another rollout is refused
	// while it runs, and while it is paused; cancelled, c is not asked, and
	// a's refresh, when its agent goes on, is recorded all the same.
	pid, err := os.ReadFile(filepath.Join(lab.root, "vms", lab.get(ids[0]).GetVmId(), "agent.pid"))
	must(t, err)
	agentPID, err := strconv.Atoi(strings.TrimSpace(string(pid)))
	must(t, err)
	t.Cleanup(func() { _ = syscall.Kill(agentPID, syscall.SIGCONT) })
	// startWaitingOnA stops a's agent and starts a rollout of a then c,
	// which waits on a: its command unread.
	startWaitingOnA := func() *inventoryv1.Rollout {
		t.Helper()
		must(t, syscall.Kill(agentPID, syscall.SIGSTOP))
		ro := start(&inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), InstanceIds: []string{ids[0], ids[2]}})
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			got, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutGet, &inventoryv1.GetRolloutRequest{Id: ro.GetId()}, lab.admin)
			must(t, err)
			if states(got) == "a=asked c=pending" {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("a never asked: %s", states(got))
			}
		}
	}
	ro = startWaitingOnA()
	refused := func(state string) {
		t.Helper()
		_, err = rpc.Call(ctx, lab.gateway, endpoints.RolloutStart, &inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), All: true}, lab.admin)
		if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), ro.GetName()+" (refresh-configuration) is "+state+": one refresh-configuration rollout at a time") {
			t.Errorf("a second rollout while one is %s: %v", state, err)
		}
	}
	refused("running")
	paused, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutPause, &inventoryv1.RolloutActionRequest{Id: ro.GetId()}, lab.admin)
	must(t, err)
	if paused.GetState() != "paused" || paused.GetMessage() != "paused by user:admin" {
		t.Errorf("paused: %s (%s)", paused.GetState(), paused.GetMessage())
	}
	refused("paused")
	_, err = rpc.Call(ctx, lab.gateway, endpoints.RolloutCancel, &inventoryv1.RolloutActionRequest{Id: ro.GetId()}, lab.admin)
	must(t, err)
	must(t, syscall.Kill(agentPID, syscall.SIGCONT))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got := until(ro, vocab.RolloutCancelled)
		if states(got) == "a=succeeded c=cancelled" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cancelled rollout's instance asked never recorded: %s", states(got))
		}
	}
	if got := tokenIn("c"); got != "TOKEN=v3" {
		t.Errorf("c, not asked by the cancelled rollout: %q", got)
	}

	// Paused while a's refresh waits, that refresh fails (the fleet secret
	// it reads is gone): the rollout is stopped, so a resume knows of it.
	ro = startWaitingOnA()
	_, err = rpc.Call(ctx, lab.gateway, endpoints.RolloutPause, &inventoryv1.RolloutActionRequest{Id: ro.GetId()}, lab.admin)
	must(t, err)
	_, err = rpc.Call(ctx, lab.gateway, endpoints.FleetSecretDelete, &secretsv1.DeleteFleetSecretRequest{Name: "registry-token"}, lab.admin)
	must(t, err)
	must(t, syscall.Kill(agentPID, syscall.SIGCONT))
	if ro = until(ro, vocab.RolloutStopped); states(ro) != "a=failed c=pending" || !strings.Contains(ro.GetMessage(), "failed on a") {
		t.Fatalf("a failure while paused: %s (%s)", states(ro), ro.GetMessage())
	}

	// Bad requests name their field.
	for _, c := range []struct {
		r    *inventoryv1.CreateRolloutRequest
		want string
	}{
		{&inventoryv1.CreateRolloutRequest{Action: "reboot", All: true}, `action: "reboot" is not a rollout action`},
		{&inventoryv1.CreateRolloutRequest{Action: "refresh-configuration"}, "instanceIds: choose the instances one way"},
		{&inventoryv1.CreateRolloutRequest{Action: "refresh-configuration", All: true, TemplateIds: []string{tpls[0].GetId()}}, "instanceIds: choose the instances one way"},
		{&inventoryv1.CreateRolloutRequest{Action: "refresh-configuration", InstanceIds: []string{ids[0], ids[0]}}, "instanceIds[1]: names instance"},
		{&inventoryv1.CreateRolloutRequest{Action: "refresh-configuration", All: true, Parallel: 101}, "parallel: 101 is not a group size"},
		{&inventoryv1.CreateRolloutRequest{Action: "refresh-configuration", All: true, TimeoutSeconds: 5}, "timeoutSeconds: 5 is not a timeout"},
		{&inventoryv1.CreateRolloutRequest{Action: "upgrade-agent", All: true}, "this manager has no agent binary to upgrade agents to"},
	} {
		_, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutStart, c.r, lab.admin)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.r, err, c.want)
		}
	}
	list, err := rpc.Call(ctx, lab.gateway, endpoints.RolloutList, &inventoryv1.ListRolloutsRequest{}, lab.admin)
	must(t, err)
	if n := len(list.GetRollouts()); n != 6 {
		t.Errorf("%d rollouts listed, want 6", n)
	}
}

// TestARolloutGoesOnWhenItsProvisionerDies: a rollout's provisioner (a
// process of its own) is killed with SIGKILL while an instance it asked is
// still working on it (its agent stopped with SIGSTOP). Another provisioner
// started after it takes the rollout over from what the inventory says: it
// asks a again (p1 may have died before sending the command), and when the
// agent goes on and reports, it records the instance and asks the next
// one, and the rollout ends done.
func TestARolloutGoesOnWhenItsProvisionerDies(t *testing.T) {
	t.Parallel()
	lab := newProvisionerLab(t)
	ctx, root, gateway, admin := t.Context(), lab.root, lab.gateway, lab.admin
	p1 := lab.start("p1", "")
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "none"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "web", Provider: "local", DataDiskGb: 1,
		SetupActions: []*inventoryv1.SetupAction{{Type: "file", Path: "app.conf", Content: "x"}}}}, admin)
	must(t, err)
	get := func(id string) *inventoryv1.Instance {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
		must(t, err)
		return in
	}
	var ids []string
	for _, name := range []string{"a", "b"} {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
			Name: name, Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
		must(t, err)
		_, err = rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: in.GetId(), Action: string(vocab.ActionProvision)}, admin)
		must(t, err)
		ids = append(ids, in.GetId())
	}
	var agentPID int
	for _, id := range ids {
		for deadline := time.Now().Add(90 * time.Second); vocab.State(get(id).GetState()) != vocab.StateRunning; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("instance %s never running: %v", id, get(id))
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(root, "vms", get(ids[0]).GetVmId(), "agent.pid"))
	must(t, err)
	agentPID, err = strconv.Atoi(strings.TrimSpace(string(b)))
	must(t, err)

	// a's agent stops (its stream stays open): the refresh asked of it
	// waits, unread.
	must(t, syscall.Kill(agentPID, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(agentPID, syscall.SIGCONT) })
	ro, err := rpc.Call(ctx, gateway, endpoints.RolloutStart, &inventoryv1.CreateRolloutRequest{Action: string(vocab.RolloutRefreshConfiguration), InstanceIds: ids}, admin)
	must(t, err)
	read := func() *inventoryv1.Rollout {
		got, err := rpc.Call(ctx, gateway, endpoints.RolloutGet, &inventoryv1.GetRolloutRequest{Id: ro.GetId()}, admin)
		must(t, err)
		return got
	}
	for deadline := time.Now().Add(30 * time.Second); read().GetInstances()[0].GetState() != string(vocab.RolloutAsked); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("a never asked: %v", read())
		}
	}
	must(t, p1.cmd.Process.Signal(syscall.SIGKILL))
	<-p1.done

	// p2 takes the rollout over and asks a again (p1 may have died between
	// marking a asked and sending its command); then a's agent goes on.
	p2 := lab.start("p2", "")
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(p2.out.String(), "another provisioner asked, asked again"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("p2 never asked a again:\n%s", p2.out.String())
		}
	}
	must(t, syscall.Kill(agentPID, syscall.SIGCONT))
	for deadline := time.Now().Add(60 * time.Second); vocab.RolloutState(read().GetState()) != vocab.RolloutDone; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the rollout after its provisioner died: %v", read())
		}
	}
	if got := read(); got.GetMessage() != "done: 2 succeeded" {
		t.Fatalf("the rollout taken over: %s, %v", got.GetMessage(), got.GetInstances())
	}
	if out := p2.out.String(); !strings.Contains(out, `"rollout work started"`) {
		t.Errorf("p2 never drove the rollout:\n%s", out)
	}
}
