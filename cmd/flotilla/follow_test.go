package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
)

// TestAFollowGoesOnAfterItsStreamBreaks: `flotilla events -f` whose stream
// breaks (the proxy in front of the API cuts the first one after its first
// event, and answers the next 503, as a load balancer with no gateway up)
// says so, follows again after the last event it printed, and prints every
// event once: none lost, none twice; a refusal (the session ended) ends it.
func TestAFollowGoesOnAfterItsStreamBreaks(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	up := startUpFree(t, dir, nil)
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	front, follows := testkit.BreakingProxy(t, up.url(""), "/api/v1/events", 1)

	c := newCLI(t)
	if out, errOut, err := c.run("S3cret-pass\n", nil, "login", "--server", front, "--username", "admin", "--password-stdin"); err != nil {
		t.Fatalf("login: %v\n%s%s", err, out, errOut)
	}
	c.okIn("name: net-1\nprovider: local\nhttpsStrategy: none\n", "networks", "create", "-f", "-")

	var out, errOut testkit.Buffer
	follow := exec.Command(binary, "events", "--entity", "network", "--limit", "1", "-f", "-o", "json")
	follow.Env = append(follow.Environ(), configEnv+"="+c.config)
	follow.Stdout, follow.Stderr = &out, &errOut
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill() })
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20 s\nstdout:\n%s\nstderr:\n%s", what, out.String(), errOut.String())
			}
		}
	}
	waitFor("the first event, then a refused follow and a third", func() bool {
		return strings.Contains(out.String(), "net-1") && follows.Load() >= 3
	})
	for _, name := range []string{"net-2", "net-3"} {
		c.okIn("name: "+name+"\nprovider: local\nhttpsStrategy: none\n", "networks", "create", "-f", "-")
		waitFor(name+"'s event", func() bool { return strings.Contains(out.String(), name) })
	}
	printed := out.String()
	for _, name := range []string{"net-1", "net-2", "net-3"} {
		if n := strings.Count(printed, `"`+name+`"`); n != 1 {
			t.Errorf("%s's event printed %d times, want once:\n%s", name, n, printed)
		}
	}
	if !strings.Contains(errOut.String(), "following again") {
		t.Errorf("the broken stream is not said on stderr:\n%s", errOut.String())
	}
	// A refusal ends it: logged out, the stream ends and the follow asked
	// again is refused; the command says so and exits, not asking again.
	c.ok("logout")
	exited := make(chan error, 1)
	go func() { exited <- follow.Wait() }()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(errOut.String(), "log in again") {
			t.Fatalf("the follow after a logout: %v, want a failure saying to log in again:\n%s", err, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the follow goes on after a logout:\n%s", errOut.String())
	}
}
