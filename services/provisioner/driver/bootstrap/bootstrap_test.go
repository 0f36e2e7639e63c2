package bootstrap_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/bootstrap"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"

// fakeAgent records its arguments in $FAKE_AGENT_OUT, as the agent would
// be started.
const fakeAgent = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >\"$FAKE_AGENT_OUT.tmp\"\nmv \"$FAKE_AGENT_OUT.tmp\" \"$FAKE_AGENT_OUT\"\n"

func serveAgent(t *testing.T) (url, sum string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/agent/v1.2.3/flotilla-agent" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(fakeAgent))
	}))
	t.Cleanup(srv.Close)
	h := sha256.Sum256([]byte(fakeAgent))
	return srv.URL + "/agent/v1.2.3/flotilla-agent", hex.EncodeToString(h[:])
}

func spec(url, sum string) driver.VMSpec {
	return driver.VMSpec{ID: "vm-1234", DiskSizeGB: 20, Bootstrap: driver.Bootstrap{
		GatewayAddr: "agents.fleet.example:7702", JoinToken: "fjt_it's-secret", CAPEM: testCA,
		AgentURL: url, AgentSHA256: sum, ManagerVersion: "v1.2.3",
		DataDevices: []string{"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc", "/dev/sdf"}}}
}

func run(t *testing.T, script, root, out string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = []string{"PATH=" + testkit.VMPath(t), "FLOTILLA_VM_ROOT=" + root, "FLOTILLA_METADATA_URL=", "FAKE_AGENT_OUT=" + out}
	return cmd.CombinedOutput()
}

// TestScriptInstallsAndStartsTheAgent plays a VM without systemd: the
// script downloads the agent, checks it, writes its unit and starts it
// with the bootstrap flags.
func TestScriptInstallsAndStartsTheAgent(t *testing.T) {
	t.Parallel()
	url, sum := serveAgent(t)
	script, err := bootstrap.Script(spec(url, sum))
	if err != nil {
		t.Fatal(err)
	}
	root, out := t.TempDir(), filepath.Join(t.TempDir(), "args")
	if b, err := run(t, script, root, out); err != nil {
		t.Fatalf("script: %v\n%s", err, b)
	}
	var args []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if args, err = os.ReadFile(out); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("the agent was not started: %v", err)
	}
	want := []string{"--gateway", "agents.fleet.example:7702", "--ca-file", root + bootstrap.CAFile,
		"--token-file", root + bootstrap.TokenFile, "--state-dir", root + bootstrap.StateDir,
		"--data-dir", root + bootstrap.DataDir, "--data-disk-gb", "20", "--vm-id", "vm-1234",
		"--data-device", root + "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc", "--data-device", root + "/dev/sdf"}
	if got := strings.Fields(string(args)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("agent arguments\n%q\nwant\n%q", got, want)
	}
	for path, want := range map[string]string{
		bootstrap.AgentPath: fakeAgent, bootstrap.TokenFile: "fjt_it's-secret\n", bootstrap.CAFile: testCA + "\n",
	} {
		b, err := os.ReadFile(root + path)
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	if fi, err := os.Stat(root + bootstrap.AgentPath); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("agent binary: %v, %v; want mode 0755", fi, err)
	}
	if fi, err := os.Stat(root + bootstrap.TokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("join token file: %v, %v; want mode 0600", fi, err)
	}
	unit, err := os.ReadFile(root + bootstrap.UnitPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"Restart=on-failure", "WantedBy=multi-user.target",
		`ExecStart=` + root + bootstrap.AgentPath + ` "--gateway" "agents.fleet.example:7702"`} {
		if !strings.Contains(string(unit), line) {
			t.Errorf("unit lacks %q:\n%s", line, unit)
		}
	}
	if _, err := os.Stat(root + bootstrap.PIDPath); err != nil {
		t.Errorf("no pid file of the agent started without systemd: %v", err)
	}
}

// TestScriptRefusesAWrongChecksum: a binary that does not match is
// neither installed nor started.
func TestScriptRefusesAWrongChecksum(t *testing.T) {
	t.Parallel()
	url, _ := serveAgent(t)
	script, err := bootstrap.Script(spec(url, strings.Repeat("ab", 32)))
	if err != nil {
		t.Fatal(err)
	}
	root, out := t.TempDir(), filepath.Join(t.TempDir(), "args")
	b, err := run(t, script, root, out)
	if err == nil {
		t.Fatalf("script succeeded with a wrong checksum:\n%s", b)
	}
	if !strings.Contains(string(b), "not installed") {
		t.Errorf("script output does not say why:\n%s", b)
	}
	time.Sleep(200 * time.Millisecond)
	for _, p := range []string{out, root + bootstrap.AgentPath, root + bootstrap.AgentPath + ".download", root + bootstrap.UnitPath, root + bootstrap.TokenFile} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists after a checksum mismatch", p)
		}
	}
}

func TestScriptNamesMissingFields(t *testing.T) {
	t.Parallel()
	_, err := bootstrap.Script(driver.VMSpec{ID: "vm-1", DiskSizeGB: 1, Bootstrap: driver.Bootstrap{AgentURL: "ftp://x", AgentSHA256: "12", DataDevices: []string{"sdf"}}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, field := range []string{"bootstrap.agentUrl", "bootstrap.agentSha256", "bootstrap.gatewayAddr", "bootstrap.joinToken", "bootstrap.caPem", "bootstrap.dataDevices"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
}
