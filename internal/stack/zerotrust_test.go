package stack_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAnAttackersProbesAreRefused replays, against running services, what
// one shared bus token allowed before each service had an identity of its
// own: forging agent commands and lifecycle records, reading another
// instance's secrets, having the CA sign foreign names or join tokens for
// instances that are not being provisioned (or, for an operator, that are
// not external machines waiting for their agent). Each is refused by the bus
// (the identity may not publish there) or, for an identity that may call
// the endpoint, by the service (it may not act for that instance).
func TestAnAttackersProbesAreRefused(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	ctx := t.Context()
	// No provisioner: instances asked to provision stay provisioning.
	stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Inventory, subjects.CA, subjects.Secrets, subjects.AgentGW, subjects.Gateway}}, bus))
	client := func(id string) *rpc.Client { return rpc.NewClient(bus.Conn(t, id), id, 10*time.Second) }
	gateway, agentgw := client(subjects.Gateway), client(subjects.AgentGW)
	admin := rpc.As(vocab.User("admin"))

	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "self-signed"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "t", Provider: "local", DataDiskGb: 1}}, admin)
	must(t, err)
	instance := func(name string, sans ...string) string {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
			Name: name, Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId(), Ssl: &inventoryv1.SslSettings{Sans: sans}}}, admin)
		must(t, err)
		return in.GetId()
	}
	a, b, idle := instance("a", "a.example.test"), instance("b"), instance("idle")
	for _, id := range []string{a, b} {
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(vocab.ActionProvision)}, admin)
		must(t, err)
	}
	_, err = rpc.Call(ctx, gateway, endpoints.SecretCreate, &secretsv1.CreateSecretRequest{InstanceId: b, Name: "db", Value: "b-only"}, admin)
	must(t, err)

	// 1. The bus refuses identities where they are not declared: the
	// gateway (a user-facing process) cannot command an agent, report for
	// one, record provisioning state, read secrets or sign anything; the
	// agent gateway cannot record state; the observer can call nothing.
	probes := map[string][]string{
		subjects.Gateway: {endpoints.AgentCommand.At(a).Info().CallSubject(subjects.Gateway), endpoints.AgentCommand.At(a).Info().CallSubject(subjects.Provisioner),
			endpoints.LifecycleObserve.Info().CallSubject(subjects.Gateway), endpoints.LifecycleObserve.Info().CallSubject(subjects.AgentGW),
			endpoints.LifecycleObserveMany.Info().CallSubject(subjects.Gateway), endpoints.LifecycleObserveMany.Info().CallSubject(subjects.AgentGW),
			endpoints.LifecycleRecord.Info().CallSubject(subjects.Gateway), endpoints.SecretRead.Info().CallSubject(subjects.Gateway),
			endpoints.ServerSign.Info().CallSubject(subjects.Gateway), endpoints.JoinTokenCreate.Info().CallSubject(subjects.Provisioner)},
		subjects.AgentGW: {endpoints.LifecycleRecord.Info().CallSubject(subjects.AgentGW), endpoints.LifecycleRecord.Info().CallSubject(subjects.Provisioner),
			endpoints.AgentCommand.At(a).Info().CallSubject(subjects.AgentGW), endpoints.JoinTokenCreate.Info().CallSubject(subjects.AgentGW)},
		subjects.Secrets:   {endpoints.JoinTokenCreate.Info().CallSubject(subjects.Secrets), endpoints.JoinTokenCreate.Info().CallSubject(subjects.Gateway)},
		subjects.Inventory: {endpoints.JoinTokenCreate.Info().CallSubject(subjects.Inventory)},
		busauth.Observer: {endpoints.InstanceGet.Info().CallSubject(busauth.Observer), endpoints.JoinTokenCreate.Info().CallSubject(busauth.Observer), endpoints.SecretRead.Info().CallSubject(subjects.AgentGW),
			endpoints.AgentCommand.At(a).Info().CallSubject(subjects.Provisioner)},
		// The backup snapshots streams; it can neither call anything nor
		// put a stream back, purge or delete one.
		busauth.Backup: {endpoints.InstanceGet.Info().CallSubject(busauth.Backup), endpoints.SecretRead.Info().CallSubject(subjects.AgentGW),
			endpoints.AgentCommand.At(a).Info().CallSubject(subjects.Provisioner), "$JS.API.STREAM.RESTORE." + subjects.EventsStream,
			"$JS.API.STREAM.PURGE." + subjects.AuditStream, "$JS.API.STREAM.DELETE." + subjects.AuditStream},
	}
	bootstrap, _ := proto.Marshal(&agentv1.Command{Id: "x", Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{
		SetupActions: []*inventoryv1.SetupAction{{Type: "script", Script: "id"}}}}})
	for id, subjectsTried := range probes {
		nc, v := bus.Watch(t, id)
		for _, s := range subjectsTried {
			must(t, nc.Publish(s, bootstrap))
		}
		v.Settle(t)
		for _, s := range subjectsTried {
			if !v.PublishRefused(s) {
				t.Errorf("%s could publish to %s", id, s)
			}
		}
	}

	// 2. The agent gateway may call these endpoints, but only for the agent
	// it acts for.
	asA := rpc.As(vocab.Agent(a))
	_, err = rpc.Call(ctx, agentgw, endpoints.SecretRead, &secretsv1.ReadSecretRequest{RequesterInstanceId: b, Name: "db"}, asA)
	wantReason(t, "secret read for another instance", err, apierr.ReasonPermissionDenied)
	_, err = rpc.Call(ctx, agentgw, endpoints.LifecycleObserve, &agentv1.AgentEvent{InstanceId: b,
		Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{Step: "done", Status: "failed"}}}, asA)
	wantReason(t, "observe for another instance", err, apierr.ReasonPermissionDenied)
	// Batches of events are the gateway's own report, never an agent's.
	_, err = rpc.Call(ctx, agentgw, endpoints.LifecycleObserveMany, &agentv1.AgentEvents{Events: []*agentv1.AgentEvent{{InstanceId: b,
		Body: &agentv1.AgentEvent_Progress{Progress: &agentv1.Progress{Step: "done", Status: "failed"}}}}}, asA)
	wantReason(t, "a batch of events reported as an agent", err, apierr.ReasonPermissionDenied)
	_, err = rpc.Call(ctx, agentgw, endpoints.AgentSign, &cav1.SignAgentRequest{InstanceId: b, CsrDer: csr(t)}, asA)
	wantReason(t, "agent certificate for another instance", err, apierr.ReasonPermissionDenied)
	_, err = rpc.Call(ctx, agentgw, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: a, CsrDer: csr(t), Sans: []string{"www.example.com"}}, asA)
	wantReason(t, "server certificate for a foreign name", err, apierr.ReasonInvalidField)
	_, err = rpc.Call(ctx, agentgw, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: a, CsrDer: csr(t), Sans: []string{"a.example.test"}}, asA)
	must(t, err) // its own name is fine
	// Acting as an operator is the gateway's alone.
	_, err = rpc.Call(ctx, agentgw, endpoints.ServerSign, &cav1.SignServerRequest{InstanceId: a, CsrDer: csr(t), Sans: []string{"a.example.test"}}, rpc.As(vocab.User("admin")))
	wantReason(t, "agent gateway acting as a user", err, apierr.ReasonPermissionDenied)

	// 3. The CA issues join tokens only for instances being provisioned.
	provisioner := client(subjects.Provisioner)
	_, err = rpc.Call(ctx, provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: idle})
	wantReason(t, "join token for an instance not being provisioned", err, apierr.ReasonInvalidState)
	_, err = rpc.Call(ctx, provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: "0190c3e1-0000-7000-8000-000000000000"})
	wantReason(t, "join token for an instance that does not exist", err, apierr.ReasonNotFound)
	if _, err := rpc.Call(ctx, provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: a}); err != nil {
		t.Fatalf("join token for an instance being provisioned: %v", err)
	}
	// The gateway may ask only for an operator, and only for an external
	// instance waiting for its agent.
	_, err = rpc.Call(ctx, gateway, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: a})
	wantReason(t, "join token for the gateway itself", err, apierr.ReasonPermissionDenied)
	_, err = rpc.Call(ctx, gateway, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: a}, admin)
	wantReason(t, "join token for an operator, for a local instance", err, apierr.ReasonUnsupported)

	// The forged read is on the audit stream, as an attempt.
	js, err := jetstream.New(bus.Conn(t, busauth.Observer))
	must(t, err)
	st, err := js.Stream(ctx, subjects.AuditStream)
	must(t, err)
	m, err := st.GetLastMsgForSubject(ctx, subjects.Audit(subjects.NounSecret, b, subjects.VerbRead))
	must(t, err)
	rec := &secretsv1.SecretAccess{}
	must(t, proto.Unmarshal(m.Data, rec))
	if rec.GetAllowed() || rec.GetRequesterInstanceId() != b {
		t.Errorf("audit record of the forged read: %v", rec)
	}
	if in, err := rpc.Call(context.Background(), gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: b}, admin); err != nil || in.GetState() != string(vocab.StateProvisioning) {
		t.Errorf("instance b after the forged report: %v %v", in.GetState(), err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantReason(t *testing.T, what string, err error, reason apierr.Reason) {
	t.Helper()
	if apierr.ReasonOf(err) != reason {
		t.Errorf("%s: %v (reason %s), want %s", what, err, apierr.ReasonOf(err), reason)
	}
}

func csr(t *testing.T) []byte {
	t.Helper()
	key, err := pki.GenerateKey()
	must(t, err)
	der, err := pki.NewCSR(key, "attacker")
	must(t, err)
	return der
}
