package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/rpc"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/agent"
	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/ca"
)

// fleet is the real NATS, CA and agent gateway an agent talks to, with a
// recorder of the events the gateway sends to the inventory's
// lifecycle.observe.
type fleet struct {
	t        *testing.T
	bus      *testkit.Bus
	js       jetstream.JetStream // read as the observer
	ca       *ca.Service
	addr     string
	observed *testkit.Inventory
	// provisioner calls as the provisioner does: join tokens, commands.
	provisioner *rpc.Client

	mu     sync.Mutex
	stopGW func()
	// gwLogs, if set, gets the log of every gateway started after.
	gwLogs *testkit.Buffer
}

func newFleet(t *testing.T, agentCertTTL time.Duration) *fleet {
	t.Helper()
	f := &fleet{t: t, bus: testkit.SecureNATS(t)}
	f.provisioner = rpc.NewClient(f.bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 0)
	var err error
	if f.js, err = jetstream.New(f.bus.Conn(t, busauth.Observer)); err != nil {
		t.Fatal(err)
	}
	f.ca = stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.CA}, Log: agent.NewTestLog(t),
		AgentCertTTL: agentCertTTL}, f.bus)).CA
	// The inventory's part: record what the gateway reports.
	f.observed = testkit.FakeInventory(t, f.bus.Conn(t, subjects.Inventory))
	f.startGateway("127.0.0.1:0")
	t.Cleanup(func() {
		f.mu.Lock()
		stop := f.stopGW
		f.mu.Unlock()
		if stop != nil {
			stop()
		}
	})
	return f
}

// startGateway runs an agent gateway listening on addr, until stopGW.
func (f *fleet) startGateway(addr string) {
	t := f.t
	t.Helper()
	var st *stack.Stack
	var err error
	log := agent.NewTestLog(t)
	f.mu.Lock()
	if f.gwLogs != nil {
		log = slog.New(slog.NewTextHandler(f.gwLogs, nil))
	}
	f.mu.Unlock()
	for range 50 { // the old listener's port may take a moment to be free
		st, err = stack.Start(t.Context(), stacktest.OnBus(stack.Config{Services: []string{subjects.AgentGW}, Log: log,
			AgentAddr: addr}, f.bus))
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	f.mu.Lock()
	f.addr = st.AgentAddr
	f.stopGW = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent gateway: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("the agent gateway did not stop")
		}
	}
	f.mu.Unlock()
}

// restartGateway stops the gateway and starts a new one on the same port.
func (f *fleet) restartGateway() {
	f.mu.Lock()
	stop, addr := f.stopGW, f.addr
	f.stopGW = nil
	f.mu.Unlock()
	stop()
	f.startGateway(addr)
}

// startAgent runs an agent for instance id until the test ends.
func (f *fleet) startAgent(id string, heartbeat time.Duration) agent.Config {
	f.t.Helper()
	return runAgent(f.t, f.provisioner, f.ca, f.addr, id, heartbeat)
}

// runAgent runs an agent for instance id against the agent gateway at
// addr until the test ends, bootstrapped as the provisioner would.
func runAgent(t *testing.T, provisioner *rpc.Client, fleetCA *ca.Service, addr, id string, heartbeat time.Duration) agent.Config {
	t.Helper()
	return runAgentWith(t, provisioner, fleetCA, addr, id, heartbeat, agent.Run)
}

