package stack_test

import (
	"testing"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// localLab is a stack whose local provider runs real agents, with the
// network "lab" and the template "small" (1 GB) made through the gateway,
// driven as an admin would drive it.
type localLab struct {
	t        *testing.T
	root     string // the local provider's disks and VMs
	gateway  *rpc.Client
	admin    rpc.CallOption
	network  *inventoryv1.Network
	template *inventoryv1.Template
}

// newLocalLab starts the stack of cfg, its LocalRoot filled in.
func newLocalLab(t *testing.T, cfg stack.Config) *localLab {
	t.Helper()
	bus := testkit.SecureNATS(t)
	cfg.LocalRoot = localRoot(t)
	stacktest.Start(t, stacktest.OnBus(cfg, bus))
	l := &localLab{t: t, root: cfg.LocalRoot, gateway: rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 30*time.Second),
		admin: rpc.As(vocab.User("admin"))}
	var err error
	l.network, err = rpc.Call(t.Context(), l.gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "none"}}, l.admin)
	must(t, err)
	l.template, err = rpc.Call(t.Context(), l.gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "small", Provider: "local", DataDiskGb: 1}}, l.admin)
	must(t, err)
	return l
}

// create makes the instance name of the lab's template in its network.
func (l *localLab) create(name string) *inventoryv1.Instance {
	l.t.Helper()
	in, err := rpc.Call(l.t.Context(), l.gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
		Name: name, Kind: "design", TemplateId: l.template.GetId(), NetworkId: l.network.GetId()}}, l.admin)
	must(l.t, err)
	return in
}

// act asks for a lifecycle action on instance id.
func (l *localLab) act(id string, a vocab.Action) {
	l.t.Helper()
	_, err := rpc.Call(l.t.Context(), l.gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(a)}, l.admin)
	must(l.t, err)
}

// get reads instance id.
func (l *localLab) get(id string) *inventoryv1.Instance {
	l.t.Helper()
	in, err := rpc.Call(l.t.Context(), l.gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, l.admin)
	must(l.t, err)
	return in
}

// until reads instance id until ok holds (90 s at most), and returns it.
func (l *localLab) until(id, what string, ok func(*inventoryv1.Instance) bool) *inventoryv1.Instance {
	l.t.Helper()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		in := l.get(id)
		if ok(in) {
			return in
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s is %s (%s), agent %v: never %s", in.GetName(), in.GetState(), in.GetStateDetail(), in.GetAgent(), what)
		}
	}
}

// inState says an instance is in state.
func inState(state vocab.State) func(*inventoryv1.Instance) bool {
	return func(i *inventoryv1.Instance) bool { return vocab.State(i.GetState()) == state }
}
