// Package hatest runs the HA cluster of deployments/cluster (three hosts in
// network namespaces, HAProxy in front) under load, injects faults one after
// another, and checks what survives: `make test-ha` (root, Debian's
// etcd-server, patroni, postgresql-15, haproxy). It measures how long each
// fault is felt and writes the figures to the test log (and to
// $FLOTILLA_HA_REPORT as JSON) for docs/ha.md; it asserts on what must never
// happen, not on times.
package hatest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	instances     = 20
	writeInterval = 100 * time.Millisecond // API writes at 10/s
	settleWithin  = 60 * time.Second       // after a fault ends, every instance running again within this
	adminPassword = "S3cret-pass-ha-test"
)

// ticker is the setup script of every instance: it leaves one curl behind
// that asks the instance's node software for /tick/0, /tick/1, ... five times
// a second, so every node logs a numbered request line after another
// through whatever faults follow, and no number may go missing from its
// logs. It finds its node's port in its agent's state (the only VM
// directory its user may read).
const ticker = `(
  p=
  while [ -z "$p" ]; do
    p=$(cat ../../vms/*/state/state.json 2>/dev/null | sed -n 's/.*"port": *\([0-9][0-9]*\).*/\1/p' | head -1)
    [ -n "$p" ] || sleep 0.5
  done
  exec curl -s --rate 5/s --retry 20 --retry-connrefused --retry-delay 1 "http://127.0.0.1:$p/tick/[0-9999]"
) >/dev/null 2>&1 &
echo ticker started`

type fault struct {
	name   string
	inject func(t *testing.T, c *cluster, before status) (recover func())
	// lasts is how long the fault is left in place before recover.
	lasts time.Duration
}

type figures struct {
	Fault string `json:"fault"`
	// APIUnavailableSeconds is the longest time, from the fault on, in which
	// no API write succeeded through HAProxy.
	APIUnavailableSeconds float64 `json:"apiUnavailableSeconds"`
	FailedWrites          int     `json:"failedWrites"`
	// AgentsBackSeconds: from the fault until the last agent whose stream
	// broke was connected again (0 when none broke).
	AgentsBackSeconds float64 `json:"agentsBackSeconds"`
	AgentsLost        int     `json:"agentsLost"`
	// LeaderSeconds: from the fault until the component it hit had a new
	// leader (PostgreSQL, JetStream meta), where that applies.
	LeaderSeconds float64 `json:"leaderSeconds,omitempty"`
	// SettledSeconds: from the fault's end until every instance was running
	// with its agent connected.
	SettledSeconds float64 `json:"settledSeconds"`
	// RejoinedSeconds (a host removed and added back): from its start
	// until its NATS server held a replica of every stream and its six
	// managers were healthy.
	RejoinedSeconds float64 `json:"rejoinedSeconds,omitempty"`
	// AuditLate counts the API calls whose audit records the gateways
	// could not store within the call (stored later, in the background),
	// AuditNotWritten those given up.
	AuditLate       int `json:"auditLate"`
	AuditNotWritten int `json:"auditNotWritten"`
}