// runAgentWith is runAgent, the agent run by run (agent.Run, or
// agent.RunUpgrading).
func runAgentWith(t *testing.T, provisioner *rpc.Client, fleetCA *ca.Service, addr, id string, heartbeat time.Duration,
	run func(context.Context, agent.Config) error) agent.Config {
	t.Helper()
	tok, err := rpc.Call(t.Context(), provisioner, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	// What the provisioner bootstraps an agent with: the agent gateway's
	// intermediate and the fleet CA.
	if err := os.WriteFile(caFile, fleetCA.GatewayAuthority().CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(tok.GetToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := agent.Config{
		GatewayAddr: addr, CAFile: caFile, TokenFile: tokenFile,
		StateDir: filepath.Join(dir, "state"), DataDir: filepath.Join(dir, "data"), DataDiskGB: 2, VMID: tok.GetVmId(),
		NodeBinary: agent.NodeHelper(), PackageInstaller: agent.NoPackageInstaller,
		HeartbeatInterval: heartbeat, Log: agent.NewTestLog(t),
		// As the command would have them, for an upgrade's check.
		Args: []string{"--ca-file=" + caFile, "--data-dir=" + filepath.Join(dir, "data"), "--gateway=" + addr,
			"--state-dir=" + filepath.Join(dir, "state"), "--token-file=" + tokenFile, "--vm-id=" + tok.GetVmId()},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the agent's run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("agent.Run did not return after its context ended")
		}
	})
	return cfg
}

// command sends cmd to the agent through the bus.
func (f *fleet) command(id string, cmd *agentv1.Command) {
	f.t.Helper()
	if _, err := rpc.Call(f.t.Context(), f.provisioner, endpoints.AgentCommand.At(id), cmd); err != nil {
		f.t.Fatalf("send command %s: %v", cmd.GetId(), err)
	}
}

// logs reads every log line stored for instance id.
func (f *fleet) logs(id string) []*agentv1.LogLine {
	t := f.t
	t.Helper()
	c, err := f.js.OrderedConsumer(t.Context(), subjects.AgentLogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AgentLogs(id)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []*agentv1.LogLine
	for {
		m, err := c.Next(jetstream.FetchMaxWait(300 * time.Millisecond))
		if err != nil {
			return out
		}
		l := &agentv1.LogLine{}
		if err := proto.Unmarshal(m.Data(), l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
}

// waitLogs waits until the stored lines satisfy ok, and returns them.
func (f *fleet) waitLogs(id, what string, ok func([]*agentv1.LogLine) bool) []*agentv1.LogLine {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		lines := f.logs(id)
		if ok(lines) {
			return lines
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, l := range lines {
				fmt.Fprintf(&b, "  %d %s: %s\n", l.GetSeq(), l.GetSource(), l.GetText())
			}
			f.t.Fatalf("the stored log lines never showed %s:\n%s", what, b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containsLine(lines []*agentv1.LogLine, source, text string) bool {
	for _, l := range lines {
		if l.GetSource() == source && strings.Contains(l.GetText(), text) {
			return true
		}
	}
	return false
}

func TestAgentJoinsBootstrapsAndSurvivesAGatewayRestart(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 0)
	const id = "inst-e2e"
	cfg := f.startAgent(id, 200*time.Millisecond)

	f.observed.WaitFor(t, 15*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected().GetVmId() == testkit.FakeVM(id)
	})
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "agent.crt")); err != nil {
		t.Fatalf("the agent saved no certificate: %v", err)
	}
	f.command(id, &agentv1.Command{Id: testkit.FakeVM(id), Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{
		InstanceName: "alpha",
		NodeVersion:  "local-1",
		SetupActions: []*inventoryv1.SetupAction{
			{Type: "env", Name: "ROLE", Value: "primary"},
			{Type: "script", Script: `echo "setting up $ROLE in $FLOTILLA_DATA_DIR"; head -c 100000 /dev/zero > blob`},
			{Type: "file", Path: "etc/node.conf", Content: "role=primary\n"},
		},
	}}})
	done := f.observed.WaitFor(t, 20*time.Second, "done", func(ev *agentv1.AgentEvent) bool {
		p := ev.GetProgress()
		return p.GetCommandId() == testkit.FakeVM(id) && (p.GetStep() == "done" || p.GetStatus() == "failed")
	})
	if done.GetProgress().GetStatus() != "succeeded" {
		t.Fatalf("bootstrap ended with %v", done.GetProgress())
	}
	var steps []string
	for _, ev := range f.observed.Events() {
		if p := ev.GetProgress(); p != nil && p.GetStatus() != "started" {
			steps = append(steps, p.GetStep())
		}
	}
	if want := "running-setup,running-setup,running-setup,installing,starting,done"; strings.Join(steps, ",") != want {
		t.Errorf("steps %q, want %s", steps, want)
	}

	hb := f.observed.WaitFor(t, 5*time.Second, "heartbeat with the node URL", func(ev *agentv1.AgentEvent) bool {
		return ev.GetHeartbeat().GetNodeUrl() != "" && ev.GetHeartbeat().GetDiskUsedBytes() >= 100000
	}).GetHeartbeat()
	if hb.GetDiskTotalBytes() != 2<<30 || hb.GetAgentVersion() == "" || hb.GetPrivateIp() != "127.0.0.1" {
		t.Errorf("heartbeat = %v", hb)
	}
	nodeURL := hb.GetNodeUrl()
	visit := func(n int) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("%s?visit=%d", nodeURL, n))
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if !strings.Contains(string(page), "Flotilla instance alpha") {
			t.Fatalf("node page = %q", page)
		}
	}
	visit(0)
	f.waitLogs(id, "setup output and the node's request log", func(lines []*agentv1.LogLine) bool {
		return containsLine(lines, agent.SourceSetup, "setting up primary in "+cfg.DataDir) &&
			containsLine(lines, agent.SourceNode, "visit=0")
	})

	// The gateway goes away while the node keeps logging; the agent comes
	// back by itself and what it logged meanwhile is stored, once.
	connects := f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetConnected() != nil })
	visit(1) // logged just before the gateway stops: possibly sent, never confirmed
	f.restartGateway()
	for n := 2; n < 6; n++ {
		visit(n)
	}
	f.observed.WaitFor(t, 20*time.Second, "reconnected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected() != nil && f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetConnected() != nil }) > connects
	})
	reconnected := f.observed.Events()
	if last := reconnected[len(reconnected)-1]; last.GetConnected() != nil && last.GetConnected().GetCompletedCommandId() != testkit.FakeVM(id) {
		t.Errorf("hello after the reconnect = %v, want completed command %s", last.GetConnected(), testkit.FakeVM(id))
	}
	visit(6)
	lines := f.waitLogs(id, "every visit", func(lines []*agentv1.LogLine) bool {
		for n := range 7 {
			if !containsLine(lines, agent.SourceNode, fmt.Sprintf("visit=%d ", n)) {
				return false
			}
		}
		return true
	})
	seen := map[uint64]bool{}
	for _, l := range lines {
		if seen[l.GetSeq()] {
			t.Errorf("line %d stored twice: %q", l.GetSeq(), l.GetText())
		}
		seen[l.GetSeq()] = true
	}
	// The agent still takes commands on the new gateway.
	f.command(id, &agentv1.Command{Id: testkit.FakeVM(id), Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{InstanceName: "alpha"}}})
	f.observed.WaitFor(t, 10*time.Second, "done again", func(ev *agentv1.AgentEvent) bool {
		p := ev.GetProgress()
		return p.GetCommandId() == testkit.FakeVM(id) && p.GetStep() == "done" && ev.GetTime().AsTime().After(time.Now().Add(-5*time.Second))
	})
}

