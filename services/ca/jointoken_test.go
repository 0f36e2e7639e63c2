package ca_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// An operator mints a join token, through the gateway, only for an
// instance of provider external that has its VM and waits for its agent;
// the token joins like the provisioner's, and an audit record names who
// minted it without holding it.
func TestOperatorJoinTokensOnlyForExternalInstancesWaitingForTheirAgent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	e.instances.putTemplate(&inventoryv1.Template{Id: "tpl-external", Provider: string(vocab.ProviderExternal)})
	e.instances.putTemplate(&inventoryv1.Template{Id: "tpl-local", Provider: string(vocab.ProviderLocal)})
	gateway := rpc.NewClient(e.nc, subjects.Gateway, 10*time.Second)
	admin := rpc.As(vocab.User("admin"))
	mint := func(id string, opts ...rpc.CallOption) (*cav1.JoinToken, error) {
		return rpc.Call(t.Context(), gateway, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id}, opts...)
	}
	instance := func(template string, state vocab.State, step vocab.Step, vm string) string {
		id := instanceID()
		e.instances.put(&inventoryv1.Instance{Id: id, TemplateId: template, State: string(state), StateDetail: string(step), VmId: vm})
		return id
	}

	for _, tc := range []struct {
		name   string
		id     string
		reason apierr.Reason
		prefix string
	}{
		{"another provider", instance("tpl-local", vocab.StateProvisioning, vocab.StepWaitingForAgent, "vm-1"),
			apierr.ReasonUnsupported, "instance \"%s\" runs on provider \"local\": join tokens are minted on demand only for provider \"external\""},
		{"not provisioned", instance("tpl-external", vocab.StateCreated, "", ""),
			apierr.ReasonInvalidState, "instance \"%s\" is created: join tokens are minted only while it is being provisioned and waits for its agent"},
		{"running", instance("tpl-external", vocab.StateRunning, "", "vm-2"),
			apierr.ReasonInvalidState, "instance \"%s\" is running"},
		{"agent already past its join", instance("tpl-external", vocab.StateProvisioning, vocab.StepRunningSetup, "vm-3"),
			apierr.ReasonInvalidState, "instance \"%s\" is provisioning (running-setup)"},
		{"no VM yet", instance("tpl-external", vocab.StateProvisioning, vocab.StepAllocatingDisk, ""),
			apierr.ReasonInvalidState, "instance \"%s\" is provisioning (allocating-disk)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mint(tc.id, admin)
			if apierr.ReasonOf(err) != tc.reason || !strings.HasPrefix(err.Error(), strings.ReplaceAll(tc.prefix, "%s", tc.id)) {
				t.Fatalf("mint = %v (reason %s); want %s %q...", err, apierr.ReasonOf(err), tc.reason, tc.prefix)
			}
		})
	}

	waiting := instance("tpl-external", vocab.StateProvisioning, vocab.StepWaitingForAgent, "vm-ext")
	t.Run("the gateway may not mint for itself", func(t *testing.T) {
		_, err := mint(waiting)
		if apierr.ReasonOf(err) != apierr.ReasonPermissionDenied {
			t.Fatalf("mint as the gateway itself = %v; want permission_denied", err)
		}
	})

	tok, err := mint(waiting, admin, rpc.ForClient("192.0.2.7"))
	must(t, err)
	if tok.GetVmId() != "vm-ext" || !strings.HasPrefix(tok.GetToken(), "fjt_") {
		t.Fatalf("token = %v; want one for vm-ext", tok)
	}
	got, err := join(t, e.nc, tok.GetToken(), csrFor(t, newKey(t)))
	must(t, err)
	cert, err := pki.ParseCertificatesPEM([]byte(got.GetCertificatePem()))
	must(t, err)
	if got.GetInstanceId() != waiting || pki.AgentVMID(cert[0]) != "vm-ext" {
		t.Errorf("joined as %s on %s; want %s on vm-ext", got.GetInstanceId(), pki.AgentVMID(cert[0]), waiting)
	}
	if strings.Contains(e.logs.String(), tok.GetToken()[len("fjt_"):]) {
		t.Error("the log holds the token")
	}

	// The audit record names the operator and their address, never the token.
	js, err := jetstream.New(e.nc)
	must(t, err)
	st, err := js.Stream(t.Context(), subjects.AuditStream)
	must(t, err)
	m, err := st.GetLastMsgForSubject(t.Context(), subjects.Audit(subjects.NounJoinToken, waiting, subjects.VerbCreate))
	must(t, err)
	rec := &cav1.JoinTokenAudit{}
	must(t, proto.Unmarshal(m.Data, rec))
	if rec.GetActor() != "user:admin" || rec.GetSource() != "192.0.2.7" || rec.GetVmId() != "vm-ext" || len(rec.GetTokenId()) != 16 {
		t.Errorf("audit record = %v", rec)
	}
	if strings.Contains(string(m.Data), tok.GetToken()[len("fjt_"):]) {
		t.Error("the audit record holds the token")
	}

	// The provisioner's tokens are audited too.
	other := instanceID()
	createToken(t, e.nc, other, 0)
	if _, err := st.GetLastMsgForSubject(t.Context(), subjects.Audit(subjects.NounJoinToken, other, subjects.VerbCreate)); err != nil {
		t.Errorf("no audit record of the provisioner's token: %v", err)
	}
}
