package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/pgmanaged"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// fleet is a running `flotilla up` with an admin logged in.
type fleet struct {
	*upProc
	t     *testing.T
	dir   string
	token string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	dir, base := dataDir(t), freeBase(t)
	if out, err := admin(dir, "admin", "S3cret-pass", "--port", strconv.Itoa(base)); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	f := &fleet{upProc: startUpFree(t, dir, nil), t: t, dir: dir}
	f.token = f.login(t)
	t.Cleanup(func() { local.KillAll(dir) })
	return f
}

// api sends a request and requires the status.
func (f *fleet) api(want int, method, path, body string) map[string]any {
	f.t.Helper()
	code, out := f.do(f.t, method, path, f.token, body)
	if code != want {
		f.t.Fatalf("%s %s: %d, want %d: %v", method, path, code, want, out)
	}
	return out
}

// raw GETs path and returns the answer's body; anything but 200 fails the
// test, but a 503 (a log read the stream did not deliver in time) is tried
// again, as the answer says, for up to 10 s.
func (f *fleet) raw(path string) []byte {
	f.t.Helper()
	for tries := 0; ; tries++ {
		req, _ := http.NewRequest("GET", f.url(path), nil)
		req.Header.Set("Authorization", "Bearer "+f.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			f.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && tries < 40 {
			time.Sleep(250 * time.Millisecond)
			continue
		}
		if resp.StatusCode != 200 {
			f.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return b
	}
}

// waitState polls the instance until it reaches state (failing on "failed").
func (f *fleet) waitState(id, state string, timeout time.Duration) map[string]any {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	var in map[string]any
	for time.Now().Before(deadline) {
		code, out := f.do(f.t, "GET", "/api/v1/instances/"+id, f.token, "")
		if state == "deleted" && code == 404 {
			return nil
		}
		in = out
		if in["state"] == state {
			return in
		}
		if in["state"] == "failed" && state != "failed" {
			f.t.Fatalf("instance failed: %v\nlogs: %s", in, f.raw("/api/v1/instances/"+id+"/logs"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	log := f.out.String()
	f.t.Fatalf("instance not %s after %v: %v\n--- flotilla up (tail):\n%s", state, timeout, in, log[max(0, len(log)-6000):])
	return nil
}

func (f *fleet) setup(name, strategy string, actions string) (net, tmpl map[string]any) {
	f.t.Helper()
	net = f.api(200, "POST", "/api/v1/networks", fmt.Sprintf(`{"name":"%s","provider":"local","httpsStrategy":"%s"}`, name, strategy))
	tmpl = f.api(200, "POST", "/api/v1/templates", fmt.Sprintf(`{"name":"%s","provider":"local","dataDiskGb":1,"setupActions":%s}`, name, actions))
	return net, tmpl
}

func (f *fleet) instance(name string, net, tmpl map[string]any, ssl string) string {
	f.t.Helper()
	in := f.api(200, "POST", "/api/v1/instances", fmt.Sprintf(`{"name":"%s","kind":"design","templateId":"%s","networkId":"%s"%s}`,
		name, tmpl["id"], net["id"], ssl))
	return in["id"].(string)
}

const secretValue = "sup3r-s3cret-VALUE-4c1f"

func TestProvisionAnInstanceEndToEnd(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	net, tmpl := f.setup("lab", "self-signed", `[
		{"type":"script","script":"echo hello from setup; test \"$FLOTILLA_DATA_DIR\" = \"$(pwd)\" && date +%s%N >> boots.txt"},
		{"type":"file","path":"conf/app.env","content":"DB_PASSWORD=${secret:db-password}\n","mode":"0600"},
		{"type":"env","name":"MODE","value":"dev"},
		{"type":"script","script":"echo mode is $MODE"},
		{"type":"script","script":"echo vm-uid=$(id -u); for f in ../../config/settings.json ../../config/bus/provisioner.creds ../../ca/ca.key ../../keys/master.key; do if cat $f >/dev/null 2>&1; then echo READ $f; else echo DENIED $f; fi; done"}]`)
	id := f.instance("design-1", net, tmpl, `,"ssl":{"sans":["design-1.fleet.test"]}`)
	// The secret is stored before the first provision; the API never shows it.
	sec := f.api(200, "POST", "/api/v1/instances/"+id+"/secrets", `{"name":"db-password","value":"`+secretValue+`"}`)
	list := f.api(200, "GET", "/api/v1/instances/"+id+"/secrets", "")
	if sec["name"] != "db-password" || strings.Contains(fmt.Sprint(sec, list), secretValue) {
		t.Fatalf("secret metadata: %v %v", sec, list)
	}

	p := f.api(200, "POST", "/api/v1/instances/"+id+":provision", "")
	if p["state"] != "provisioning" || p["desiredState"] != "provisioned" {
		t.Fatalf(":provision answered %v", p)
	}
	in := f.waitState(id, "running", 3*time.Minute)
	disk := in["dataDisk"].(map[string]any)
	diskID := disk["id"].(string)
	agent := in["agent"].(map[string]any)
	if agent["status"] != "connected" || agent["version"] == "" || in["vmId"] == "" || diskID == "" {
		t.Fatalf("running instance: %v", in)
	}
	diskDir := filepath.Join(f.dir, "disks", diskID)

	// Setup ran in the data disk with the secret resolved by the agent.
	conf, err := os.ReadFile(filepath.Join(diskDir, "conf", "app.env"))
	if err != nil || string(conf) != "DB_PASSWORD="+secretValue+"\n" {
		t.Fatalf("file action with a secret: %q %v", conf, err)
	}
	if fi, _ := os.Stat(filepath.Join(diskDir, "conf", "app.env")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v", fi.Mode().Perm())
	}

	// Logs hold the setup output; the events replay the timeline.
	logs := string(f.raw("/api/v1/instances/" + id + "/logs?pageSize=5000"))
	for _, want := range []string{"hello from setup", "mode is dev"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q: %s", want, logs)
		}
	}
	// A VM is not the manager: as root, its setup runs as the data disk's
	// own user and cannot read the manager's settings, keys or credentials.
	if os.Geteuid() == 0 {
		for _, p := range []string{"config/settings.json", "config/bus/provisioner.creds", "ca/ca.key", "keys/master.key"} {
			if _, err := os.Stat(filepath.Join(f.dir, p)); err != nil {
				t.Fatalf("the probe's target %s does not exist: %v", p, err)
			}
			if !strings.Contains(logs, "DENIED ../../"+p) || strings.Contains(logs, "READ ../../"+p) {
				t.Errorf("a VM could read the manager's %s: %s", p, logs)
			}
		}
		if strings.Contains(logs, "vm-uid=0") || !strings.Contains(logs, "vm-uid=") {
			t.Errorf("the VM ran as root: %s", logs)
		}
	} else if !strings.Contains(f.out.String(), "local VMs are not isolated") {
		t.Errorf("not root, and flotilla up did not say local VMs are not isolated")
	}
	var timeline struct {
		Events []struct {
			Type string
			Time time.Time
		}
	}
	if err := json.Unmarshal(f.raw("/api/v1/instances/"+id+"/events"), &timeline); err != nil {
		t.Fatal(err)
	}
	// since= skips what came before. It takes fractional seconds: the
	// whole timeline may fall within one second.
	cut := timeline.Events[len(timeline.Events)-1].Time
	var recent struct{ Events []struct{ Type string } }
	if err := json.Unmarshal(f.raw("/api/v1/instances/"+id+"/events?since="+cut.UTC().Format(time.RFC3339Nano)), &recent); err != nil {
		t.Fatal(err)
	}
	if len(recent.Events) == 0 || len(recent.Events) >= len(timeline.Events) {
		t.Errorf("events since %v: %d of %d", cut, len(recent.Events), len(timeline.Events))
	}
	var types []string
	for _, e := range timeline.Events {
		types = append(types, e.Type)
	}
	for _, want := range []string{"instance.created", "instance.provision-requested", "instance.disk-allocated", "instance.vm-launched", "instance.agent-connected", "instance.running"} {
		if !strings.Contains(strings.Join(types, " "), want) {
			t.Errorf("timeline lacks %s: %v", want, types)
		}
	}

	// The node software serves HTTPS with a fleet-CA certificate carrying the SANs.
	caPEM := f.raw("/api/v1/ca/certificate")
	url := in["addresses"].(map[string]any)["url"].(string) // known once running
	checkServedCert(t, url, caPEM, "design-1.fleet.test")

	// A SAN added to the running instance reaches its node at
	// :refresh-certificate: the agent renews its fleet CA certificate for
	// the names the instance has now, served without a restart.
	cur := f.api(200, "GET", "/api/v1/instances/"+id, "")
	f.api(200, "PATCH", "/api/v1/instances/"+id, fmt.Sprintf(`{"version":"%v","ssl":{"sans":["design-1.fleet.test","design-one.fleet.test"]}}`, cur["version"]))
	f.api(200, "POST", "/api/v1/instances/"+id+":refresh-certificate", "")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := fleetClient(t, caPEM).Get(url)
		if err != nil {
			t.Fatalf("HTTPS to the node software after the refresh: %v", err)
		}
		resp.Body.Close()
		if slices.Contains(resp.TLS.PeerCertificates[0].DNSNames, "design-one.fleet.test") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after :refresh-certificate the node serves SANs %v\n%s", resp.TLS.PeerCertificates[0].DNSNames,
				f.raw("/api/v1/instances/"+id+"/logs?pageSize=5000"))
		}
	}
	checkServedCert(t, url, caPEM, "design-one.fleet.test")

	// follow=true streams new lines as server-sent events: a heartbeat-free
	// way to see one is a request to the node software, which it logs.
	f.followLogs(id, func() { _, _ = fleetClient(t, caPEM).Get(url + "from-sse-test") })

	// A second instance's agent cannot read the first one's secret.
	otherNet, otherTmpl := f.setup("other", "none", `[{"type":"file","path":"stolen.txt","content":"${secret:db-password}"}]`)
	other := f.instance("other-1", otherNet, otherTmpl, "")
	if out := f.api(400, "POST", "/api/v1/instances/"+other+":refresh-certificate", ""); !strings.Contains(fmt.Sprint(out["message"]), "serves no certificate") {
		t.Errorf(":refresh-certificate on a network without HTTPS: %v", out)
	}
	f.api(200, "POST", "/api/v1/instances/"+other+":provision", "")
	failed := f.waitState(other, "failed", 3*time.Minute)
	if !strings.Contains(fmt.Sprint(failed["stateDetail"]), "running-setup") {
		t.Fatalf("the other instance failed elsewhere: %v", failed)
	}
	otherDisk := failed["dataDisk"].(map[string]any)["id"].(string)
	if b, err := os.ReadFile(filepath.Join(f.dir, "disks", otherDisk, "stolen.txt")); err == nil {
		t.Fatalf("another instance's agent read the secret: %q", b)
	}
	f.api(200, "POST", "/api/v1/instances/"+other+":deprovision", "")
	f.waitState(other, "deprovisioned", time.Minute)
	f.api(200, "DELETE", "/api/v1/instances/"+other, "")
	f.waitState(other, "deleted", time.Minute)

	// Deprovision keeps the disk; provisioning again re-attaches it.
	vm1 := in["vmId"].(string)
	f.api(200, "POST", "/api/v1/instances/"+id+":deprovision", "")
	dep := f.waitState(id, "deprovisioned", time.Minute)
	if dep["vmId"] != "" || dep["dataDisk"].(map[string]any)["id"] != diskID {
		t.Fatalf("deprovisioned: %v", dep)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "vms", vm1)); !os.IsNotExist(err) {
		t.Fatalf("the VM is still there after deprovision: %v", err)
	}
	f.api(200, "POST", "/api/v1/instances/"+id+":provision", "")
	again := f.waitState(id, "running", 3*time.Minute)
	if again["dataDisk"].(map[string]any)["id"] != diskID || again["vmId"] == vm1 {
		t.Fatalf("provisioned again: %v (disk %s, first vm %s)", again, diskID, vm1)
	}
	if boots := countLines(t, filepath.Join(diskDir, "boots.txt")); boots != 2 {
		t.Fatalf("boots.txt has %d lines, want 2: the first VM's file must still be on the disk", boots)
	}

	// Reprovision: a new VM on the same disk.
	vm2 := again["vmId"].(string)
	f.api(200, "POST", "/api/v1/instances/"+id+":reprovision", "")
	time.Sleep(100 * time.Millisecond)
	re := f.waitState(id, "running", 3*time.Minute)
	if re["vmId"] == vm2 || re["dataDisk"].(map[string]any)["id"] != diskID || re["reprovisionPending"] == true {
		t.Fatalf("reprovisioned: %v", re)
	}
	if boots := countLines(t, filepath.Join(diskDir, "boots.txt")); boots != 3 {
		t.Fatalf("boots.txt has %d lines after reprovision, want 3", boots)
	}

	// Delete: not while running; after deprovision it destroys the disk.
	if code, out := f.do(t, "DELETE", "/api/v1/instances/"+id, f.token, ""); code != 409 {
		t.Fatalf("delete while running: %d %v", code, out)
	}
	f.api(200, "POST", "/api/v1/instances/"+id+":deprovision", "")
	f.waitState(id, "deprovisioned", time.Minute)
	f.api(200, "DELETE", "/api/v1/instances/"+id, "")
	f.waitState(id, "deleted", time.Minute)
	if _, err := os.Stat(diskDir); !os.IsNotExist(err) {
		t.Fatalf("the disk is still there after delete: %v", err)
	}
	if vms, _ := filepath.Glob(filepath.Join(f.dir, "vms", "*")); len(vms) != 0 {
		t.Fatalf("VMs left after delete: %v", vms)
	}
	// The history outlives the instance.
	if err := json.Unmarshal(f.raw("/api/v1/instances/"+id+"/events"), &timeline); err != nil || timeline.Events[len(timeline.Events)-1].Type != "instance.deleted" {
		t.Fatalf("history after delete: %v %v", timeline, err)
	}

	f.scanForLeaks(secretValue)
	f.stop(t)
}

// followLogs opens the instance's log stream with follow=true, triggers a new
// log line, and requires it to arrive as a server-sent event.
func (f *fleet) followLogs(id string, trigger func()) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url("/api/v1/instances/"+id+"/logs?follow=true&lines=1"), nil)
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		f.t.Fatalf("follow: %d %s", resp.StatusCode, ct)
	}
	go trigger()
	buf := make([]byte, 0, 64<<10)
	chunk := make([]byte, 4096)
	for !strings.Contains(string(buf), "/from-sse-test") {
		n, err := resp.Body.Read(chunk)
		if err != nil {
			f.t.Fatalf("no new line arrived on the followed stream: %v\n%s", err, buf)
		}
		buf = append(buf, chunk[:n]...)
	}
	if !strings.Contains(string(buf), "event: log\ndata: {") {
		f.t.Fatalf("not server-sent events: %s", buf)
	}
}