func TestFailoverUnderLoad(t *testing.T) {
	if os.Getenv("FLOTILLA_HA_TEST") == "" {
		t.Skip("make test-ha runs this: a three-host cluster in network namespaces (root, etcd, Patroni, HAProxy)")
	}
	c := startCluster(t)
	// A steady start: every replica cloned and streaming before the first
	// fault (a Patroni replica that lost the race to initialize the cluster
	// clones from the leader, once for over two minutes), so no fault's
	// figures measure the clone too.
	c.waitHealthy(t, 5*time.Minute)
	api := c.login(t)
	api.checkClusterView(t)

	net := api.mustCreate(t, "/networks", map[string]any{"name": "ha", "provider": "local", "httpsStrategy": "none"})
	tpl := api.mustCreate(t, "/templates", map[string]any{"name": "ticker", "provider": "local", "dataDiskGb": 1,
		"setupActions": []map[string]any{{"type": "script", "script": ticker}}})
	var ids []string
	for i := range instances {
		ids = append(ids, api.mustCreate(t, "/instances", map[string]any{"name": fmt.Sprintf("ha-%02d", i), "kind": "design",
			"templateId": tpl, "networkId": net}))
	}

	w := startWriter(t, api)
	// The first fault hits while the instances are being provisioned: the
	// work of the killed provisioner must be taken over, once.
	for _, id := range ids {
		api.mustDo(t, "POST", "/instances/"+id+":provision", nil, http.StatusOK)
	}
	faults := []fault{
		{name: "SIGKILL of one host's six services (during provisioning)", lasts: 15 * time.Second,
			inject: func(t *testing.T, c *cluster, _ status) func() {
				c.run(t, "kill", "h1", "services")
				return func() { c.run(t, "start", "h1", "services") }
			}},
		{name: "SIGKILL of the JetStream meta leader's NATS server", lasts: 15 * time.Second,
			inject: func(t *testing.T, c *cluster, before status) func() {
				h := before.leader(t, "nats", "meta-leader")
				c.run(t, "kill", h, "nats")
				return func() { c.run(t, "start", h, "nats") }
			}},
		{name: "SIGKILL of the PostgreSQL leader (Patroni and PostgreSQL)", lasts: 20 * time.Second,
			inject: func(t *testing.T, c *cluster, before status) func() {
				h := before.leader(t, "postgres", "leader")
				c.run(t, "kill", h, "postgres")
				return func() { c.run(t, "start", h, "postgres") }
			}},
		// The host of PostgreSQL's synchronous standby, which every commit
		// waits for (not the leader's: its loss is the fault before).
		{name: "30 s partition of one host (the PostgreSQL synchronous standby's), then heal", lasts: 30 * time.Second,
			inject: func(t *testing.T, c *cluster, _ status) func() {
				h := api.clusterView(t).database(t, "sync_standby")
				c.run(t, "partition", h)
				return func() { c.run(t, "heal", h) }
			}},
		// Only the database is lost, by one host whose bus is fine: its
		// services, not ready, step out of their queue groups for the
		// others (rather than answer their share "not ready").
		{name: "30 s: one host's packets to PostgreSQL dropped (its bus and API fine)", lasts: 30 * time.Second,
			inject: func(t *testing.T, c *cluster, _ status) func() {
				c.run(t, "cut-db", "h2")
				c.wantDatabase(t, "h2", "cut")
				return func() {
					c.run(t, "restore-db", "h2")
					c.wantDatabase(t, "h2", "up")
				}
			}},
	}
	var report []figures
	for i, f := range faults {
		if i > 0 {
			api.waitAllRunning(t, ids, 3*time.Minute) // a steady start for each fault
		}
		t.Logf("fault: %s (leaders before: %s)", f.name, api.clusterView(t).leaders())
		logsAt := c.gatewayLogSizes()
		before := c.status(t)
		start := time.Now()
		recover := f.inject(t, c, before)
		fig := figures{Fault: f.name}
		switch {
		case strings.Contains(f.name, "meta leader"):
			fig.LeaderSeconds = c.waitNewLeader(t, before, "nats", "meta-leader", start)
		case strings.Contains(f.name, "PostgreSQL leader"):
			fig.LeaderSeconds = c.waitNewLeader(t, before, "postgres", "leader", start)
		}
		time.Sleep(time.Until(start.Add(f.lasts)))
		recover()
		end := time.Now()
		settled := api.waitAllRunning(t, ids, settleWithin)
		fig.SettledSeconds = settled.Sub(end).Seconds()
		c.waitHealthy(t, 2*time.Minute)
		c.measure(t, api, w, ids, &fig, start, logsAt)
		report = append(report, fig)
	}
	report = append(report, c.removeAndAddBack(t, api, w, ids, "h3"))
	c.backUp(t, "h2")
	acked := w.stop()
	// Every write the API acknowledged is there.
	for _, id := range acked {
		if code, body := api.do("GET", "/networks/"+id, nil); code != http.StatusOK {
			t.Errorf("acknowledged network %s: GET answered %d %s", id, code, body)
		}
	}
	t.Logf("%d acknowledged writes read back", len(acked))
	// Every line each instance printed is there, none missing. Lines an
	// agent still holds (not yet acknowledged to it) are sent again by it:
	// give them a minute.
	deadline := time.Now().Add(time.Minute)
	for _, id := range ids {
		for !api.checkTicks(t, id, time.Now().After(deadline)) {
			time.Sleep(2 * time.Second)
		}
	}
	// Every API call's audit record is stored: late ones in the
	// background, once the audit stream has a leader again.
	late, stored := c.gatewayLines(nil, `"msg":"audit record late`), c.gatewayLines(nil, `"msg":"late audit record stored"`)
	t.Logf("%d audit records late, %d of them stored since", len(late), len(stored))
	if lost := c.gatewayLines(nil, `"msg":"audit record not written"`); len(lost) > 0 {
		t.Errorf("%d audit records not written:\n%s", len(lost), strings.Join(lost, ""))
	}
	logReport(t, report)
}