// TestARefusedAgentForgetsItsTLSSessions: an agent the gateway refuses
// (here: its instance deprovisioned) drops its TLS sessions, so its next
// stream makes a new one instead of resuming what a refused stream held.
func TestARefusedAgentForgetsItsTLSSessions(t *testing.T) {
	t.Parallel()
	f := newFleet(t, time.Hour)
	const id = "inst-forget"
	logs := &testkit.Buffer{}
	f.mu.Lock()
	f.gwLogs = logs
	f.mu.Unlock()
	f.restartGateway() // from here on, its log is read
	// connects lists, in order, whether each of the agent's streams the
	// gateway served resumed a TLS session.
	connects := func() []bool {
		var out []bool
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `msg="agent connected"`) && strings.Contains(l, "instance_id="+id) {
				out = append(out, strings.Contains(l, "tls_resumed=true"))
			}
		}
		return out
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the gateway's log:\n%s", logs.String())
		}
	})

	f.startAgent(id, 200*time.Millisecond)
	testkit.WaitFor(t, 20*time.Second, "the first stream", func() bool { return len(connects()) == 1 })
	f.restartGateway()
	testkit.WaitFor(t, 20*time.Second, "a stream after the restart", func() bool { return len(connects()) == 2 })
	if !connects()[1] {
		t.Fatal("the stream after a restart did not resume its TLS session: nothing here would show it forgotten")
	}

	// Refused: the instance is deprovisioned, and the gateway restarts so
	// the agent comes back (resuming) and hears it.
	f.observed.Set(&inventoryv1.Instance{Id: id, State: string(vocab.StateDeprovisioned)})
	f.restartGateway()
	testkit.WaitFor(t, 20*time.Second, "a refusal", func() bool {
		return strings.Contains(logs.String(), `msg="agent refused" service=agentgw instance_id=`+id)
	})
	served := len(connects())
	f.observed.Set(&inventoryv1.Instance{Id: id, Name: id, State: string(vocab.StateProvisioning), VmId: testkit.FakeVM(id)})
	testkit.WaitFor(t, 20*time.Second, "a stream once the instance is back", func() bool { return len(connects()) > served })
	if connects()[served] {
		t.Error("the first stream after a refusal resumed a TLS session the agent held when it was refused")
	}
}

