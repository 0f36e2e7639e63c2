package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
)

// testAgent is an agent with its own directories and a throwaway CA, not
// connected to any gateway: a stub stands in for the stream (see answer).
type testAgent struct {
	*agent
	ca      *pki.Authority
	secrets map[string]string
	// acme plays the manager's ACME part (acme_test.go); guarded by mu.
	acme *acmeManager
	// serverTTL is how long the server certificates it issues last (an
	// hour unless a test sets it before asking).
	serverTTL atomic.Int64

	mu       sync.Mutex
	progress []*agentv1.Progress
}

func newTestAgent(t *testing.T) *testAgent {
	t.Helper()
	ca, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Config{
		GatewayAddr: "127.0.0.1:1", CAFile: caFile, StateDir: filepath.Join(dir, "state"), DataDir: filepath.Join(dir, "data"),
		DataDiskGB: 1, VMID: "vm-test", NodeBinary: NodeHelper(), PackageInstaller: NoPackageInstaller, Log: testLog(t),
	}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{agent: a, ca: ca, secrets: map[string]string{}, acme: newACMEManager(t)}
	ta.serverTTL.Store(int64(time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go ta.serve(ctx, done)
	t.Cleanup(func() {
		cancel()
		<-done
		a.node.Stop()
	})
	return ta
}

// serve plays the gateway's part: it takes what the agent queues for the
// stream, records progress and answers secret and certificate requests.
func (ta *testAgent) serve(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		ta.mu.Lock() // settle waits for what is popped to be recorded
		for m := ta.out.Pop(); m != nil; m = ta.out.Pop() {
			switch b := m.GetBody().(type) {
			case *agentv1.AgentMessage_Progress:
				ta.progress = append(ta.progress, b.Progress)
			case *agentv1.AgentMessage_SecretRequest:
				r := &agentv1.SecretResponse{RequestId: b.SecretRequest.GetRequestId()}
				if v, ok := ta.secrets[b.SecretRequest.GetName()]; ok {
					r.Value = []byte(v)
				} else {
					r.Error = `secret "` + b.SecretRequest.GetName() + `" not found`
				}
				ta.answer(r.RequestId, &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_SecretResponse{SecretResponse: r}})
			case *agentv1.AgentMessage_ServerCertRequest:
				r := &agentv1.ServerCertResponse{RequestId: b.ServerCertRequest.GetRequestId()}
				csr, err := pki.ParseCSR(b.ServerCertRequest.GetCsrDer())
				if err == nil {
					var iss *pki.Issued
					iss, err = ta.ca.Issue(csr.PublicKey, pki.ServerProfile("node.test", []string{"node.test"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Duration(ta.serverTTL.Load())))
					if err == nil {
						r.CertificatePem, r.CaPem = string(iss.PEM), string(ta.ca.CertificatePEM())
					}
				}
				if err != nil {
					r.Error = err.Error()
				}
				ta.answer(r.RequestId, &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_ServerCertResponse{ServerCertResponse: r}})
			case *agentv1.AgentMessage_AcmeRequest:
				r := ta.acme.answer(b.AcmeRequest)
				ta.answer(r.RequestId, &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_AcmeResponse{AcmeResponse: r}})
			}
		}
		ta.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-ta.out.Notify():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// settle waits until serve has taken every queued message, and returns
// with ta.mu held.
func (ta *testAgent) settle() {
	for {
		ta.mu.Lock()
		ta.out.mu.Lock()
		n := len(ta.out.items)
		ta.out.mu.Unlock()
		if n == 0 {
			return
		}
		ta.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

// steps returns the progress reported so far as "step status index".
func (ta *testAgent) steps(t *testing.T) []string {
	t.Helper()
	ta.settle()
	defer ta.mu.Unlock()
	var out []string
	for _, p := range ta.progress {
		s := p.GetStep() + " " + p.GetStatus()
		if vocab.Step(p.GetStep()) == vocab.StepRunningSetup {
			s += " " + string(rune('0'+p.GetActionIndex()))
		}
		out = append(out, s)
	}
	return out
}

// lastProgress returns the last progress reported.
func (ta *testAgent) lastProgress() *agentv1.Progress {
	ta.settle()
	defer ta.mu.Unlock()
	if len(ta.progress) == 0 {
		return nil
	}
	return ta.progress[len(ta.progress)-1]
}

// logText returns every buffered log line of source, joined by newlines.
func (ta *testAgent) logText(source string) string {
	var b strings.Builder
	for _, l := range ta.logs.Next(1<<20, 1<<20) {
		if l.GetSource() == source {
			b.WriteString(l.GetText() + "\n")
		}
	}
	return b.String()
}

func TestSetupActionsRunInOrder(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	dataDir := ta.cfg.DataDir
	ta.bootstrap(t.Context(), "cmd-1", &agentv1.Bootstrap{
		InstanceName: "alpha",
		SetupActions: []*inventoryv1.SetupAction{
			{Type: "env", Name: "GREETING", Value: "hello"},
			{Type: "script", Script: `echo "$GREETING from $FLOTILLA_DATA_DIR in $(pwd)"; echo "to stderr" >&2; mkdir -p made`},
			{Type: "file", Path: "conf/app.conf", Content: "port=1\n", Mode: "0600"},
			{Type: "file", Path: "made/plain.txt", Content: "plain"},
			{Type: "packages", Packages: []string{"curl", "jq"}},
			{Type: "script", Script: `test "$(cat conf/app.conf)" = "port=1" && echo "saw the file"`},
			{Type: "script", Script: "echo about to fail; exit 3"},
			{Type: "file", Path: "never.txt", Content: "x"},
		},
	})
	want := []string{
		"running-setup started 0", "running-setup succeeded 0",
		"running-setup started 1", "running-setup succeeded 1",
		"running-setup started 2", "running-setup succeeded 2",
		"running-setup started 3", "running-setup succeeded 3",
		"running-setup started 4", "running-setup succeeded 4",
		"running-setup started 5", "running-setup succeeded 5",
		"running-setup started 6", "running-setup failed 6",
	}
	if got := ta.steps(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("progress:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if msg := ta.lastProgress().GetMessage(); msg != "setupActions[6]: script exited with code 3" {
		t.Errorf("failure message %q does not name the action and give the exit code", msg)
	}

	logs := ta.logText(SourceSetup)
	for _, w := range []string{
		"hello from " + dataDir + " in " + dataDir, "to stderr", "saw the file", "about to fail",
		"would install packages curl jq",
	} {
		if !strings.Contains(logs, w) {
			t.Errorf("setup logs lack %q:\n%s", w, logs)
		}
	}
	for path, mode := range map[string]os.FileMode{"conf/app.conf": 0o600, "made/plain.txt": 0o644} {
		fi, err := os.Stat(filepath.Join(dataDir, path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "never.txt")); !os.IsNotExist(err) {
		t.Error("an action after the failed one ran")
	}
	if ta.state.Get().CompletedCommandID != "" {
		t.Error("a failed bootstrap was recorded as completed")
	}
}

func TestFilePathsStayOnTheDataDisk(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	outside := t.TempDir()
	for i, act := range []*inventoryv1.SetupAction{
		{Type: "file", Path: "../escaped.txt", Content: "x"},
		{Type: "file", Path: filepath.Join(outside, "absolute.txt"), Content: "x"},
		{Type: "file", Path: "a/../../escaped.txt", Content: "x"},
		{Type: "file", Path: "", Content: "x"},
		{Type: "file", Path: "ok.txt", Content: "x", Mode: "rwx"},
	} {
		if err := (&setupRunner{dataDir: ta.cfg.DataDir, log: func(string, string) {}}).run(t.Context(), act); err == nil {
			t.Errorf("action %d (%q) was accepted", i, act.GetPath())
		}
	}
	// A symbolic link made by a script does not lead a file action out.
	if err := os.Symlink(outside, filepath.Join(ta.cfg.DataDir, "link")); err != nil {
		t.Fatal(err)
	}
	err := (&setupRunner{dataDir: ta.cfg.DataDir, log: func(string, string) {}}).run(t.Context(),
		&inventoryv1.SetupAction{Type: "file", Path: "link/through.txt", Content: "x"})
	if err == nil {
		t.Error("a file was written through a symbolic link")
	}
	entries, _ := os.ReadDir(outside)
	if len(entries) != 0 {
		t.Fatalf("files appeared outside the data disk: %v", entries)
	}
}

func TestSecretsAreResolvedAndMasked(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.secrets["db-password"] = "s3cr3t-value"
	ta.bootstrap(t.Context(), "cmd-s", &agentv1.Bootstrap{
		InstanceName: "alpha",
		SetupActions: []*inventoryv1.SetupAction{
			{Type: "env", Name: "DB_PASSWORD", Value: "${secret:db-password}"},
			{Type: "file", Path: "db.conf", Content: "password=${secret:db-password}\n", Mode: "0600"},
			{Type: "script", Script: `echo "script sees $DB_PASSWORD and ${secret:db-password}"`},
			{Type: "script", Script: `echo ${secret:missing}`},
		},
	})
	data, err := os.ReadFile(filepath.Join(ta.cfg.DataDir, "db.conf"))
	if err != nil || string(data) != "password=s3cr3t-value\n" {
		t.Fatalf("db.conf = %q, %v", data, err)
	}
	last := ta.lastProgress()
	if vocab.Progress(last.GetStatus()) != vocab.ProgressFailed || last.GetActionIndex() != 3 || strings.Count(last.GetMessage(), `"missing"`) != 1 {
		t.Fatalf("last progress = %v, want action 3 failed naming the missing secret, once", last)
	}
	var all strings.Builder
	for _, l := range ta.logs.Next(1<<20, 1<<20) {
		all.WriteString(l.GetText() + "\n")
	}
	if strings.Contains(all.String(), "s3cr3t-value") {
		t.Fatalf("a secret value reached the logs:\n%s", all.String())
	}
	if !strings.Contains(all.String(), "script sees **** and ****") {
		t.Fatalf("the script's output is missing or unmasked:\n%s", all.String())
	}
}

func TestBootstrapStartsTheNodeSoftwareOverHTTPS(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	b := &agentv1.Bootstrap{InstanceName: "alpha", NodeVersion: "1.2.3", HttpsStrategy: "self-signed"}
	ta.bootstrap(t.Context(), "cmd-h", b)
	want := []string{"installing started", "installing succeeded", "starting started", "starting succeeded", "done succeeded"}
	if got := ta.steps(t); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("progress %q, want %q (last: %v)", got, want, ta.lastProgress())
	}
	url := ta.node.URL()
	if !strings.HasPrefix(url, "https://127.0.0.1:") || ta.lastProgress().GetMessage() != url {
		t.Fatalf("node URL %q, done message %q", url, ta.lastProgress().GetMessage())
	}
	st := ta.state.Get()
	if st.CompletedCommandID != "cmd-h" || st.Node == nil || st.Node.CertFile == "" {
		t.Fatalf("state = %+v", st)
	}
	for _, f := range []string{st.Node.CertFile, st.Node.KeyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	page := get(t, url, ta.ca.Pool(), "node.test")
	if !strings.Contains(page, "Flotilla instance alpha") {
		t.Fatalf("page = %q", page)
	}

	// The same command again only reports done; StopNode stops the node.
	ta.mu.Lock()
	ta.progress = nil
	ta.mu.Unlock()
	ta.bootstrap(t.Context(), "cmd-h", b)
	if got := ta.steps(t); len(got) != 1 || got[0] != "done succeeded" {
		t.Fatalf("repeated bootstrap reported %q", got)
	}
	ta.stopNode(t.Context(), "cmd-stop")
	if ta.node.URL() != "" {
		t.Fatal("the node software still has a URL after StopNode")
	}
	if _, err := http.Get(strings.Replace(url, "https", "http", 1)); err == nil {
		t.Fatal("the node software still answers after StopNode")
	}
	if !strings.Contains(ta.logText(SourceNode), "GET / 200") {
		t.Error("the node software's request log did not reach the logs")
	}
}

// TestTheFleetCACertificateIsRenewedBeforeItEnds: the node's certificate
// from the fleet CA ("self-signed") is the agent's to renew: at two thirds
// of its lifetime, and at once on :refresh-certificate, each served from
// the next handshake and reported as renewing-certificate progress. A
// state file from before the agent renewed them has its certificate
// marked as the fleet CA's at start.
func TestTheFleetCACertificateIsRenewedBeforeItEnds(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.serverTTL.Store(int64(3 * time.Second))
	go ta.certLoop(t.Context())
	ta.bootstrap(t.Context(), "cmd-ca", &agentv1.Bootstrap{InstanceName: "alpha", NodeVersion: "1.2.3", HttpsStrategy: "self-signed"})
	if st := ta.state.Get(); st.Node == nil || !st.Node.FleetCA {
		t.Fatalf("the node's certificate is not marked the fleet CA's: %+v (last progress %v)", st.Node, ta.lastProgress())
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(ta.node.URL(), "https://"), "/")
	first := leafAt(t, addr, ta.ca.Pool())

	// Before the first ends (3 s), a second is served, and a third.
	seen := []*x509.Certificate{first}
	for deadline := first.NotAfter; len(seen) < 3; time.Sleep(100 * time.Millisecond) {
		if now := leafAt(t, addr, ta.ca.Pool()); !now.Equal(seen[len(seen)-1]) {
			seen = append(seen, now)
			deadline = now.NotAfter
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate %d was not renewed before it ended at %s\n%s", len(seen), deadline, ta.logText(SourceAgent))
		}
	}
	if !strings.Contains(strings.Join(ta.steps(t), ","), "renewing-certificate succeeded") {
		t.Errorf("no renewal reported: %v", ta.steps(t))
	}

	// :refresh-certificate renews now, whatever the lifetime left.
	ta.serverTTL.Store(int64(time.Hour))
	for before := leafAt(t, addr, ta.ca.Pool()); time.Until(before.NotAfter) < 30*time.Minute; before = leafAt(t, addr, ta.ca.Pool()) {
		time.Sleep(100 * time.Millisecond) // the next renewal issues an hour's
	}
	long := leafAt(t, addr, ta.ca.Pool())
	ta.refreshCertificate(t.Context(), "cmd-refresh", &agentv1.RefreshCertificate{})
	for deadline := time.Now().Add(10 * time.Second); leafAt(t, addr, ta.ca.Pool()).Equal(long); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the node still serves serial %v after :refresh-certificate\n%s", long.SerialNumber, ta.logText(SourceAgent))
		}
	}

	// Heartbeats say when the served certificate ends.
	served := leafAt(t, addr, ta.ca.Pool())
	if end := ta.heartbeat().GetHeartbeat().GetNodeCertificateNotAfter(); end == nil || !end.AsTime().Equal(served.NotAfter) {
		t.Errorf("a heartbeat says the node certificate ends %v, want %v", end, served.NotAfter)
	}

	// An older agent's state file has no mark; the certificate chains to
	// the fleet CA, so it is the agent's to renew.
	if err := ta.state.Update(func(s *state) { s.Node.FleetCA = false }); err != nil {
		t.Fatal(err)
	}
	if err := ta.adoptFleetCACert(); err != nil || !ta.state.Get().Node.FleetCA {
		t.Fatalf("an older state's fleet CA certificate: marked %t, %v", ta.state.Get().Node.FleetCA, err)
	}
}

// get fetches url over HTTPS, verifying the server as serverName against roots.
func get(t *testing.T, url string, roots *x509.CertPool, serverName string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName},
	}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// TestASecretIsDataNeverCode: a secret whose value is shell syntax reaches
// a script as the value of a variable, quoted or not, and never runs.
func TestASecretIsDataNeverCode(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.secrets["s"] = `x; id #`
	ta.secrets["t"] = `$(id) ` + "`id`"
	ta.bootstrap(t.Context(), "cmd-inj", &agentv1.Bootstrap{InstanceName: "alpha", SetupActions: []*inventoryv1.SetupAction{
		{Type: "script", Script: `echo "quoted: ${secret:s}" > out.txt; echo unquoted: ${secret:s} >> out.txt; echo "again: ${secret:t} ${secret:s}" >> out.txt`},
	}})
	data, err := os.ReadFile(filepath.Join(ta.cfg.DataDir, "out.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := "quoted: x; id #\nunquoted: x; id #\nagain: $(id) `id` x; id #\n"
	if string(data) != want || strings.Contains(string(data), "uid=") {
		t.Fatalf("out.txt = %q, want %q", data, want)
	}
	if logs := ta.logText(SourceSetup); strings.Contains(logs, "uid=") {
		t.Fatalf("a secret ran as code:\n%s", logs)
	}
}

// TestSecretsRestOnlyWhereTheyMust: a file holding a secret is 0600 in 0700
// directories, whatever mode the action asked for; the agent's state file
// keeps the reference, not the value, and the node software still gets the
// value (fetched again when it starts).
func TestSecretsRestOnlyWhereTheyMust(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.secrets["db-password"] = "s3cr3t-value"
	ta.bootstrap(t.Context(), "cmd-rest", &agentv1.Bootstrap{InstanceName: "alpha", SetupActions: []*inventoryv1.SetupAction{
		{Type: "file", Path: "conf/db/app.env", Content: "PASSWORD=${secret:db-password}\n", Mode: "0644"},
		{Type: "file", Path: "conf/plain.txt", Content: "hello\n", Mode: "0644"},
		{Type: "env", Name: "DB_PASSWORD", Value: "${secret:db-password}"},
	}})
	if last := ta.lastProgress(); vocab.Step(last.GetStep()) != vocab.StepDone || vocab.Progress(last.GetStatus()) != vocab.ProgressSucceeded {
		t.Fatalf("bootstrap ended with %v", last)
	}
	for path, want := range map[string]os.FileMode{"conf/db/app.env": 0o600, "conf/plain.txt": 0o644, "conf": 0o700, "conf/db": 0o700} {
		fi, err := os.Stat(filepath.Join(ta.cfg.DataDir, path))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %04o", path, fi, err, want)
		}
	}
	state, err := os.ReadFile(filepath.Join(ta.cfg.StateDir, stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(state), "s3cr3t-value") || !strings.Contains(string(state), "${secret:db-password}") {
		t.Fatalf("state file holds %s", state)
	}
	ta.node.mu.Lock()
	pid := ta.node.cur.cmd.Process.Pid
	ta.node.mu.Unlock()
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env), "DB_PASSWORD=s3cr3t-value\x00") {
		t.Fatal("the node software did not get the secret in its environment")
	}
}

// TestScriptsGetAMinimalEnvironment: nothing of the agent's environment
// but a few basics reaches a setup script (the manager's FLOTILLA_* least
// of all).
func TestScriptsGetAMinimalEnvironment(t *testing.T) {
	t.Setenv("FLOTILLA_NATS_CREDS", "/manager/config/bus/provisioner.creds")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "from-the-image")
	ta := newTestAgent(t)
	ta.bootstrap(t.Context(), "cmd-env", &agentv1.Bootstrap{InstanceName: "alpha", SetupActions: []*inventoryv1.SetupAction{
		{Type: "script", Script: `env > env.txt`},
	}})
	data, err := os.ReadFile(filepath.Join(ta.cfg.DataDir, "env.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		name, _, _ := strings.Cut(line, "=")
		if !slices.Contains(inherited, name) && name != DataDirEnv && name != "PWD" && name != "SHLVL" && name != "_" {
			t.Errorf("a script sees %s", line)
		}
	}
}
