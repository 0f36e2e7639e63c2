package stack_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// provisionerBinary builds flotilla-provisioner once, with the race
// detector: a provisioner process that races exits non-zero.
var provisionerBinary = testkit.BuiltBinary("flotilla-provisioner", true)

// provisionerProc is a flotilla-provisioner process.
type provisionerProc struct {
	name string
	cmd  *exec.Cmd
	out  *testkit.Buffer
	done chan struct{}
	err  error
	// ended is when it stopped (was killed, or exited).
	ended time.Time
}

// provisionerLab is the services but the provisioner, on a bus of their
// own, and the local provider's root, for tests that run the provisioner
// as processes of its own (provisionerLab.start), driven as an admin
// through the gateway's bus identity.
type provisionerLab struct {
	t                           *testing.T
	bus                         *testkit.Bus
	root, agent, bin, agentAddr string
	gateway                     *rpc.Client
	admin                       rpc.CallOption
}

func newProvisionerLab(t *testing.T) *provisionerLab {
	t.Helper()
	agent, err := agentBinary()
	must(t, err)
	bin, err := provisionerBinary()
	must(t, err)
	bus := testkit.SecureNATS(t)
	st := stacktest.Start(t, stacktest.OnBus(stack.Config{
		Services: []string{subjects.Inventory, subjects.CA, subjects.Secrets, subjects.AgentGW, subjects.Gateway},
	}, bus))
	return &provisionerLab{t: t, bus: bus, root: localRoot(t), agent: agent, bin: bin, agentAddr: st.AgentAddr,
		gateway: rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 20*time.Second), admin: rpc.As(vocab.User("admin"))}
}

// start starts flotilla-provisioner as a process named name, its local
// provider starting agents with the agent binary and agentArgs. It is
// killed when the test ends, and its output logged if the test failed.
func (l *provisionerLab) start(name, agentArgs string) *provisionerProc {
	t := l.t
	t.Helper()
	cmd := exec.Command(l.bin, "--creds", l.bus.Creds[subjects.Provisioner])
	cmd.Env = append(os.Environ(),
		"FLOTILLA_NATS_URL="+l.bus.URL,
		"FLOTILLA_LOCAL_ROOT="+l.root,
		"FLOTILLA_AGENT_COMMAND="+strings.TrimSpace(l.agent+" "+agentArgs),
		"FLOTILLA_AGENT_GATEWAY_ADDR="+l.agentAddr,
		"FLOTILLA_LOG_JSON=true",
	)
	p := &provisionerProc{name: name, cmd: cmd, out: &testkit.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	must(t, cmd.Start())
	go func() {
		p.err = cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			tail := p.out.String()
			t.Logf("--- %s (tail):\n%s", name, tail[max(0, len(tail)-4000):])
		}
	})
	return p
}