// TestAReleasedAgentStopsItsNodeAndLeaves: told that its instance lets
// the VM go (agent.v1.Release, as the provisioner sends it before stopping
// the VM), the agent stops the node software, closes its stream cleanly
// with its last lines stored, forgets its certificate and the instance,
// and ends: the gateway's answer comes once the stream ended, well before
// the gateway would have cut it.
func TestAReleasedAgentStopsItsNodeAndLeaves(t *testing.T) {
	t.Parallel()
	f := newFleet(t, time.Hour)
	const id = "inst-released"
	cfg := f.startAgent(id, 200*time.Millisecond)
	f.observed.WaitFor(t, 15*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	f.command(id, &agentv1.Command{Id: testkit.FakeVM(id), Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{InstanceName: "alpha"}}})
	nodeURL := f.observed.WaitFor(t, 20*time.Second, "the node URL", func(ev *agentv1.AgentEvent) bool {
		return ev.GetHeartbeat().GetNodeUrl() != ""
	}).GetHeartbeat().GetNodeUrl()
	if resp, err := http.Get(nodeURL); err != nil {
		t.Fatal(err)
	} else {
		_ = resp.Body.Close()
	}

	// The provisioner records the VM as stopping, then releases the agent.
	f.observed.Set(&inventoryv1.Instance{Id: id, Name: id, State: string(vocab.StateDeprovisioning),
		StateDetail: string(vocab.StepStoppingVM), VmId: testkit.FakeVM(id)})
	start := time.Now()
	f.command(id, &agentv1.Command{Id: "release-" + testkit.FakeVM(id),
		Action: &agentv1.Command_Release{Release: &agentv1.Release{Reason: "the instance is deprovisioned"}}})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the release was answered after %v: the agent did not close its stream itself", took)
	}
	f.observed.WaitFor(t, 10*time.Second, "disconnected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetDisconnected().GetReason() == "the agent closed the stream"
	})
	if _, err := http.Get(nodeURL); err == nil {
		t.Error("the node software still answers after the release")
	}
	f.waitLogs(id, "the release", func(lines []*agentv1.LogLine) bool {
		return containsLine(lines, agent.SourceAgent, "released: the instance is deprovisioned; stopping the node software")
	})
	testkit.WaitFor(t, 10*time.Second, "the certificate forgotten", func() bool {
		_, err := os.Stat(filepath.Join(cfg.StateDir, "agent.crt"))
		return os.IsNotExist(err)
	})
	if st, err := os.ReadFile(filepath.Join(cfg.StateDir, "state.json")); err != nil || strings.Contains(string(st), id) {
		t.Errorf("the state after the release: %s %v; want it to name no instance", st, err)
	}
	// It does not come back.
	time.Sleep(time.Second)
	if n := f.observed.Count(func(ev *agentv1.AgentEvent) bool { return ev.GetConnected() != nil }); n != 1 {
		t.Errorf("the agent connected %d times, want once: a released agent leaves", n)
	}
}

// TestRandomBytesFromAScriptBreakNothing: a setup script printing binary
// garbage (not UTF-8, no newlines for a while) does not break the agent's
// stream: the bootstrap succeeds and the lines are stored.
func TestRandomBytesFromAScriptBreakNothing(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 0)
	const id = "inst-bytes"
	f.startAgent(id, 200*time.Millisecond)
	f.observed.WaitFor(t, 15*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	f.command(id, &agentv1.Command{Id: testkit.FakeVM(id), Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{
		InstanceName: "alpha",
		SetupActions: []*inventoryv1.SetupAction{{Type: "script",
			Script: `head -c 64 /dev/urandom; printf '\xff\xfe\n'; head -c 40000 /dev/urandom | tr -d '\n'; echo; echo after-the-garbage`}},
	}}})
	done := f.observed.WaitFor(t, 20*time.Second, "done", func(ev *agentv1.AgentEvent) bool {
		p := ev.GetProgress()
		return p.GetCommandId() == testkit.FakeVM(id) && (p.GetStep() == "done" || p.GetStatus() == "failed")
	})
	if done.GetProgress().GetStatus() != "succeeded" {
		t.Fatalf("bootstrap ended with %v", done.GetProgress())
	}
	lines := f.waitLogs(id, "the line after the garbage", func(ls []*agentv1.LogLine) bool { return containsLine(ls, agent.SourceSetup, "after-the-garbage") })
	for _, l := range lines {
		if !utf8.ValidString(l.GetText()) {
			t.Fatalf("stored an invalid line %q", l.GetText())
		}
	}
}