// removeAndAddBack plays a host lost for good: `local-cluster remove`
// (SIGKILL, then flotilla cluster managers remove and brokers remove), a
// check that the cluster no longer lists it while it carries on with two,
// then `local-cluster start` adding it back: its managers are listed again
// and its NATS server is given a replica of every stream again (NATS
// admits a removed server's name after five minutes).
func (c *cluster) removeAndAddBack(t *testing.T, api *client, w *writer, ids []string, host string) figures {
	t.Helper()
	api.waitAllRunning(t, ids, 3*time.Minute)
	fig := figures{Fault: "host lost for good: removed (managers, NATS server), then added back"}
	t.Logf("fault: %s (leaders before: %s)", fig.Fault, api.clusterView(t).leaders())
	logsAt := c.gatewayLogSizes()
	start := time.Now()
	c.run(t, "remove", host)
	cl := api.clusterView(t)
	for _, m := range cl.Managers {
		if m.Host == host {
			t.Errorf("after remove %s: manager %s of %s still listed", host, m.Name, host)
		}
	}
	for _, s := range cl.Streams {
		for _, r := range s.Replicas {
			if r.Name == host {
				t.Errorf("after remove %s: stream %s still has a replica on it", host, s.Name)
			}
		}
	}
	settled := api.waitAllRunning(t, ids, settleWithin) // agents of its VMs moved to the others
	fig.SettledSeconds = settled.Sub(start).Seconds()
	c.run(t, "start", host)
	started := time.Now()
	deadline := started.Add(8 * time.Minute)
	for {
		cl := api.clusterView(t)
		managers, streams := 0, 0
		for _, m := range cl.Managers {
			if m.Host == host && m.Healthy {
				managers++
			}
		}
		for _, s := range cl.Streams {
			if s.Leader == host || slices.ContainsFunc(s.Replicas, func(r replicaView) bool { return r.Name == host && r.Current }) {
				streams++
			}
		}
		if managers == 6 && len(cl.Streams) > 0 && streams == len(cl.Streams) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s added back: after %v, %d of its managers healthy (want 6), a replica of %d of %d streams", host,
				time.Since(started).Round(time.Second), managers, streams, len(cl.Streams))
		}
		time.Sleep(5 * time.Second)
	}
	fig.RejoinedSeconds = time.Since(started).Seconds()
	c.waitHealthy(t, 2*time.Minute)
	api.waitAllRunning(t, ids, settleWithin)
	c.measure(t, api, w, ids, &fig, start, logsAt)
	return fig
}

// measure completes a fault's figures once the cluster is whole again
// (the fault began at start, when the gateways' logs were logsAt long):
// how long writes were unavailable and how many failed, which agents'
// streams broke and when the last was back; it logs the writes that failed
// or were slow and what the gateways said of their status, and checks that
// no instance has two VMs.
func (c *cluster) measure(t *testing.T, api *client, w *writer, ids []string, fig *figures, start time.Time, logsAt map[string]int64) {
	t.Helper()
	time.Sleep(3 * time.Second) // writes and agents after the fault
	fig.APIUnavailableSeconds, fig.FailedWrites = w.outage(start, time.Now())
	fig.AgentsLost, fig.AgentsBackSeconds = api.agentsReconnected(t, ids, start)
	fig.AuditLate = len(c.gatewayLines(logsAt, `"msg":"audit record late`))
	fig.AuditNotWritten = len(c.gatewayLines(logsAt, `"msg":"audit record not written"`))
	t.Logf("figures: %+v", fig)
	w.logSlowOrFailed(t, start)
	c.logGatewayStatus(t, logsAt)
	c.checkOneVMPerInstance(t, api, ids)
}

// gatewayLogSizes is how long each host's gateway log is now.
func (c *cluster) gatewayLogSizes() map[string]int64 {
	sizes := map[string]int64{}
	paths, _ := filepath.Glob(filepath.Join(c.dir, "hosts", "*", "log", "gateway.log"))
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			sizes[p] = fi.Size()
		}
	}
	return sizes
}

// logGatewayStatus logs what each gateway said of its status (turning
// degraded, naming the services that did not answer, and ok again) and
// the internal errors it logged since sizes were taken: why HAProxy took
// gateways out during a fault.
func (c *cluster) logGatewayStatus(t *testing.T, sizes map[string]int64) {
	t.Helper()
	if lines := c.gatewayLines(sizes, `"status `, `"internal error"`); len(lines) > 0 {
		t.Logf("the gateways' status during the fault:\n%s", strings.Join(lines, ""))
	}
}

