package console_test

import (
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestTheInstancePageUpgradesAnAgentBehindTheManager: a running instance
// whose agent is at another version than the manager's (0.1.0-dev against
// 0.0.0-test) shows a button that upgrades it; the agent downloads the
// manager's binary, comes back at its version, and the button is gone.
// The overview counts the agent behind until then.
func TestTheInstancePageUpgradesAnAgentBehindTheManager(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-ldflags", "-X main.version=0.0.0-test", "-o", bin+"/", "flotilla.dev/flotilla/cmd/flotilla-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the manager's agent: %v\n%s", err, out)
	}
	port := strconv.Itoa(testkit.FreePort(t))
	e := newEnv(t, true, func(c *stack.Config) {
		c.HTTPAddr, c.PublicURL, c.AgentBinary = "127.0.0.1:"+port, "http://127.0.0.1:"+port, bin+"/flotilla-agent"
	})
	e.login(adminUser, adminPass)
	netID, tplID := e.networkAndTemplate()
	created := e.post("/instances/new", url.Values{"name": {"web-1"}, "kind": {"design"}, "templateId": {tplID}, "networkId": {netID}}).
		must(t, http.StatusSeeOther, "create web-1")
	page := created.header.Get("Location")
	e.post(page+"/provision", url.Values{}).must(t, http.StatusSeeOther, "provision web-1")
	agent := func() (string, string) {
		_, in := e.api("GET", "/api/v1"+page, nil)
		a, _ := in["agent"].(map[string]any)
		status, _ := a["status"].(string)
		version, _ := a["version"].(string)
		return status + " " + version, in["state"].(string)
	}
	until := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, state := agent()
			if got == want && state == "running" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("web-1 is %s, its agent %q; want running, %q", state, got, want)
			}
		}
	}
	until("connected 0.1.0-dev")
	overview := func(behind bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			p := e.get("/").must(t, 200, "the overview")
			if strings.Contains(p.body, `<span class="badge outdated">1 at another version</span> than the manager's (0.0.0-test)`) == behind {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the overview (want an agent behind: %v):\n%s", behind, p.body)
			}
		}
	}
	overview(true)
	if p := e.get(page).must(t, 200, "web-1's page"); !strings.Contains(p.body, `action="`+page+`/upgrade-agent"`) ||
		!strings.Contains(p.body, "Upgrade the agent to 0.0.0-test") {
		t.Fatalf("web-1's page offers no upgrade of its 0.1.0-dev agent:\n%s", p.body)
	}
	if to := e.post(page+"/upgrade-agent", url.Values{}).must(t, http.StatusSeeOther, "upgrade").header.Get("Location"); to != page {
		t.Fatalf("the upgrade led to %q", to)
	}
	if p := e.get(page); !strings.Contains(p.body, "web-1: the agent upgrades from version 0.1.0-dev to 0.0.0-test; the node software restarts.") {
		t.Errorf("the page after the upgrade says no more of it:\n%s", p.body)
	}
	until("connected 0.0.0-test")
	overview(false)
	if p := e.get(page); strings.Contains(p.body, "/upgrade-agent") {
		t.Errorf("web-1's page still offers an upgrade once its agent is at the manager's version")
	}
}