func TestAgentRenewsItsCertificateWithoutRestarting(t *testing.T) {
	t.Parallel()
	const ttl = 10 * time.Second
	f := newFleet(t, ttl)
	const id = "inst-renew"
	cfg := f.startAgent(id, 200*time.Millisecond)
	f.observed.WaitFor(t, 15*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	first := readCert(t, cfg)
	// Past the first certificate's end, the agent is still connected and
	// sending heartbeats.
	time.Sleep(time.Until(first.NotAfter.Add(time.Second)))
	since := time.Now()
	f.observed.WaitFor(t, 5*time.Second, "heartbeat after the first certificate expired", func(ev *agentv1.AgentEvent) bool {
		return ev.GetHeartbeat() != nil && ev.GetTime().AsTime().After(since)
	})
	now := readCert(t, cfg)
	if now.SerialNumber.Cmp(first.SerialNumber) == 0 || !now.NotAfter.After(first.NotAfter) {
		t.Fatalf("certificate not renewed: serial %x until %s (first: %x until %s)", now.SerialNumber, now.NotAfter, first.SerialNumber, first.NotAfter)
	}
	if id2, err := pki.AgentInstanceID(now); err != nil || id2 != id {
		t.Fatalf("renewed certificate names %q (%v)", id2, err)
	}
	for _, ev := range f.observed.Events() {
		if r := ev.GetDisconnected().GetReason(); strings.Contains(r, "expired") {
			t.Errorf("a stream outlived its certificate: %v", ev)
		}
	}
}

func readCert(t *testing.T, cfg agent.Config) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cfg.StateDir, "agent.crt"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificatesPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// impostor is a server with a certificate the fleet CA issued for the
// agent gateway's names, as any instance could get for its own: it records
// the join tokens sent to it.
type impostor struct {
	agentv1.UnimplementedAgentGatewayServer
	mu     sync.Mutex
	tokens []string
}

func (i *impostor) Join(_ context.Context, r *agentv1.JoinRequest) (*agentv1.JoinResponse, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.tokens = append(i.tokens, r.GetToken())
	return nil, status.Error(codes.Unavailable, "try again")
}

func (i *impostor) heard() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.tokens)
}

// TestAnAgentTalksOnlyToTheAgentGateway: a server whose certificate the
// fleet CA issued (an instance's, say) for the gateway's very names cannot
// pass for the agent gateway: the agent's handshake fails and its join
// token never leaves it. An agent bootstrapped with the fleet CA alone, as
// older managers did, would have sent it.
func TestAnAgentTalksOnlyToTheAgentGateway(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 0)
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := f.ca.Authority().Issue(key.Public(), pki.ServerProfile("localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	imp := &impostor{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{iss.Certificate.Raw}, PrivateKey: key, Leaf: iss.Certificate}}})))
	agentv1.RegisterAgentGatewayServer(srv, imp)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	run := func(bundle []byte) *testkit.Buffer {
		dir := t.TempDir()
		caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
		if err := os.WriteFile(caFile, bundle, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tokenFile, []byte("fjt_not-for-impostors\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		logs := &testkit.Buffer{}
		cfg := agent.Config{GatewayAddr: l.Addr().String(), CAFile: caFile, TokenFile: tokenFile,
			StateDir: filepath.Join(dir, "state"), DataDir: filepath.Join(dir, "data"), DataDiskGB: 1, VMID: "vm-x",
			NodeBinary: agent.NodeHelper(), PackageInstaller: agent.NoPackageInstaller,
			Log: slog.New(slog.NewTextHandler(logs, nil))}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- agent.Run(ctx, cfg) }()
		t.Cleanup(func() { cancel(); <-done })
		return logs
	}
	logs := run(f.ca.GatewayAuthority().CertificatePEM())
	testkit.WaitFor(t, 20*time.Second, "the agent to refuse the impostor", func() bool { return strings.Contains(logs.String(), "not the agent gateway") })
	if got := imp.heard(); len(got) != 0 {
		t.Fatalf("the impostor heard join tokens %q", got)
	}
	run(f.ca.Authority().CertificatePEM())
	testkit.WaitFor(t, 20*time.Second, "an agent with the fleet CA alone to be fooled", func() bool { return len(imp.heard()) > 0 })
}