// gatewayLines returns the lines (each "host: line", cut at 600 bytes) the
// gateways logged since sizes were taken (nil: since they started) that
// hold any of what.
func (c *cluster) gatewayLines(sizes map[string]int64, what ...string) []string {
	var out []string
	for _, p := range slices.Sorted(maps.Keys(c.gatewayLogSizes())) {
		data, err := os.ReadFile(p)
		if err != nil || int64(len(data)) < sizes[p] {
			continue
		}
		host := filepath.Base(filepath.Dir(filepath.Dir(p)))
		for l := range strings.Lines(string(data[sizes[p]:])) {
			if slices.ContainsFunc(what, func(w string) bool { return strings.Contains(l, w) }) {
				out = append(out, fmt.Sprintf("%s: %s", host, l[:min(len(l), 600)]))
			}
		}
	}
	return out
}

// --- the cluster ---------------------------------------------------------------------

type cluster struct {
	script string
	env    []string
	dir    string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin")
	build := exec.Command("make", "-C", root, "build")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	// PostgreSQL runs as postgres and must reach its data: not under a 0700
	// test directory.
	dir, err := os.MkdirTemp("/tmp", "flotilla-ha-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &cluster{script: filepath.Join(root, "deployments/cluster/local-cluster"), dir: dir,
		env: append(os.Environ(), "FLOTILLA_CLUSTER_DIR="+dir, "FLOTILLA_BIN="+bin, "FLOTILLA_ADMIN_PASSWORD="+adminPassword)}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs kept in %s", dir)
			c.run(t, "status")
			t.Logf("HAProxy's last notices and refusals:\n%s", haproxyNotices(filepath.Join(dir, "haproxy.log"), 60))
		}
		cmd := exec.Command(c.script, "down")
		cmd.Env = c.env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("local-cluster down: %v\n%s", err, out)
		}
		if !t.Failed() {
			_ = os.RemoveAll(dir)
		}
	})
	start := time.Now()
	c.run(t, "up")
	t.Logf("local-cluster up took %v", time.Since(start).Round(time.Second))
	return c
}

// haproxyNotices returns the last n lines of HAProxy's log that are not a
// request answered with success: servers taken out and brought back,
// requests refused or failed. What CI keeps of a failed run is the test's
// output, not the cluster's directory.
func haproxyNotices(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	// An HTTP request's line (option httplog) with a 2xx or 3xx status, or
	// a TCP connection's (no tcplog: one line per connection).
	ok := regexp.MustCompile(`^\S+ \[[^\]]+\] \S+ \S+ [-+0-9/]+ [23]\d\d |Connect from `)
	var kept []string
	for l := range strings.Lines(string(b)) {
		if !ok.MatchString(l) {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept[max(len(kept)-n, 0):], "")
}

// backUp takes a backup of the cluster from host while the writes go on,
// as an operator does on a manager (flotilla admin backup --env, through
// HAProxy to the PostgreSQL leader over TLS and to the NATS servers over
// TLS), and checks what it holds: every stream, the events among them,
// a database dump pg_restore reads, the CA's and master key's files.
func (c *cluster) backUp(t *testing.T, host string) {
	t.Helper()
	dest := filepath.Join(c.dir, "backup")
	start := time.Now()
	out := c.run(t, "backup", host, dest)
	t.Logf("backup from %s under load in %v:\n%s", host, time.Since(start).Round(100*time.Millisecond), out)
	var m struct {
		Database string
		Streams  []struct {
			Name     string
			Messages uint64
		}
		ClusterFiles []struct{ Var string }
	}
	b, err := os.ReadFile(filepath.Join(dest, "backup.json"))
	if err != nil || json.Unmarshal(b, &m) != nil {
		t.Fatalf("the backup's manifest: %v %s", err, b)
	}
	events := uint64(0)
	for _, s := range m.Streams {
		if s.Name == "FLOTILLA_EVENTS" {
			events = s.Messages
		}
	}
	if m.Database != "dump" || events == 0 || len(m.Streams) < 9 || len(m.ClusterFiles) < 3 {
		t.Errorf("the backup holds %+v", m)
	}
	list, err := exec.Command("/usr/lib/postgresql/15/bin/pg_restore", "--list", filepath.Join(dest, "database.dump")).CombinedOutput()
	if err != nil || !strings.Contains(string(list), "TABLE public networks") {
		t.Errorf("pg_restore --list of the backup's dump: %v\n%s", err, list)
	}
}

func (c *cluster) run(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(c.script, args...)
	cmd.Env = c.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("local-cluster %v: %v\n%s%s", args, err, out.String(), errb.String())
	}
	return out.Bytes()
}

type status struct {
	API       string
	APICaFile string
	Hosts     []struct {
		Name       string
		Address    string
		Network    string
		Database   string // "cut" after local-cluster cut-db
		Components []struct {
			Name    string
			PID     int
			Role    string
			Healthy bool
		}
	}
}

