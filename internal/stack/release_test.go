package stack_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAnExternalMachinesAgentLeavesAtDeprovision: Flotilla stops no VM of
// the external provider, so a deprovision releases the machine's agent
// instead: the real flotilla-agent, joined with a one-time token as an
// operator starts it, stops the node software, closes its stream and exits
// 0, with its certificate forgotten; the deprovision does not wait out the
// gateway's grace. Started again with a new token after the next provision,
// the same agent serves the instance again.
func TestAnExternalMachinesAgentLeavesAtDeprovision(t *testing.T) {
	t.Parallel()
	agentBin, err := agentBinary()
	must(t, err)
	bus := testkit.SecureNATS(t)
	st := stacktest.Start(t, stacktest.OnBus(stack.Config{LocalRoot: localRoot(t)}, bus))
	ctx := t.Context()
	gateway := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "edge", Provider: string(vocab.ProviderExternal), HttpsStrategy: "none"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "edge", Provider: string(vocab.ProviderExternal), DataDiskGb: 1}}, admin)
	must(t, err)
	in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: "edge-1", Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
	must(t, err)
	id := in.GetId()
	get := func() *inventoryv1.Instance {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
		must(t, err)
		return in
	}
	until := func(what string, ok func(*inventoryv1.Instance) bool) *inventoryv1.Instance {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			in := get()
			if ok(in) {
				return in
			}
			if vocab.State(in.GetState()) == vocab.StateFailed || time.Now().After(deadline) {
				t.Fatalf("edge-1 is %s (%s), never %s", in.GetState(), in.GetStateDetail(), what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	lifecycle := func(a vocab.Action) {
		t.Helper()
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(a)}, admin)
		must(t, err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	must(t, os.WriteFile(caFile, st.CA.GatewayAuthority().CertificatePEM(), 0o644))
	stateDir := filepath.Join(dir, "state")
	// startAgent provisions edge-1, mints a token once it waits for its
	// agent, and starts the agent with it, as the README tells an operator.
	startAgent := func(round string) (*exec.Cmd, <-chan error) {
		t.Helper()
		lifecycle(vocab.ActionProvision)
		until("waiting for its agent", func(in *inventoryv1.Instance) bool { return in.GetStateDetail() == string(vocab.StepWaitingForAgent) })
		tok, err := rpc.Call(ctx, gateway, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id}, admin)
		must(t, err)
		tokenFile := filepath.Join(dir, "token-"+round)
		must(t, os.WriteFile(tokenFile, []byte(tok.GetToken()), 0o600))
		cmd := exec.Command(agentBin, "--gateway", st.AgentAddr, "--ca-file", caFile, "--token-file", tokenFile,
			"--vm-id", tok.GetVmId(), "--state-dir", stateDir, "--data-dir", filepath.Join(dir, "data"), "--data-disk-gb", "1",
			"--heartbeat-interval", "1s")
		out := &testkit.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the %s agent's output:\n%s", round, out.String())
			}
		})
		must(t, cmd.Start())
		exited := make(chan error, 1)
		waited := make(chan struct{})
		go func() {
			exited <- cmd.Wait()
			close(waited)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-waited
		})
		return cmd, exited
	}

	_, exited := startAgent("first")
	running := until("running", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })
	nodeURL := running.GetAddresses().GetUrl()
	resp, err := http.Get(nodeURL)
	must(t, err)
	_ = resp.Body.Close()

	start := time.Now()
	lifecycle(vocab.ActionDeprovision)
	gone := until("deprovisioned", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateDeprovisioned })
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("the deprovision took %v: it waited for the gateway to cut the agent off", took)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the released agent exited with %v, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the released agent did not exit")
	}
	if resp, err := http.Get(nodeURL); err == nil {
		_ = resp.Body.Close()
		t.Error("the node software still answers after the deprovision")
	}
	if a := gone.GetAgent(); vocab.AgentStatus(a.GetStatus()) == vocab.AgentConnected {
		t.Errorf("the deprovisioned instance shows its agent %v", a)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "agent.crt")); !os.IsNotExist(err) {
		t.Errorf("the released agent kept its certificate: %v", err)
	}

	// Provisioned again: the same machine's agent, with a new token.
	_, _ = startAgent("second")
	again := until("running again", func(in *inventoryv1.Instance) bool { return vocab.State(in.GetState()) == vocab.StateRunning })
	if !strings.HasPrefix(again.GetAddresses().GetUrl(), "http://") {
		t.Errorf("running again without a node URL: %v", again)
	}
}