// fleetClient is an HTTPS client that trusts only the fleet CA.
func fleetClient(t *testing.T, caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA certificate is not PEM: %q", caPEM)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// checkServedCert fetches url trusting only the fleet CA, then has openssl
// verify the served certificate against the CA file, and checks the SAN.
func checkServedCert(t *testing.T, url string, caPEM []byte, san string) {
	t.Helper()
	resp, err := fleetClient(t, caPEM).Get(url)
	if err != nil {
		t.Fatalf("HTTPS to the node software with the fleet CA: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "design-1") {
		t.Fatalf("node page does not name the instance: %s", body)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if !strings.Contains(strings.Join(leaf.DNSNames, ","), san) {
		t.Fatalf("served certificate SANs %v lack %s", leaf.DNSNames, san)
	}
	dir := t.TempDir()
	caFile, certFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem")
	_ = os.WriteFile(caFile, caPEM, 0o600)
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), 0o600)
	out, err := exec.Command("openssl", "verify", "-CAfile", caFile, certFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v %s", err, out)
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return strings.Count(string(b), "\n")
}

// scanForLeaks looks for the secret, raw, hex or base64, in a pg_dump of the
// database, every log file in the data directory, every message on every
// stream and the API's answers.
func (f *fleet) scanForLeaks(value string) {
	t := f.t
	t.Helper()
	needles := []string{value, hex.EncodeToString([]byte(value)), base64.StdEncoding.EncodeToString([]byte(value))}
	check := func(where string, data []byte) {
		for _, n := range needles {
			if strings.Contains(string(data), n) {
				t.Errorf("the secret value appears in %s", where)
			}
		}
	}
	s, err := datadir.Load(datadir.Dir(f.dir))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := pgmanaged.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	dump, err := exec.Command(filepath.Join(bin, "pg_dump"), "--no-password", "--dbname="+s.DatabaseURL).Output()
	if err != nil || !strings.Contains(string(dump), "CREATE TABLE public.secrets") {
		t.Fatalf("pg_dump: %v (%d bytes)", err, len(dump))
	}
	check("pg_dump", dump)
	_ = filepath.Walk(f.dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(path, ".log") {
			b, _ := os.ReadFile(path)
			check(path, b)
		}
		return nil
	})
	check("flotilla up output", []byte(f.out.String()))
	// Read every stream as an operator's tool would: with the observer's
	// credentials from config/bus/.
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", s.Port(datadir.OffsetNATS)),
		busauth.ConnectOptions(busauth.Observer, busauth.CredsFile(datadir.Dir(f.dir).Bus(), busauth.Observer))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	streams := 0
	msgs := 0
	for name := range js.StreamNames(ctx).Name() {
		streams++
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				continue // deleted (acknowledged work, or a purged message)
			}
			msgs++
			check("stream "+name+" message "+m.Subject, m.Data)
			hb, _ := json.Marshal(m.Header)
			check("stream "+name+" headers", hb)
		}
	}
	if msgs < 50 {
		t.Errorf("scanned only %d messages", msgs)
	}
	if streams < 4 {
		t.Errorf("scanned %d streams, expected at least 4", streams)
	}
	for _, path := range []string{"/api/v1/instances", "/api/v1/networks", "/api/v1/templates"} {
		check("GET "+path, f.raw(path))
	}
}
