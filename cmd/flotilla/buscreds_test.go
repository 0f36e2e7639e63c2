package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestBusCredentialsForACluster mints an authority as an operator would for
// a cluster, starts a NATS server from the configuration fragment it
// writes, connects a service with its credentials, rotates them, and
// checks that the old ones are refused after the server reloads.
func TestBusCredentialsForACluster(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "bus")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append([]string{"admin", "bus-credentials", "--dir", dir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("bus-credentials %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("init")
	for _, id := range busauth.Identities() {
		fi, err := os.Stat(filepath.Join(dir, id+".creds"))
		if err != nil || fi.Mode().Perm() != 0o600 || !strings.Contains(out, id) {
			t.Fatalf("%s.creds: %v %v\n%s", id, fi, err, out)
		}
	}
	serve := func() *server.Server {
		t.Helper()
		conf := filepath.Join(t.TempDir(), "nats.conf")
		include, _ := filepath.Rel(filepath.Dir(conf), filepath.Join(dir, ServerConfigFile)) // include paths are relative
		if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\ninclude "+include+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		opts, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatalf("the configuration fragment does not load: %v", err)
		}
		return testkit.Serve(t, opts)
	}
	ns := serve()
	old := filepath.Join(t.TempDir(), "old.creds")
	data, _ := os.ReadFile(filepath.Join(dir, "gateway.creds"))
	_ = os.WriteFile(old, data, 0o600)
	nc, err := nats.Connect(ns.ClientURL(), busauth.ConnectOptions("gateway", old)...)
	if err != nil {
		t.Fatalf("gateway credentials: %v", err)
	}
	nc.Close()

	if out := run("rotate", "gateway"); !strings.Contains(out, "new credentials") {
		t.Fatalf("rotate: %s", out)
	}
	if _, err := exec.Command(binary, "admin", "bus-credentials", "--dir", dir, "rotate", "mallory").CombinedOutput(); err == nil {
		t.Fatal("rotate accepted an unknown identity")
	}
	time.Sleep(1100 * time.Millisecond) // the revocation covers keys issued before it
	ns = serve()                        // a server started (or reloaded) with the new fragment
	if nc, err := nats.Connect(ns.ClientURL(), busauth.ConnectOptions("gateway", old)...); err == nil {
		nc.Close()
		t.Fatal("the rotated-out gateway credentials still connect")
	}
	nc, err = nats.Connect(ns.ClientURL(), busauth.ConnectOptions("gateway", filepath.Join(dir, "gateway.creds"))...)
	if err != nil {
		t.Fatalf("new gateway credentials: %v", err)
	}
	nc.Close()

	if p := run("permissions", "observer"); !strings.Contains(p, "$JS.API.STREAM.INFO.*") || strings.Contains(p, "flotilla.svc.") {
		t.Fatalf("observer permissions:\n%s", p)
	}
}
