package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
)

// flotillaCLI runs the flotilla binary with args and env, and returns its
// standard output, failing the test if it fails.
func flotillaCLI(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("flotilla %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// managersJSON is the part of `flotilla cluster ... -o json` these tests read.
type managersJSON struct {
	Managers []managerJSON
}

type managerJSON struct {
	Name, Service, Host, Version string
	Pid                          int
	Healthy                      bool
}

// checkClusterCommands runs `flotilla cluster status` and `flotilla cluster
// managers list` against a running cluster of one process per service
// (server), then stops the provisioner's process cleanly (stopProvisioner)
// and sees it leave the list.
func checkClusterCommands(t *testing.T, server, token string, stopProvisioner func()) {
	t.Helper()
	var st managersJSON
	out := flotillaCLI(t, nil, "cluster", "status", "-o", "json", "--server", server, "--token", token)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("cluster status -o json: %v\n%s", err, out)
	}
	pids := map[int]bool{}
	var services []string
	for _, m := range st.Managers {
		if !m.Healthy || m.Pid == os.Getpid() || m.Pid == 0 {
			t.Errorf("manager %+v", m)
		}
		pids[m.Pid] = true
		services = append(services, m.Service)
	}
	slices.Sort(services)
	if want := []string{"agentgw", "ca", "gateway", "inventory", "provisioner", "secrets"}; !slices.Equal(services, want) || len(pids) != 6 {
		t.Fatalf("managers %v from %d processes, want %v from six:\n%s", services, len(pids), want, out)
	}
	if !strings.Contains(out, `"brokers"`) || !strings.Contains(out, `"databases"`) || !strings.Contains(out, `"standalone"`) {
		t.Fatalf("cluster status -o json lacks brokers or databases:\n%s", out)
	}

	// The table, with the token from the environment.
	table := flotillaCLI(t, []string{"FLOTILLA_TOKEN=" + token}, "cluster", "status", "-o", "table", "--server", server)
	for _, want := range []string{"MANAGERS", "BROKERS", "STREAMS", "DATABASES", "FLOTILLA_EVENTS", "standalone", "provisioner."} {
		if !strings.Contains(table, want) {
			t.Fatalf("cluster status table lacks %q:\n%s", want, table)
		}
	}

	// No token: a clear refusal, before anything is asked.
	cmd := exec.Command(binary, "cluster", "managers", "list", "--server", server)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "FLOTILLA_TOKEN=") })
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "FLOTILLA_TOKEN") {
		t.Fatalf("managers list without a token: %v %s", err, b)
	}
	// A wrong token: the API's refusal, said plainly.
	cmd = exec.Command(binary, "cluster", "managers", "list", "--server", server, "--token", "flt_wrong")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "unauthenticated") || !strings.Contains(string(b), "flotilla login") {
		t.Fatalf("managers list with a wrong token: %v %s", err, b)
	}

	// Removing a host whose managers run is refused, naming them; an
	// unknown host is not found.
	cmd = exec.Command(binary, "cluster", "managers", "remove", st.Managers[0].Host, "--server", server, "--token", token)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "invalid_state") || !strings.Contains(string(b), st.Managers[0].Name) {
		t.Fatalf("managers remove of a running host: %v %s", err, b)
	}
	cmd = exec.Command(binary, "cluster", "managers", "remove", "no-such-host", "--server", server, "--token", token)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "not_found") {
		t.Fatalf("managers remove of an unknown host: %v %s", err, b)
	}

	// A cleanly stopped process leaves the list at once (within the
	// gateway's two-second cache).
	stopProvisioner()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := flotillaCLI(t, nil, "cluster", "managers", "list", "-o", "json", "--server", server, "--token", token)
		var ms managersJSON
		if err := json.Unmarshal([]byte(out), &ms); err != nil {
			t.Fatalf("managers list -o json: %v\n%s", err, out)
		}
		if !slices.ContainsFunc(ms.Managers, func(m managerJSON) bool {
			return m.Service == "provisioner"
		}) {
			if len(ms.Managers) != 5 {
				t.Fatalf("after the provisioner stopped: %s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stopped provisioner is still listed:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	list := flotillaCLI(t, nil, "cluster", "managers", "list", "-o", "table", "--server", server, "--token", token)
	if !strings.Contains(list, "HEALTHY") || strings.Contains(list, "BROKERS") || strings.Count(list, "\n") != 6 {
		t.Fatalf("managers list table:\n%s", list)
	}
}

// TestManagerRowsSayWhetherEachIsReady: the READY column of `cluster
// managers list` says yes, or why not and whether the manager stepped out
// of its queue groups for it.
func TestManagerRowsSayWhetherEachIsReady(t *testing.T) {
	t.Parallel()
	now := timestamppb.Now()
	rows := managerRows(&systemv1.Cluster{Time: now, Managers: []*systemv1.Manager{
		{Name: "inventory.h1.1", LastSeenTime: now},
		{Name: "inventory.h2.1", LastSeenTime: now, NotReady: "the database did not answer", SteppedOut: true},
		{Name: "inventory.h3.1", LastSeenTime: now, NotReady: "the database did not answer"},
	}})
	want := []string{"READY", "yes", "no, out of its queue groups: the database did not answer", "no: the database did not answer"}
	for i, row := range rows {
		if got := row[len(row)-1]; got != want[i] {
			t.Errorf("row %d's READY: %q, want %q", i, got, want[i])
		}
	}
}