// TestProvisionersNeverWorkOnOneInstanceAtOnce runs the provisioner as
// separate processes (flotilla-provisioner, each on its own NATS
// connection) beside the other services, sharing one local provider root,
// and throws bursts of conflicting actions (provision, deprovision,
// reprovision, delete; several per instance at once) at many instances
// while provisioners start (each resumes every instance in a transitional
// state, including those another is working on) and one is killed with
// SIGKILL in the middle of its work. It asserts what an operator would
// notice:
//
//   - no two provisioners ever worked on one instance at the same time:
//     every process logs when it starts and ends work on an instance, and
//     no two such spans of one instance overlap (a killed process's open
//     spans last until its death); and no data disk ever had two live VMs;
//   - every instance settles (running, deprovisioned, deleted or failed
//     with a named step) within a bound, although the killed provisioner
//     held some of them (its leases expire; the others take over);
//   - the end state matches the records: a live VM only for an instance
//     recorded with it, one per instance, and no disk no instance records.
func TestProvisionersNeverWorkOnOneInstanceAtOnce(t *testing.T) {
	t.Parallel()
	lab := newProvisionerLab(t)
	ctx, root, gateway, admin := t.Context(), lab.root, lab.gateway, lab.admin

	var (
		procsMu sync.Mutex
		procs   []*provisionerProc
	)
	start := func(name string) *provisionerProc {
		t.Helper()
		p := lab.start(name, "--heartbeat-interval 2s")
		procsMu.Lock()
		procs = append(procs, p)
		procsMu.Unlock()
		return p
	}

	// Never two live VMs on one data disk, watched throughout.
	stopWatch, watchDone := make(chan struct{}), make(chan struct{})
	var doubled []string
	go func() {
		defer close(watchDone)
		for {
			for disk, vms := range liveLocalVMs(root) {
				if len(vms) > 1 {
					doubled = append(doubled, fmt.Sprintf("%s: %v at %s", disk, vms, time.Now().Format(time.StampMilli)))
				}
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer func() { // on every way out
		select {
		case <-stopWatch:
		default:
			close(stopWatch)
		}
		<-watchDone
	}()

	p1, _ := start("p1"), start("p2")
	n, err := rpc.Call(ctx, gateway, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{
		Name: "lab", Provider: "local", HttpsStrategy: "none"}}, admin)
	must(t, err)
	tpl, err := rpc.Call(ctx, gateway, endpoints.TemplateCreate, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "slow-setup", Provider: "local", DataDiskGb: 1,
		SetupActions: []*inventoryv1.SetupAction{{Type: "script", Script: "sleep 2"}}}}, admin)
	must(t, err)
	const instances = 8
	var ids []string
	for i := range instances {
		in, err := rpc.Call(ctx, gateway, endpoints.InstanceCreate, &inventoryv1.CreateInstanceRequest{Instance: &inventoryv1.Instance{
			Name: "i" + strconv.Itoa(i), Kind: "design", TemplateId: tpl.GetId(), NetworkId: n.GetId()}}, admin)
		must(t, err)
		ids = append(ids, in.GetId())
	}
	act := func(id string, a vocab.Action) {
		_, err := rpc.Call(ctx, gateway, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(a)}, admin)
		if err != nil && !apierr.Is(err, apierr.KindConflict) && !apierr.Is(err, apierr.KindNotFound) {
			t.Errorf("%s %s: %v", a, id, err)
		}
	}
	burst := func(perInstance int, actions ...vocab.Action) {
		var wg sync.WaitGroup
		for _, id := range ids {
			for range perInstance {
				wg.Go(func() { act(id, actions[rand.N(len(actions))]) })
			}
		}
		wg.Wait()
	}

	// Everything provisions; a third provisioner starts while the first
	// two work (its resync finds every instance in flight), and the first
	// dies in the middle of its work.
	burst(1, vocab.ActionProvision)
	time.Sleep(1500 * time.Millisecond)
	start("p3")
	for killBy := time.Now().Add(10 * time.Second); openWork(p1.out.Bytes()) == 0 && time.Now().Before(killBy); {
		time.Sleep(100 * time.Millisecond)
	}
	must(t, p1.cmd.Process.Signal(syscall.SIGKILL))
	<-p1.done

	// Conflicting actions, several per instance at once, while yet another
	// provisioner starts.
	all := []vocab.Action{vocab.ActionProvision, vocab.ActionDeprovision, vocab.ActionReprovision, vocab.ActionDelete}
	for round := range 4 {
		if round == 1 {
			start("p4")
		}
		burst(3, all...)
		time.Sleep(time.Duration(500+rand.N(1500)) * time.Millisecond)
	}

	// Every instance settles within a bound: a lease of the killed
	// provisioner expires within 30 s, and its work is taken over.
	settled := func(in *inventoryv1.Instance) bool {
		switch vocab.State(in.GetState()) {
		case vocab.StateRunning, vocab.StateDeprovisioned, vocab.StateCreated:
			return true
		case vocab.StateFailed:
			return in.GetStateDetail() != ""
		}
		return false
	}
	final := map[string]*inventoryv1.Instance{}
	settleFrom := time.Now()
	deadline := settleFrom.Add(4 * time.Minute)
	for _, id := range ids {
		for {
			in, err := rpc.Call(ctx, gateway, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, admin)
			if apierr.Is(err, apierr.KindNotFound) {
				break
			}
			must(t, err)
			if settled(in) {
				final[id] = in
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %s did not settle: %s %s (desired %s)", in.GetName(), in.GetState(), in.GetStateDetail(), in.GetDesiredState())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// The end state matches the records.
	vms := liveLocalVMs(root)
	recorded := map[string]bool{} // disk ids
	for _, in := range final {
		disk := in.GetDataDisk().GetId()
		recorded[disk] = true
		live := vms[filepath.Join(root, "disks", disk)]
		switch vocab.State(in.GetState()) {
		case vocab.StateRunning:
			if len(live) != 1 || live[0] != in.GetVmId() {
				t.Errorf("running instance %s records VM %s on disk %s; live VMs there: %v", in.GetName(), in.GetVmId(), disk, live)
			}
		case vocab.StateDeprovisioned, vocab.StateCreated:
			if len(live) != 0 {
				t.Errorf("%s instance %s has live VMs %v", in.GetState(), in.GetName(), live)
			}
		case vocab.StateFailed:
			t.Logf("instance %s failed: %s", in.GetName(), in.GetStateDetail())
		}
	}
	for diskDir, live := range vms {
		if !recorded[filepath.Base(diskDir)] {
			t.Errorf("live VMs %v on disk %s, which no instance records", live, diskDir)
		}
	}
	disks, _ := filepath.Glob(filepath.Join(root, "disks", "*"))
	for _, d := range disks {
		if !recorded[filepath.Base(d)] {
			t.Errorf("disk %s exists, and no instance records it", d)
		}
	}

	// Stop the provisioners, then compare their spans of work.
	procsMu.Lock()
	running := slices.Clone(procs)
	procsMu.Unlock()
	for _, p := range running {
		if p == p1 {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("provisioner %s exited with %v", p.name, p.err)
			}
		case <-time.After(time.Minute):
			t.Errorf("provisioner %s did not stop on SIGTERM", p.name)
		}
	}
	spans := map[string][]workSpan{}
	for _, p := range running {
		for id, ss := range workSpans(t, p) {
			spans[id] = append(spans[id], ss...)
		}
	}
	handedOver := 0
	for id, ss := range spans {
		holders := map[string]bool{}
		for i, a := range ss {
			holders[a.holder] = true
			for _, b := range ss[i+1:] {
				if a.start.Before(b.end) && b.start.Before(a.end) {
					t.Errorf("instance %s: %s worked on it %s – %s and %s %s – %s",
						id, a.proc, a.start.Format(time.StampMicro), a.end.Format(time.StampMicro),
						b.proc, b.start.Format(time.StampMicro), b.end.Format(time.StampMicro))
				}
			}
		}
		if len(holders) > 1 {
			handedOver++
		}
	}
	states := map[string]int{}
	for _, id := range ids {
		if in, ok := final[id]; ok {
			states[in.GetState()]++
		} else {
			states["deleted"]++
		}
	}
	killedOpen := 0
	for _, ss := range workSpans(t, p1) {
		for _, s := range ss {
			if s.end.Equal(p1.ended) {
				killedOpen++
			}
		}
	}
	t.Logf("%d instances settled %v after %v; %d worked on by more than one provisioner; the killed one was working on %d",
		instances, states, time.Since(settleFrom).Round(time.Second), handedOver, killedOpen)
	if len(spans) == 0 || handedOver == 0 {
		t.Errorf("work spans of %d instances, %d of them worked on by more than one provisioner: the test proved nothing", len(spans), handedOver)
	}
	close(stopWatch)
	<-watchDone
	if len(doubled) > 0 {
		t.Errorf("data disks with two live VMs: %v", doubled)
	}
}

// workSpan is one provisioner process's work on one instance.
type workSpan struct {
	proc, holder string
	start, end   time.Time
}

// workSpans reads the "work started" and "work ended" lines of a stopped
// provisioner's log, by instance; work it never ended lasts until the
// process ended.
func workSpans(t *testing.T, p *provisionerProc) map[string][]workSpan {
	t.Helper()
	out := map[string][]workSpan{}
	open := map[string]workSpan{}
	sc := bufio.NewScanner(bytes.NewReader(p.out.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Time     time.Time `json:"time"`
			Msg      string    `json:"msg"`
			Instance string    `json:"instance"`
			Holder   string    `json:"holder"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Instance == "" {
			continue
		}
		switch line.Msg {
		case "work started":
			if _, dup := open[line.Instance]; dup {
				t.Errorf("%s started work on %s twice", p.name, line.Instance)
			}
			open[line.Instance] = workSpan{proc: p.name, holder: line.Holder, start: line.Time}
		case "work ended":
			s, ok := open[line.Instance]
			if !ok {
				t.Errorf("%s ended work on %s it never started", p.name, line.Instance)
				continue
			}
			delete(open, line.Instance)
			s.end = line.Time
			out[line.Instance] = append(out[line.Instance], s)
		}
	}
	for id, s := range open {
		s.end = p.ended
		out[id] = append(out[id], s)
	}
	return out
}

// openWork counts the instances a provisioner's log says it is working on.
func openWork(log []byte) int {
	n := bytes.Count(log, []byte(`"msg":"work started"`)) - bytes.Count(log, []byte(`"msg":"work ended"`))
	return n
}

// liveLocalVMs returns the VM ids of the live local agents under root, by
// their data disk's directory.
func liveLocalVMs(root string) map[string][]string {
	out := map[string][]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || strings.Contains(string(b), "\x00node\x00") {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		vm, disk := flagValue(args, "--vm-id"), flagValue(args, "--data-dir")
		if vm == "" || !strings.HasPrefix(disk, root+string(filepath.Separator)) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
				continue
			}
		}
		if !slices.Contains(out[disk], vm) {
			out[disk] = append(out[disk], vm)
		}
	}
	return out
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
