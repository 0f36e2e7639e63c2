package stack_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/rpc"
)

// TestARotatedSecretReachesARunningInstanceWithoutANewVM: a running local
// instance whose setup wrote a fleet secret and its own secret into a
// file gets both rotated values when its configuration is refreshed: on
// the same VM, its node serving again, the outcome on its timeline. A
// template that gains a script is refused (its VM's setup never ran it),
// and the instance runs on as it was.
func TestARotatedSecretReachesARunningInstanceWithoutANewVM(t *testing.T) {
	t.Parallel()
	agent, err := agentBinary()
	must(t, err)
	lab := newLocalLab(t, stack.Config{AgentCommand: []string{agent}})
	ctx := t.Context()
	actions := []*inventoryv1.SetupAction{
		{Type: "script", Script: "echo setting up"},
		{Type: "file", Path: "conf/app.env", Content: "TOKEN=${secret:registry-token}\nPASSWORD=${secret:db-password}\n", Mode: "0600"},
	}
	tpl, err := rpc.Call(ctx, lab.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "configured", Provider: "local", DataDiskGb: 1, SetupActions: actions}}, lab.admin)
	must(t, err)
	in, err := rpc.Call(ctx, lab.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "web-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: lab.network.GetId()}}, lab.admin)
	must(t, err)
	id := in.GetId()
	secrets := func(fleet, own string) {
		t.Helper()
		_, err := rpc.Call(ctx, lab.gateway, endpoints.FleetSecretPut, &secretsv1.SetFleetSecretRequest{Name: "registry-token", Value: fleet, TemplateIds: []string{tpl.GetId()}}, lab.admin)
		must(t, err)
		_, err = rpc.Call(ctx, lab.gateway, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: id, Name: "db-password", Value: own}, lab.admin)
		must(t, err)
	}
	secrets("fleet-1", "own-1")
	lab.act(id, vocab.ActionProvision)
	running := lab.until(id, "running", inState(vocab.StateRunning))
	file := filepath.Join(lab.root, "disks", running.GetDataDisk().GetId(), "conf", "app.env")
	if b, err := os.ReadFile(file); err != nil || string(b) != "TOKEN=fleet-1\nPASSWORD=own-1\n" {
		t.Fatalf("the file the setup wrote: %q, %v", b, err)
	}
	refresh := func(want vocab.Progress) *inventoryv1.Instance {
		t.Helper()
		before := lab.get(id).GetUpdateTime().AsTime()
		_, err := rpc.Call(ctx, lab.gateway, endpoints.ConfigRefresh, &inventoryv1.InstanceActionRequest{Id: id}, lab.admin)
		must(t, err)
		return lab.until(id, "refreshed: "+string(want), func(i *inventoryv1.Instance) bool {
			return i.GetAgentProgress() == vocab.AgentProgress(vocab.StepRefreshingConfiguration, want) && i.GetUpdateTime().AsTime().After(before)
		})
	}

	// Both rotated: the file is written again, the node serves again.
	secrets("fleet-2", "own-2")
	got := refresh(vocab.ProgressSucceeded)
	if b, err := os.ReadFile(file); err != nil || string(b) != "TOKEN=fleet-2\nPASSWORD=own-2\n" {
		t.Fatalf("the file after the refresh: %q, %v", b, err)
	}
	if got.GetVmId() != running.GetVmId() || vocab.State(got.GetState()) != vocab.StateRunning {
		t.Fatalf("after the refresh: %s on VM %s (was %s)", got.GetState(), got.GetVmId(), running.GetVmId())
	}
	resp, err := http.Get(got.GetAddresses().GetUrl())
	must(t, err)
	page, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "web-1") {
		t.Fatalf("the node after the refresh: %d %q", resp.StatusCode, page)
	}

	// The template gains a script: refused, nothing rewritten.
	tpl.SetupActions = append(actions, &inventoryv1.SetupAction{Type: "script", Script: "echo new"})
	tpl, err = rpc.Call(ctx, lab.gateway, endpoints.TemplateUpdate, &inventoryv1.UpdateTemplateRequest{Template: tpl,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"setupActions"}}}, lab.admin)
	must(t, err)
	secrets("fleet-3", "own-3")
	got = refresh(vocab.ProgressFailed)
	if b, _ := os.ReadFile(file); string(b) != "TOKEN=fleet-2\nPASSWORD=own-2\n" || vocab.State(got.GetState()) != vocab.StateRunning {
		t.Fatalf("a refused refresh: %s, the file %q", got.GetState(), b)
	}
	if !strings.Contains(got.GetAgentProgressMessage(), "the template's scripts or packages are not those this VM's setup ran (1 then, 2 now): reprovision") {
		t.Fatalf("a refused refresh's reason on the instance: %q", got.GetAgentProgressMessage())
	}
	// Asked again with the script gone: it succeeds, and the reason goes.
	tpl.SetupActions = actions
	_, err = rpc.Call(ctx, lab.gateway, endpoints.TemplateUpdate, &inventoryv1.UpdateTemplateRequest{Template: tpl,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"setupActions"}}}, lab.admin)
	must(t, err)
	if got = refresh(vocab.ProgressSucceeded); got.GetAgentProgressMessage() != "" {
		t.Fatalf("a refresh that succeeded keeps the last failure's reason: %q", got.GetAgentProgressMessage())
	}
}