// wantDatabase checks what local-cluster status says of host's packets to
// PostgreSQL: "cut" or "up".
func (c *cluster) wantDatabase(t *testing.T, host, want string) {
	t.Helper()
	for _, h := range c.status(t).Hosts {
		if h.Name == host && h.Database != want {
			t.Fatalf("local-cluster status: %s's database %q, want %q", host, h.Database, want)
		}
	}
}

func (c *cluster) status(t *testing.T) status {
	t.Helper()
	var s status
	if err := json.Unmarshal(c.run(t, "status"), &s); err != nil {
		t.Fatalf("local-cluster status: %v", err)
	}
	return s
}

// leader names the host whose component has role (the PostgreSQL
// leader, the JetStream meta leader).
func (s status) leader(t *testing.T, component, role string) string {
	t.Helper()
	for _, h := range s.Hosts {
		for _, comp := range h.Components {
			if comp.Name == component && comp.Role == role {
				return h.Name
			}
		}
	}
	t.Fatalf("no %s is %s", component, role)
	return ""
}

// waitNewLeader waits until a host other than the old leader has role, and
// returns the seconds since start. It asks the component on each host
// directly, every 100 ms: Patroni's REST API for the PostgreSQL leader, the
// NATS servers' monitoring port for the JetStream meta leader. (local-cluster
// status asks every component of every host at once, which takes seconds on
// two busy cores: seen through it, a new leader came seconds late.)
func (c *cluster) waitNewLeader(t *testing.T, before status, component, role string, start time.Time) float64 {
	t.Helper()
	old, addrs := before.leader(t, component, role), map[string]string{}
	for _, h := range before.Hosts {
		addrs[h.Name] = h.Address
	}
	web := &http.Client{Timeout: time.Second}
	getJSON := func(url string, v any) bool {
		resp, err := web.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(v) == nil
	}
	leads := func(host string) bool {
		switch component {
		case "postgres":
			var p struct{ Role string }
			return getJSON("http://"+addrs[host]+":8008/patroni", &p) && (p.Role == "primary" || p.Role == "master")
		case "nats":
			var j struct {
				Meta struct{ Leader string } `json:"meta_cluster"`
			}
			return getJSON("http://"+addrs[host]+":8222/jsz", &j) && j.Meta.Leader != "" && j.Meta.Leader != old
		}
		t.Fatalf("no leader probe for %s", component)
		return false
	}
	for time.Since(start) < 2*time.Minute {
		for host := range addrs {
			if host != old && leads(host) {
				return time.Since(start).Seconds()
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no new %s %s within 2 minutes", component, role)
	return 0
}

// waitHealthy waits until every component of every host is up and healthy.
func (c *cluster) waitHealthy(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var sick []string
		for _, h := range c.status(t).Hosts {
			for _, comp := range h.Components {
				if !comp.Healthy {
					sick = append(sick, h.Name+"/"+comp.Name)
				}
			}
		}
		if len(sick) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy within %v: %v (logs in %s)", within, sick, c.dir)
		}
		time.Sleep(time.Second)
	}
}

func live(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// checkOneVMPerInstance: every live local VM is the recorded VM of exactly
// one instance, and every instance's recorded VM is live.
func (c *cluster) checkOneVMPerInstance(t *testing.T, api *client, ids []string) {
	t.Helper()
	vms := map[string]bool{}
	pids, _ := filepath.Glob(filepath.Join(c.dir, "local-cloud", "vms", "*", "agent.pid"))
	for _, f := range pids {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(raw))); live(pid) {
			vms[filepath.Base(filepath.Dir(f))] = true
		}
	}
	recorded := map[string]bool{}
	for _, id := range ids {
		var in struct{ VMID string }
		api.mustGet(t, "/instances/"+id, &in)
		recorded[in.VMID] = true
		if !vms[in.VMID] {
			t.Errorf("instance %s: its VM %q is not running", id, in.VMID)
		}
	}
	for vm := range vms {
		if !recorded[vm] {
			t.Errorf("VM %s runs but no instance records it: a second VM for an instance", vm)
		}
	}
}

// --- the API ---------------------------------------------------------------------------

type client struct {
	base  string
	token string
	http  *http.Client
}

func (c *cluster) login(t *testing.T) *client {
	t.Helper()
	s := c.status(t)
	pem, err := os.ReadFile(s.APICaFile)
	if err != nil {
		t.Fatalf("the API's CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("the API's CA: %s holds no certificate", s.APICaFile)
	}
	api := &client{base: s.API + "/api/v1", http: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}}
	if !strings.HasPrefix(s.API, "https://") {
		t.Fatalf("the API through HAProxy is %s: want https", s.API)
	}
	var resp struct{ Token string }
	if code, body := api.do("POST", "/login", map[string]string{"username": "admin", "password": adminPassword}); code != 200 {
		t.Fatalf("login: %d %s", code, body)
	} else if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	api.token = resp.Token
	return api
}

