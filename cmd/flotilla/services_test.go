package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory"
)

// TestServiceBinariesRunAgainstExternalNATSAndPostgres starts each service as
// its own process, as a cluster node would, against a NATS server and a
// PostgreSQL server that Flotilla does not manage.
func TestServiceBinariesRunAgainstExternalNATSAndPostgres(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "../flotilla-inventory", "../flotilla-gateway", "../flotilla-ca",
		"../flotilla-secrets", "../flotilla-provisioner", "../flotilla-agentgw")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	bus := testkit.SecureNATS(t)
	dbURL := testkit.NewDatabase(t)
	ports := testkit.FreePorts(t, 3)
	keyFile := filepath.Join(t.TempDir(), "keys", "master.key")
	if _, err := kms.OpenLocal(keyFile); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"FLOTILLA_KMS_KEY_FILE="+keyFile,
		"FLOTILLA_CA_CERT_FILE="+filepath.Join(filepath.Dir(keyFile), "ca.crt"),
		"FLOTILLA_CA_KEY_FILE="+filepath.Join(filepath.Dir(keyFile), "ca.key"),
		"FLOTILLA_NATS_URL="+bus.URL,
		"FLOTILLA_DATABASE_URL="+dbURL,
		"FLOTILLA_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(ports[0]),
		"FLOTILLA_GRPC_ADDR=127.0.0.1:"+strconv.Itoa(ports[1]),
		"FLOTILLA_AGENT_ADDR=127.0.0.1:"+strconv.Itoa(ports[2]),
	)
	stops := map[string]func(){}
	for _, name := range []string{"inventory", "ca", "secrets", "provisioner", "agentgw", "gateway"} {
		// Each binary connects as itself: --creds or FLOTILLA_NATS_CREDS.
		cmd := exec.Command(filepath.Join(bin, "flotilla-"+name), "--creds", bus.Creds[name])
		cmd.Env = env
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		stops[name] = func() {
			once.Do(func() {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("flotilla-%s exited with %v:\n%s", name, err, out)
					}
				case <-time.After(30 * time.Second):
					_ = cmd.Process.Kill()
					t.Errorf("flotilla-%s did not stop on SIGTERM", name)
				}
			})
		}
		t.Cleanup(stops[name])
	}
	up := &upProc{base: ports[0]}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(up.url("/api/v1/status"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status: %v %v", resp, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := inventory.InitialSetup(context.Background(), pool, nil, "admin", "S3cret-pass"); err != nil {
		t.Fatal(err)
	}
	token := up.login(t)
	if code, out := up.do(t, "POST", "/api/v1/networks", token, `{"name":"lab","provider":"local","httpsStrategy":"none"}`); code != 200 {
		t.Fatalf("create network through the service binaries: %d %v", code, out)
	}
	checkClusterCommands(t, up.url(""), token, stops["provisioner"])
	// A missing setting is named at start.
	cmd := exec.Command(filepath.Join(bin, "flotilla-inventory"))
	cmd.Env = []string{"FLOTILLA_NATS_URL=nats://127.0.0.1:1", "FLOTILLA_STREAM_REPLICAS=2"}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "FLOTILLA_DATABASE_URL: is required") || !strings.Contains(string(out), "FLOTILLA_STREAM_REPLICAS: must be 1 or 3") ||
		!strings.Contains(string(out), "FLOTILLA_NATS_CREDS: is required") {
		t.Fatalf("bad config: %v %s", err, out)
	}
	// The gateway serves no API in the clear where other hosts reach it,
	// unless told that a proxy in front terminates TLS.
	cmd = exec.Command(filepath.Join(bin, "flotilla-gateway"))
	cmd.Env = []string{"FLOTILLA_NATS_URL=nats://127.0.0.1:1", "FLOTILLA_HTTP_ADDR=0.0.0.0:7700", "FLOTILLA_GRPC_ADDR=127.0.0.1:7701"}
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `FLOTILLA_HTTP_ADDR: "0.0.0.0:7700" is reachable from other hosts`) ||
		strings.Contains(string(out), "FLOTILLA_GRPC_ADDR: \"127") || !strings.Contains(string(out), "FLOTILLA_INSECURE_HTTP") {
		t.Fatalf("gateway on 0.0.0.0 without TLS: %v %s", err, out)
	}
	cmd.Env = append(cmd.Env, "FLOTILLA_INSECURE_HTTP=true")
	if out, _ = cmd.CombinedOutput(); strings.Contains(string(out), "reachable from other hosts") {
		t.Fatalf("with FLOTILLA_INSECURE_HTTP: %s", out)
	}
}
