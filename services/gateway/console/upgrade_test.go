package console_test

import (
	"html"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestTheConsoleUpgradesAgentsBehindTheManager: running instances whose
// agents are at another version than the manager's (0.1.0-dev against
// 0.0.0-test) are counted on the overview. One is upgraded from its page's
// button (the page, open in a browser, hides it live once the agent is
// back at the manager's version), the other from the overview's link, whose page lists the agents
// behind and no other; the instances list's bulk action says of each
// selected instance whether its agent is asked, or why not, and starts a
// rollout, whose page follows it. Each agent
// downloads the manager's binary and comes back at its version; then the
// buttons, the count and the list are gone. A running instance's page
// refreshes its configuration.
func TestTheConsoleUpgradesAgentsBehindTheManager(t *testing.T) {
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
	pages := map[string]string{}
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		created := e.post("/instances/new", url.Values{"name": {name}, "kind": {"design"}, "templateId": {tplID}, "networkId": {netID}}).
			must(t, http.StatusSeeOther, "create "+name)
		pages[name] = created.header.Get("Location")
	}
	// web-3 stays created, without a VM.
	for _, name := range []string{"web-1", "web-2"} {
		e.post(pages[name]+"/provision", url.Values{}).must(t, http.StatusSeeOther, "provision "+name)
	}
	agent := func(name string) (string, string) {
		_, in := e.api("GET", "/api/v1"+pages[name], nil)
		a, _ := in["agent"].(map[string]any)
		status, _ := a["status"].(string)
		version, _ := a["version"].(string)
		return status + " " + version, in["state"].(string)
	}
	until := func(name, want string) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got, state := agent(name)
			if got == want && state == "running" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is %s, its agent %q; want running, %q", name, state, got, want)
			}
		}
	}
	until("web-1", "connected 0.1.0-dev")
	until("web-2", "connected 0.1.0-dev")
	overview := func(behind string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			p := e.get("/").must(t, 200, "the overview")
			shown := strings.Contains(p.body, `<span class="badge outdated">`+behind+` at another version</span> than the manager's (0.0.0-test)`) &&
				strings.Contains(p.body, `<a href="/instances/upgrade-agents">upgrade them</a>`)
			if shown == (behind != "") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the overview (want %q agents behind):\n%s", behind, p.body)
			}
		}
	}
	overview("2")
	if p := e.get("/instances").must(t, 200, "the instances"); !strings.Contains(p.body, `<span class="muted" data-bind="agent.version">0.1.0-dev</span>`) ||
		!strings.Contains(p.body, `<option value="upgrade-agent">upgrade agent</option>`) {
		t.Errorf("the instances list shows no agent versions or offers no upgrade:\n%s", p.body)
	}

	// One from its page.
	page := pages["web-1"]
	if p := e.get(page).must(t, 200, "web-1's page"); !strings.Contains(p.body, `action="`+page+`/upgrade-agent"`) ||
		!strings.Contains(p.body, "Upgrade the agent to 0.0.0-test") {
		t.Fatalf("web-1's page offers no upgrade of its 0.1.0-dev agent:\n%s", p.body)
	}
	// Its page, open in a browser meanwhile, hides the offer once the
	// agent connects at the manager's version, without a reload.
	b := newBrowser(t, e.base)
	b.logIn()
	b.do("web-1's page", chromedp.Navigate(e.base+page), chromedp.WaitVisible(chromedp.CSS("#upgrade-agent")),
		chromedp.Evaluate[chromedp.Void]("window.notReloaded = true"))
	if to := e.post(page+"/upgrade-agent", url.Values{}).must(t, http.StatusSeeOther, "upgrade").header.Get("Location"); to != page {
		t.Fatalf("the upgrade led to %q", to)
	}
	b.waitFor("the upgrade offer gone", "document.querySelector('#upgrade-agent').hidden && document.querySelector('[data-bind=\"agent.version\"]').textContent === '0.0.0-test'", 90*time.Second)
	if !eval[bool](b, "window.notReloaded === true") {
		t.Error("web-1's page was reloaded")
	}
	if p := e.get(page); !strings.Contains(p.body, "web-1: the agent upgrades from version 0.1.0-dev to 0.0.0-test; the node software restarts.") {
		t.Errorf("the page after the upgrade says no more of it:\n%s", p.body)
	}
	until("web-1", "connected 0.0.0-test")
	overview("1")
	if p := e.get(page); strings.Contains(p.body, "/upgrade-agent") {
		t.Errorf("web-1's page still offers an upgrade once its agent is at the manager's version")
	}

	// The bulk action's confirmation says of each instance what happens.
	ids := url.Values{"action": {"upgrade-agent"}}
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		ids.Add("id", strings.TrimPrefix(pages[name], "/instances/"))
	}
	p := e.post("/instances/bulk", ids).must(t, 200, "the bulk upgrade's confirmation")
	body := html.UnescapeString(p.body)
	for _, want := range []string{
		"Upgrade 1 agent to 0.0.0-test?",
		"not asked: at 0.0.0-test already",   // web-1
		"0.1.0-dev → 0.0.0-test",             // web-2
		"not asked: the instance is created", // web-3
		`<input type="hidden" name="id" value="` + strings.TrimPrefix(pages["web-2"], "/instances/") + `">`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the confirmation does not say %q:\n%s", want, p.body)
		}
	}
	for _, name := range []string{"web-1", "web-3"} {
		if strings.Contains(body, `name="id" value="`+strings.TrimPrefix(pages[name], "/instances/")+`"`) {
			t.Errorf("the confirmation would ask %s's agent", name)
		}
	}

	// The overview's link lists the agent behind, and no other.
	p = e.get("/instances/upgrade-agents").must(t, 200, "the agents behind")
	if body := html.UnescapeString(p.body); !strings.Contains(body, "Upgrade 1 agent to 0.0.0-test?") || !strings.Contains(body, ">web-2</a>") ||
		strings.Contains(body, ">web-1</a>") || strings.Contains(body, ">web-3</a>") {
		t.Fatalf("the agents behind:\n%s", p.body)
	}
	// Confirmed with every instance (a stale form), a rollout of web-2's
	// agent starts, whose page it goes to; the others are named with why
	// not. The rollout's page shows it done, and the list of rollouts has it.
	ids.Set("confirm", "yes")
	ids.Set("parallel", "5")
	to := e.post("/instances/bulk", ids).must(t, http.StatusSeeOther, "the bulk upgrade").header.Get("Location")
	if !strings.HasPrefix(to, "/rollouts/") {
		t.Fatalf("the bulk upgrade led to %q", to)
	}
	p = e.get(to).must(t, 200, "the rollout's page")
	if body := html.UnescapeString(p.body); !strings.Contains(body, "started: 1 instance, 5 at a time. Not asked: web-1 (at 0.0.0-test already); web-3 (the instance is created: an agent is upgraded on a VM that runs).") ||
		!strings.Contains(body, `data-feed="/api/v1/events?entity=rollout&id=`+strings.TrimPrefix(to, "/rollouts/")+`&follow=true&limit=1"`) ||
		!strings.Contains(body, ">web-2</a>") || strings.Contains(body, ">web-1</a>") || !strings.Contains(body, "upgrade-agent to version 0.0.0-test") {
		t.Errorf("the rollout's page:\n%s", p.body)
	}
	until("web-2", "connected 0.0.0-test")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		p = e.get(to).must(t, 200, "the rollout's page")
		if strings.Contains(p.body, `data-bind="state">done</span>`) && strings.Contains(p.body, "done: 1 succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollout's page never shows it done:\n%s", p.body)
		}
	}
	if strings.Contains(p.body, `action="`+to+`/pause"`) && !strings.Contains(p.body, `action="`+to+`/pause" class="inline" data-from="running" hidden>`) {
		t.Errorf("a done rollout's page offers to pause it:\n%s", p.body)
	}
	if p := e.get("/rollouts").must(t, 200, "the rollouts"); !strings.Contains(p.body, `<a href="`+to+`">upgrade-agent-`) || !strings.Contains(p.body, "1 succeeded") {
		t.Errorf("the rollouts list:\n%s", p.body)
	}
	e.post(to+"/pause", url.Values{}).must(t, http.StatusSeeOther, "pause a done rollout")
	if p := e.get(to); !strings.Contains(html.UnescapeString(p.body), "The rollout was not paused: rollout upgrade-agent-") || !strings.Contains(p.body, "is done: it cannot be paused") {
		t.Errorf("a done rollout paused:\n%s", p.body)
	}
	until("web-2", "connected 0.0.0-test")
	overview("")
	if p := e.get("/instances/upgrade-agents").must(t, 200, "no agent behind"); !strings.Contains(p.body, "Every connected agent is at version 0.0.0-test.") {
		t.Errorf("with every agent upgraded:\n%s", p.body)
	}

	// The running instance's page refreshes its configuration; the
	// created one's does not offer it.
	if p := e.get(pages["web-3"]); !strings.Contains(p.body, `id="refresh-configuration" data-from="running" hidden>`) {
		t.Errorf("a created instance's page shows a configuration refresh (it appears, live, once the instance runs):\n%s", p.body)
	}
	if p := e.get(page); !strings.Contains(p.body, `action="`+page+`/refresh-configuration"`) {
		t.Fatalf("web-1's page offers no configuration refresh:\n%s", p.body)
	}
	e.post(page+"/refresh-configuration", url.Values{}).must(t, http.StatusSeeOther, "refresh web-1's configuration")
	if p := e.get(page); !strings.Contains(p.body, "web-1: the agent writes the template&#39;s files and environment again and restarts the node software") {
		t.Errorf("the page after the refresh says nothing of it:\n%s", p.body)
	}
	refreshed := func(page string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, in := e.api("GET", "/api/v1"+page, nil)
			if in["agentProgress"] == "refreshing-configuration/succeeded" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after the refresh: %v", page, in)
			}
		}
	}
	refreshed(page)

	// The bulk action: web-2's is refreshed, web-3 (created) is not asked.
	bulk := url.Values{"action": {"refresh-configuration"}, "id": {strings.TrimPrefix(pages["web-2"], "/instances/"), strings.TrimPrefix(pages["web-3"], "/instances/")}}
	p = e.post("/instances/bulk", bulk).must(t, 200, "the bulk refresh's confirmation")
	if body := html.UnescapeString(p.body); !strings.Contains(body, "Refresh the configuration of 1 instance?") ||
		!strings.Contains(body, "files and environment written, the node software restarted") || !strings.Contains(body, "not asked: the instance is created") ||
		!strings.Contains(body, ">Refresh 1 configuration</button>") {
		t.Fatalf("the bulk refresh's confirmation:\n%s", p.body)
	}
	bulk.Set("confirm", "yes")
	to = e.post("/instances/bulk", bulk).must(t, http.StatusSeeOther, "the bulk refresh").header.Get("Location")
	if p := e.get(to); !strings.Contains(html.UnescapeString(p.body), "started: 1 instance, 1 at a time. Not asked: web-3 (the instance is created") {
		t.Errorf("the rollout's page after the bulk refresh:\n%s", p.body)
	}
	refreshed(pages["web-2"])

	// The template gains a script: web-1's refresh is refused, and its
	// page says why.
	_, tpl := e.api("GET", "/api/v1/templates/"+tplID, nil)
	var login struct{ Token string }
	e.apiJSON("", "POST", "/api/v1/login", map[string]string{"username": adminUser, "password": adminPass}, &login)
	e.apiJSON(login.Token, "PATCH", "/api/v1/templates/"+tplID, map[string]any{"version": tpl["version"],
		"setupActions": []map[string]string{{"type": "script", "script": "echo new"}}}, nil)
	e.post(page+"/refresh-configuration", url.Values{}).must(t, http.StatusSeeOther, "refresh web-1's configuration again")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, in := e.api("GET", "/api/v1"+page, nil)
		if in["agentProgress"] == "refreshing-configuration/failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("web-1 after a refresh its template's new script refuses: %v", in)
		}
	}
	if p := e.get(page); !strings.Contains(html.UnescapeString(p.body), `<span class="error" data-bind="agentProgressMessage">the template's scripts or packages are not those this VM's setup ran (0 then, 1 now): reprovision the instance to run them</span>`) {
		t.Errorf("web-1's page does not say why its refresh failed:\n%s", p.body)
	}

	// A rollout of the same refresh stops at web-1: the overview lists it
	// among the rollouts open, with why.
	to = e.post("/instances/bulk", url.Values{"action": {"refresh-configuration"}, "confirm": {"yes"}, "id": {strings.TrimPrefix(page, "/instances/")}}).
		must(t, http.StatusSeeOther, "a rollout of web-1's refresh").header.Get("Location")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, ro := e.api("GET", "/api/v1"+to, nil); ro["state"] == "stopped" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollout of web-1's refresh never stopped")
		}
	}
	if p := e.get("/").must(t, 200, "the overview"); !strings.Contains(p.body, `<h2 id="rollouts-h">Rollouts open</h2>`) ||
		!strings.Contains(p.body, `<a href="`+to+`">refresh-configuration-`) || !strings.Contains(p.body, "stopped: refresh-configuration failed on web-1") {
		t.Errorf("the overview does not list the stopped rollout:\n%s", p.body)
	}

	// Both run an older version of the template now: the templates page's
	// link lists them, and a rollout reprovisions them one at a time.
	if p := e.get("/templates").must(t, 200, "the templates"); !strings.Contains(p.body, `<a href="/instances/reprovision?template=`+tplID+`"`) {
		t.Errorf("the templates page has no link to roll its version out:\n%s", p.body)
	}
	p = e.get("/instances/reprovision?template="+tplID).must(t, 200, "the instances behind their template")
	if body := html.UnescapeString(p.body); !strings.Contains(body, "Reprovision 2 instances, a group at a time?") || !strings.Contains(body, ">web-1</a>") ||
		!strings.Contains(body, ">web-2</a>") || strings.Contains(body, ">web-3</a>") || !strings.Contains(body, "a new VM, its template v") {
		t.Fatalf("the instances behind their template:\n%s", p.body)
	}
	_, before := e.api("GET", "/api/v1"+pages["web-1"], nil)
	reprovision := url.Values{"action": {"rollout-reprovision"}, "confirm": {"yes"},
		"id": {strings.TrimPrefix(pages["web-1"], "/instances/"), strings.TrimPrefix(pages["web-2"], "/instances/")}}
	to = e.post("/instances/bulk", reprovision).must(t, http.StatusSeeOther, "the rolling reprovision").header.Get("Location")
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, ro := e.api("GET", "/api/v1"+to, nil)
		if ro["state"] == "done" {
			if ro["message"] != "done: 2 succeeded" || ro["action"] != "reprovision" {
				t.Fatalf("the rolling reprovision: %v", ro)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rolling reprovision never done: %v", ro)
		}
	}
	if _, after := e.api("GET", "/api/v1"+pages["web-1"], nil); after["vmId"] == before["vmId"] || after["state"] != "running" {
		t.Errorf("web-1 after the rolling reprovision: %v on %v (was %v)", after["state"], after["vmId"], before["vmId"])
	}
	if p := e.get("/instances/reprovision?template=" + tplID); !strings.Contains(p.body, "Every running instance runs its template") {
		t.Errorf("with every instance reprovisioned:\n%s", p.body)
	}
}