func (a *client) do(method, path string, body any) (int, []byte) {
	code, _, b := a.doAt(method, path, body)
	return code, b
}

// doAt is do that also says which gateway HAProxy sent the request to (the
// server its cookie names; "" when HAProxy answered itself).
func (a *client) doAt(method, path string, body any) (code int, gateway string, _ []byte) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, a.base+path, r)
	if err != nil {
		return 0, "", []byte(err.Error())
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, "", []byte(err.Error())
	}
	defer resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "FLOTILLA_GATEWAY" {
			gateway = c.Value
		}
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gateway, b
}

func (a *client) mustDo(t *testing.T, method, path string, body any, want int) []byte {
	t.Helper()
	var code int
	var b []byte
	for range 5 { // the cluster is under faults: retry what was not answered
		if code, b = a.do(method, path, body); code == want || (code != 0 && code < 500) {
			break
		}
		time.Sleep(time.Second)
	}
	if code != want {
		t.Fatalf("%s %s: %d %s", method, path, code, b)
	}
	return b
}

func (a *client) mustCreate(t *testing.T, path string, body any) string {
	t.Helper()
	var v struct{ ID string }
	if err := json.Unmarshal(a.mustDo(t, "POST", path, body, http.StatusOK), &v); err != nil || v.ID == "" {
		t.Fatalf("POST %s: no id (%v)", path, err)
	}
	return v.ID
}

func (a *client) mustGet(t *testing.T, path string, v any) {
	t.Helper()
	if err := json.Unmarshal(a.mustDo(t, "GET", path, nil, http.StatusOK), v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

type instanceView struct {
	ID          string
	State       string
	StateDetail string
	Agent       struct{ Status string }
}

func (a *client) instances(ids []string) (map[string]instanceView, error) {
	code, body := a.do("GET", "/instances?pageSize=500", nil)
	if code != http.StatusOK {
		return nil, fmt.Errorf("list instances: %d %s", code, body)
	}
	var page struct{ Instances []instanceView }
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, err
	}
	m := map[string]instanceView{}
	for _, in := range page.Instances {
		m[in.ID] = in
	}
	return m, nil
}

// waitAllRunning waits until every instance is running with its agent
// connected; a failed instance or one still elsewhere after within fails
// the test. It returns when they all were.
func (a *client) waitAllRunning(t *testing.T, ids []string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		m, err := a.instances(ids)
		if err == nil {
			var waiting []string
			for _, id := range ids {
				in := m[id]
				if in.State == "failed" {
					t.Fatalf("instance %s failed: %s", id, in.StateDetail)
				}
				if in.State != "running" || in.Agent.Status != "connected" {
					waiting = append(waiting, fmt.Sprintf("%s=%s/%s/%s", id[len(id)-4:], in.State, in.StateDetail, in.Agent.Status))
				}
			}
			if len(waiting) == 0 {
				return time.Now()
			}
			last = strings.Join(waiting, " ")
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("instances not running with their agents within %v: %s", within, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentsReconnected counts the instances whose agent connected again since
// start (its stream broke: its agent gateway died, or the gateway ended it),
// and returns how long after start the last of them did, from the agents'
// own words in the instances' logs ("connected to the agent gateway …",
// which each agent logs as a stream opens). The timelines do not tell: a
// stream that opens again while the instance still shows its agent
// connected records no event.
func (a *client) agentsReconnected(t *testing.T, ids []string, start time.Time) (int, float64) {
	t.Helper()
	n, last := 0, start
	for _, id := range ids {
		var at time.Time
		for token := ""; ; {
			var page struct {
				Lines []struct {
					Time time.Time
					Text string
				}
				NextPageToken string
			}
			a.mustGet(t, "/instances/"+id+"/logs?order=asc&pageSize=1000&since="+url.QueryEscape(start.UTC().Format(time.RFC3339))+
				"&pageToken="+url.QueryEscape(token), &page)
			for _, l := range page.Lines {
				if strings.HasPrefix(l.Text, "connected to the agent gateway") && l.Time.After(start) {
					at = l.Time // the last reconnection counts
				}
			}
			if token = page.NextPageToken; token == "" {
				break
			}
		}
		if !at.IsZero() {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last.Sub(start).Seconds()
}

// checkClusterView: GET /api/v1/cluster shows every service process of the
// three hosts, the three NATS servers with one meta leader, and the three
// PostgreSQL members with one leader.
type clusterView struct {
	Managers []struct {
		Name    string
		Service string
		Host    string
		Healthy bool
	}
	Brokers []struct {
		Name       string
		MetaLeader bool
		Healthy    bool
	}
	Streams []struct {
		Name     string
		Leader   string
		Replicas []replicaView
	}
	Databases []struct {
		Name    string
		Role    string
		Healthy bool
	}
}

// leaders says which host leads what: the PostgreSQL leader and its
// synchronous standby (every commit waits for it), the JetStream meta
// leader, and each stream's leader.
func (cl clusterView) leaders() string {
	var b strings.Builder
	for _, role := range []string{"leader", "sync_standby"} {
		for _, d := range cl.Databases {
			if d.Role == role {
				fmt.Fprintf(&b, "PostgreSQL %s %s; ", strings.ReplaceAll(role, "_", " "), d.Name)
			}
		}
	}
	for _, br := range cl.Brokers {
		if br.MetaLeader {
			fmt.Fprintf(&b, "JetStream meta %s; ", br.Name)
		}
	}
	byHost := map[string][]string{}
	for _, s := range cl.Streams {
		byHost[s.Leader] = append(byHost[s.Leader], s.Name)
	}
	for _, h := range slices.Sorted(maps.Keys(byHost)) {
		fmt.Fprintf(&b, "%s leads %s; ", h, strings.Join(byHost[h], " "))
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// database names the PostgreSQL member with role (leader, sync_standby).
func (cl clusterView) database(t *testing.T, role string) string {
	t.Helper()
	for _, d := range cl.Databases {
		if d.Role == role {
			return d.Name
		}
	}
	t.Fatalf("no PostgreSQL member is %s: %+v", role, cl.Databases)
	return ""
}

type replicaView struct {
	Name    string
	Current bool
}

func (a *client) clusterView(t *testing.T) clusterView {
	t.Helper()
	var cl clusterView
	a.mustGet(t, "/cluster", &cl)
	return cl
}

func (a *client) checkClusterView(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cl := a.clusterView(t)
		managers, leaders, pgLeaders := 0, 0, 0
		for _, m := range cl.Managers {
			if m.Healthy {
				managers++
			}
		}
		for _, b := range cl.Brokers {
			if b.MetaLeader {
				leaders++
			}
		}
		for _, d := range cl.Databases {
			if d.Role == "leader" {
				pgLeaders++
			}
		}
		if managers == 18 && len(cl.Brokers) == 3 && leaders == 1 && len(cl.Databases) == 3 && pgLeaders == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /api/v1/cluster: %d healthy managers (want 18), brokers %+v, databases %+v", managers, cl.Brokers, cl.Databases)
		}
		time.Sleep(time.Second)
	}
}

// tickLine is the node software's line for one ticker request.
var tickLine = regexp.MustCompile(`^GET /tick/(\d+) `)

// checkTicks reads every line the instance's agent delivered and checks the
// ticker's request numbers run from 0 with none missing; when final it
// reports what is missing, otherwise it says whether nothing is.
func (a *client) checkTicks(t *testing.T, id string, final bool) bool {
	t.Helper()
	seen := map[int]bool{}
	maxN, token := -1, ""
	for {
		var page struct {
			Lines []struct {
				Source string
				Text   string
			}
			NextPageToken string
		}
		a.mustGet(t, "/instances/"+id+"/logs?order=asc&pageSize=5000&pageToken="+token, &page)
		for _, l := range page.Lines {
			if m := tickLine.FindStringSubmatch(l.Text); m != nil {
				n, _ := strconv.Atoi(m[1])
				seen[n] = true
				maxN = max(maxN, n)
			}
		}
		if token = page.NextPageToken; token == "" || len(page.Lines) == 0 {
			break
		}
	}
	var missing []int
	for n := 0; n <= maxN; n++ {
		if !seen[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 && maxN >= 100 {
		return true
	}
	if !final {
		return false
	}
	if maxN < 100 {
		t.Errorf("instance %s: only %d tick lines stored: the logs did not stream", id, maxN+1)
	}
	if len(missing) > 0 {
		t.Errorf("instance %s: %d of %d lines missing, first %v", id, len(missing), maxN+1, missing[:min(len(missing), 10)])
	}
	return true
}

// --- the writer ----------------------------------------------------------------------------

type write struct {
	at   time.Time
	took time.Duration
	ok   bool
	// What came back: the status (0 when no answer), the gateway HAProxy
	// chose (its cookie; none when HAProxy answered itself), and the start
	// of the body or the error.
	code    int
	gateway string
	said    string
}

type writer struct {
	mu     sync.Mutex
	writes []write
	acked  []string
	stopc  chan struct{}
	done   chan struct{}
}

// startWriter creates a network every writeInterval through HAProxy, each
// with its own name, and records what was acknowledged. Each write is sent
// at its time, whether or not the ones before were answered: a request held
// by a gateway that was cut off does not keep the writes after it from
// telling whether the API answers.
func startWriter(t *testing.T, api *client) *writer {
	w := &writer{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		var inFlight sync.WaitGroup
		defer close(w.done)
		defer inFlight.Wait()
		tick := time.NewTicker(writeInterval)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			inFlight.Go(func() {
				sent := time.Now()
				code, gateway, body := api.doAt("POST", "/networks", map[string]any{"name": fmt.Sprintf("w-%06d", n), "provider": "local", "httpsStrategy": "none"})
				var v struct{ ID string }
				ok := code == http.StatusOK && json.Unmarshal(body, &v) == nil && v.ID != ""
				w.mu.Lock()
				defer w.mu.Unlock()
				w.writes = append(w.writes, write{at: time.Now(), took: time.Since(sent), ok: ok, code: code, gateway: gateway,
					said: string(body[:min(len(body), 160)])})
				if ok {
					w.acked = append(w.acked, v.ID)
				}
			})
		}
	}()
	t.Cleanup(func() {
		select {
		case <-w.stopc:
		default:
			close(w.stopc)
		}
		<-w.done
	})
	return w
}

// outage returns the longest stretch within [from, to] with no successful
// write, and how many writes failed there.
func (w *writer) outage(from, to time.Time) (float64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var longest time.Duration
	failed := 0
	lastOK := from
	for _, wr := range w.writes {
		if wr.at.Before(from) || wr.at.After(to) {
			continue
		}
		if !wr.ok {
			failed++
			continue
		}
		longest = max(longest, wr.at.Sub(lastOK))
		lastOK = wr.at
	}
	if failed == 0 {
		return 0, 0
	}
	return longest.Seconds(), failed
}

// logSlowOrFailed logs the writes since the fault's start that failed or
// were slow (the first 40).
func (w *writer) logSlowOrFailed(t *testing.T, start time.Time) {
	t.Helper()
	notes := w.slowOrFailed(start, time.Now())
	if len(notes) == 0 {
		return
	}
	t.Logf("%d writes failed or took over a second:\n%s", len(notes), strings.Join(notes[:min(len(notes), 40)], "\n"))
}

// slowOrFailed describes the writes within [from, to] that failed or took
// over a second, when each was sent (from from) and what came back: what
// a fault's figures come down to, in the test's log.
func (w *writer) slowOrFailed(from, to time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, wr := range w.writes {
		if wr.at.Before(from) || wr.at.After(to) || (wr.ok && wr.took < time.Second) {
			continue
		}
		out = append(out, fmt.Sprintf("sent at +%.1f s, %s after: %d from %q %q",
			wr.at.Add(-wr.took).Sub(from).Seconds(), wr.took.Round(10*time.Millisecond), wr.code, wr.gateway, wr.said))
	}
	return out
}

func (w *writer) stop() []string {
	close(w.stopc)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

func logReport(t *testing.T, report []figures) {
	var b strings.Builder
	b.WriteString("| fault | API writes unavailable | writes failed | agents lost, all back after | new leader after | all running again after the fault ended | audit records late, not written |\n|---|---|---|---|---|---|---|\n")
	for _, f := range report {
		leader := "—"
		if f.LeaderSeconds > 0 {
			leader = fmt.Sprintf("%.1f s", f.LeaderSeconds)
		}
		agents := "none lost"
		if f.AgentsLost > 0 {
			agents = fmt.Sprintf("%d, %.1f s", f.AgentsLost, f.AgentsBackSeconds)
		}
		fmt.Fprintf(&b, "| %s | %.1f s | %d | %s | %s | %.1f s | %d, %d |\n", f.Fault, f.APIUnavailableSeconds, f.FailedWrites, agents, leader,
			max(f.SettledSeconds, 0), f.AuditLate, f.AuditNotWritten)
	}
	for _, f := range report {
		if f.RejoinedSeconds > 0 {
			fmt.Fprintf(&b, "\n%s: back in every stream's replicas, its managers healthy, %.0f s after its start (NATS admits a removed server's name again five minutes after its removal).\n", f.Fault, f.RejoinedSeconds)
		}
	}
	t.Logf("figures:\n%s", b.String())
	if path := os.Getenv("FLOTILLA_HA_REPORT"); path != "" {
		raw, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Error(err)
		}
	}
}
