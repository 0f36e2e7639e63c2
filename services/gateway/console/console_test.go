package console_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/testkit"
)

// api calls the REST API with the session cookie alone (as the console's
// scripts do) and returns the status and decoded answer.
func (e *env) api(method, path string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(e.t.Context(), method, e.base+path, rd)
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

var idRE = regexp.MustCompile(`/instances/([0-9a-f-]{36})`)

// The console's sessions, forms and pages, as a browser without scripts
// sees them: login sets the cookies right, the API reads with the cookie
// and changes nothing with it alone, forms refuse other sites and missing
// tokens, the API's field errors show at their fields, a stale edit says
// so, and nothing is rendered unescaped or reveals a secret value.
func TestConsoleSessionsFormsAndSafety(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)

	// Not logged in: every page sends the browser to the login form.
	p := e.get("/instances?state=running").must(t, http.StatusSeeOther, "a page without a session")
	if loc := p.header.Get("Location"); loc != "/login?next="+url.QueryEscape("/instances?state=running") {
		t.Fatalf("redirected to %q", loc)
	}
	p = e.get("/login").must(t, 200, "login page")
	csp := p.header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || p.header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("login page headers: %v", p.header)
	}
	if strings.Contains(p.body, "<script>") || strings.Contains(p.body, "style=") {
		t.Fatal("a page has an inline script or style")
	}
	bad := e.do("POST", "/login", url.Values{"username": {adminUser}, "password": {"wrong"}}, nil)
	if bad.status != http.StatusUnauthorized || !strings.Contains(bad.body, "user name or password is wrong") {
		t.Fatalf("a wrong password: %d %s", bad.status, bad.body)
	}
	if e.do("POST", "/login", url.Values{"username": {adminUser}, "password": {adminPass}}, map[string]string{"Sec-Fetch-Site": "cross-site"}).status != http.StatusForbidden {
		t.Fatal("a login posted from another site was taken")
	}
	p = e.do("POST", "/login", url.Values{"username": {adminUser}, "password": {adminPass}, "next": {"//evil.example/"}}, nil)
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/" {
		t.Fatalf("login with a foreign next: %d %q", p.status, p.header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range e.client.Jar.Cookies(mustURL(t, e.base)) {
		if c.Name == "flotilla_session" {
			session = c
		}
	}
	cookieLine := ""
	for _, l := range p.header.Values("Set-Cookie") {
		if strings.HasPrefix(l, "flotilla_session=") {
			cookieLine = l
		}
	}
	if session == nil || !strings.Contains(cookieLine, "HttpOnly") || !strings.Contains(cookieLine, "SameSite=Strict") || strings.Contains(cookieLine, "Secure") {
		t.Fatalf("session cookie: %q", cookieLine)
	}
	e.get("/").must(t, 200, "overview")

	// The cookie reads the API (the live feeds) but changes nothing alone.
	if code, out := e.api("GET", "/api/v1/networks", nil); code != 200 {
		t.Fatalf("GET with the cookie: %d %v", code, out)
	}
	if code, _ := e.api("POST", "/api/v1/networks", map[string]string{"name": "sneaky", "provider": "local", "httpsStrategy": "none"}); code != 401 {
		t.Fatalf("POST with the cookie alone: %d, want 401", code)
	}

	// Forms need the session's token and this site.
	form := url.Values{"name": {"lab"}, "provider": {"local"}, "httpsStrategy": {"none"}}
	if p := e.do("POST", "/networks/new", form, nil); p.status != http.StatusForbidden {
		t.Fatalf("a form without its token: %d", p.status)
	}
	withToken := url.Values{"csrf": {e.csrf()}, "name": {"lab"}, "provider": {"local"}, "httpsStrategy": {"none"}}
	if p := e.do("POST", "/networks/new", withToken, map[string]string{"Origin": "https://evil.example"}); p.status != http.StatusForbidden {
		t.Fatalf("a form from another origin: %d", p.status)
	}

	// The API's field error is shown next to its field, the input kept.
	p = e.post("/networks/new", url.Values{"name": {"Bad Name"}, "provider": {"local"}, "httpsStrategy": {"none"}}).must(t, 400, "bad network")
	if !regexp.MustCompile(`(?s)id="f-name"[^>]*aria-describedby="[^"]*f-name-err"[^>]*aria-invalid="true"`).MatchString(p.body) ||
		!strings.Contains(p.body, `<p class="field-error" id="f-name-err">name: `) || !strings.Contains(p.body, `value="Bad Name"`) {
		t.Fatalf("the field error is not at its field:\n%s", p.body)
	}
	p = e.post("/networks/new", url.Values{"name": {"acme-net"}, "provider": {"local"}, "httpsStrategy": {"acme"}}).must(t, 400, "acme without e-mail")
	if !strings.Contains(p.body, `id="f-acme-contactEmail-err"`) {
		t.Fatalf("the acme e-mail error is not at its field:\n%s", p.body)
	}
	e.post("/networks/new", form).must(t, http.StatusSeeOther, "create network")
	if !strings.Contains(e.get("/networks").body, ">lab</a>") {
		t.Fatalf("the new network is not listed:\n%s", e.get("/networks").body)
	}
	_, nets := e.api("GET", "/api/v1/networks", nil)
	netID := nets["networks"].([]any)[0].(map[string]any)["id"].(string)

	// A stale edit shows the conflict and offers to reload.
	edit := e.get("/networks/"+netID+"/edit").must(t, 200, "edit network")
	if !strings.Contains(edit.body, `name="version" value="1"`) {
		t.Fatalf("the edit form does not carry the version read:\n%s", edit.body)
	}
	// Public addresses on a local network: refused at the field.
	p = e.post("/networks/"+netID+"/edit", url.Values{"version": {"1"}, "name": {"lab"}, "provider": {"local"}, "httpsStrategy": {"none"},
		"assignPublicIp": {"on"}}).must(t, 400, "public addresses on a local network")
	if !strings.Contains(p.body, `<p class="field-error" id="f-assignPublicIp-err">assignPublicIp: is only allowed with provider &#34;aws&#34;`) {
		t.Fatalf("the assignPublicIp error is not at its field:\n%s", p.body)
	}
	e.post("/networks/"+netID+"/edit", url.Values{"version": {"1"}, "name": {"lab"}, "provider": {"local"}, "httpsStrategy": {"self-signed"}}).
		must(t, http.StatusSeeOther, "edit network")
	p = e.post("/networks/"+netID+"/edit", url.Values{"version": {"1"}, "name": {"lab2"}, "provider": {"local"}, "httpsStrategy": {"none"}}).must(t, 409, "stale edit")
	if !strings.Contains(p.body, "changed by someone else") || !strings.Contains(p.body, `href="/networks/`+netID+`/edit" id="reload"`) || !strings.Contains(p.body, `value="lab2"`) {
		t.Fatalf("the stale edit page:\n%s", p.body)
	}

	// A template: setup actions edited as a list, scripts shown escaped.
	tform := url.Values{"name": {"small"}, "provider": {"local"}, "dataDiskGb": {"1"}, "actionCount": {"1"},
		"setupActions[0].type": {"script"}, "setupActions[0].script": {"echo '</textarea><script>alert(1)</script>'"}, "op": {"add"}}
	p = e.post("/templates/new", tform).must(t, 200, "add a setup action")
	if !strings.Contains(p.body, `name="actionCount" value="2"`) || !strings.Contains(p.body, "&lt;/textarea&gt;&lt;script&gt;") {
		t.Fatalf("after adding an action:\n%s", p.body)
	}
	tform.Set("op", "up:1")
	tform.Set("actionCount", "2")
	tform.Set("setupActions[1].type", "env")
	tform.Set("setupActions[1].name", "MODE")
	tform.Set("setupActions[1].value", "dev")
	p = e.post("/templates/new", tform).must(t, 200, "move an action up")
	if !strings.Contains(p.body, `data-focus="f-setupActions-0-type"`) || strings.Index(p.body, `value="MODE"`) > strings.Index(p.body, "alert(1)") {
		t.Fatal("the env action did not move first")
	}
	tform.Del("op")
	tform.Set("setupActions[0].type", "env")
	tform.Set("setupActions[0].name", "MODE")
	tform.Set("setupActions[1].type", "script")
	tform.Set("setupActions[1].name", "")
	tform.Set("setupActions[1].value", "")
	tform.Set("setupActions[0].script", "")
	tform.Set("setupActions[1].script", "echo '</textarea><script>alert(1)</script>'")
	e.post("/templates/new", tform).must(t, http.StatusSeeOther, "create template")
	_, tpls := e.api("GET", "/api/v1/templates", nil)
	tpl := tpls["templates"].([]any)[0].(map[string]any)
	acts := tpl["setupActions"].([]any)
	if len(acts) != 2 || acts[0].(map[string]any)["type"] != "env" || acts[1].(map[string]any)["type"] != "script" {
		t.Fatalf("the template's actions: %v", acts)
	}
	p = e.get("/templates/"+tpl["id"].(string)+"/edit").must(t, 200, "edit template")
	if strings.Contains(p.body, "<script>alert") {
		t.Fatal("a setup script was rendered unescaped")
	}
	bad = e.post("/templates/"+tpl["id"].(string)+"/edit", url.Values{"version": {"1"}, "name": {"small"}, "provider": {"local"}, "dataDiskGb": {"1"},
		"actionCount": {"1"}, "setupActions[0].type": {"file"}, "setupActions[0].path": {"../etc/passwd"}}).must(t, 400, "bad file action")
	if !strings.Contains(bad.body, `id="f-setupActions-0-path-err"`) {
		t.Fatalf("the setup action's error is not at its field:\n%s", bad.body)
	}

	// An instance, a secret: the name is shown, never the value.
	p = e.post("/instances/new", url.Values{"name": {"web-1"}, "kind": {"design"}, "templateId": {tpl["id"].(string)}, "networkId": {netID},
		"logRetention.maxAge": {"3d"}}).must(t, http.StatusSeeOther, "create instance")
	id := idRE.FindStringSubmatch(p.header.Get("Location"))[1]
	_, in := e.api("GET", "/api/v1/instances/"+id, nil)
	if in["logRetention"].(map[string]any)["maxAge"] != "259200s" {
		t.Fatalf("log retention: %v", in["logRetention"])
	}
	const value = "v4lue-that-must-n3ver-show"
	e.post("/instances/"+id+"/secrets", url.Values{"name": {"db-password"}, "value": {value}}).must(t, http.StatusSeeOther, "store secret")
	// A secret broker on another host, out of its queue groups: the
	// cluster page says so and why.
	js, err := jetstream.New(e.bus.Conn(t, subjects.Secrets))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.Join(t.Context(), js, membership.Config{Service: subjects.Secrets, Host: "h-cut-off",
		Readiness: func() (string, bool) { return "the database did not answer", true }}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the cluster page to show the broker out", func() bool {
		return strings.Contains(e.get("/cluster").body, "not ready, out of its queue groups: the database did not answer")
	})
	for _, path := range []string{"/", "/instances", "/instances/" + id, "/instances/" + id + "/edit", "/instances/" + id + "/delete",
		"/instances/" + id + "/logs.txt", "/cluster", "/templates", "/networks"} {
		p := e.get(path).must(t, 200, path)
		if strings.Contains(p.body, value) {
			t.Fatalf("%s shows a secret value", path)
		}
	}
	confirm := e.get("/instances/" + id + "/delete").body
	if !strings.Contains(confirm, "its secrets: db-password") || !strings.Contains(confirm, "and all the data on it") {
		t.Fatalf("the delete confirmation does not name what is destroyed:\n%s", confirm)
	}
	if p := e.post("/instances/"+id+"/delete", url.Values{"confirmName": {"web-2"}}); p.status != 400 {
		t.Fatalf("a delete confirmed with the wrong name: %d", p.status)
	}
	// A forced delete goes through to the API (here: an instance never
	// provisioned, so it is gone at once).
	p = e.post("/instances/new", url.Values{"name": {"web-3"}, "kind": {"design"}, "templateId": {tpl["id"].(string)}, "networkId": {netID}}).
		must(t, http.StatusSeeOther, "create instance web-3")
	id3 := idRE.FindStringSubmatch(p.header.Get("Location"))[1]
	p = e.post("/instances/"+id3+"/delete", url.Values{"confirmName": {"web-3"}, "version": {"1"}, "force": {"true"}}).
		must(t, http.StatusSeeOther, "forced delete")
	if !strings.Contains(e.get("/instances").body, "web-3 is being deleted, forced") {
		t.Fatal("the forced delete was not said to be forced")
	}
	if code, _ := e.api("GET", "/api/v1/instances/"+id3, nil); code != 404 {
		t.Fatalf("web-3 after a forced delete: %d", code)
	}
	if ca := e.get("/ca.pem"); !strings.HasPrefix(ca.body, "-----BEGIN CERTIFICATE-----") || !strings.Contains(ca.header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("CA download: %v %q", ca.header, ca.body)
	}

	// Bulk: a confirmation first, then the action on each.
	p = e.post("/instances/bulk", url.Values{"action": {"delete"}, "id": {id}}).must(t, 200, "bulk confirmation")
	if !strings.Contains(p.body, "web-1") || !strings.Contains(p.body, `name="confirm" value="yes"`) {
		t.Fatalf("bulk confirmation:\n%s", p.body)
	}
	e.post("/instances/bulk", url.Values{"action": {"delete"}, "id": {id}, "confirm": {"yes"}}).must(t, http.StatusSeeOther, "bulk delete")
	if code, _ := e.api("GET", "/api/v1/instances/"+id, nil); code != 404 {
		t.Fatalf("the instance is still there after a bulk delete: %d", code)
	}

	// Logout revokes the token: the cookie reads nothing any more.
	e.post("/logout", url.Values{}).must(t, http.StatusSeeOther, "logout")
	e.client.Jar.SetCookies(mustURL(t, e.base), []*http.Cookie{session})
	if code, _ := e.api("GET", "/api/v1/networks", nil); code != 401 {
		t.Fatalf("the token read after logout: %d", code)
	}
	if p := e.get("/"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.header.Get("Location"), "/login?expired=1") {
		t.Fatalf("a page with a revoked session: %d %q", p.status, p.header.Get("Location"))
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestTheInstancesPageShowsOnePageOfTheFilteredList: the instances page
// asks the API for the one page it shows, by name, with the search and
// filters applied there; it counts the matches and, from the fleet
// overview, every instance; and a page past the last shows the last.
func TestTheInstancesPageShowsOnePageOfTheFilteredList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.login(adminUser, adminPass)
	netID, tplID := e.networkAndTemplate()
	create := func(name, kind string) {
		e.post("/instances/new", url.Values{"name": {name}, "kind": {kind}, "templateId": {tplID}, "networkId": {netID}}).
			must(t, http.StatusSeeOther, "create "+name)
	}
	// Created in reverse, so the page's order is the API's by name.
	for i := 104; i >= 0; i-- {
		create(fmt.Sprintf("web-%03d", i), "design")
	}
	for i := range 3 {
		create(fmt.Sprintf("db-%d", i), "automation")
	}
	// A filtered page's "of N" is the fleet overview's count, which
	// trails the creations by their events' delivery.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ov := e.api("GET", "/api/v1/overview", nil); ov["instances"] == "108" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the overview counts %v instances, want 108", ov["instances"])
		}
	}
	rowRE := regexp.MustCompile(`<th scope="row"><a href="/instances/[^"]+">([^<]+)</a>`)
	check := func(path, count, pager string, first, last string, n int) {
		t.Helper()
		p := e.get(path).must(t, 200, path)
		rows := rowRE.FindAllStringSubmatch(p.body, -1)
		if len(rows) != n || n > 0 && (rows[0][1] != first || rows[len(rows)-1][1] != last) {
			var names []string
			for _, r := range rows {
				names = append(names, r[1])
			}
			t.Errorf("%s: rows %v; want %d from %s to %s", path, names, n, first, last)
		}
		if !strings.Contains(p.body, "<small>("+count+")</small>") || pager != "" && !strings.Contains(p.body, pager) {
			t.Errorf("%s: want the count (%s) and %q:\n%s", path, count, pager, p.body)
		}
	}
	check("/instances", "108", "Page 1 of 2", "db-0", "web-096", 100)
	check("/instances?page=2", "108", "Page 2 of 2", "web-097", "web-104", 8)
	check("/instances?page=9", "108", "Page 2 of 2", "web-097", "web-104", 8)
	check("/instances?kind=automation", "3 of 108", "", "db-0", "db-2", 3)
	check("/instances?q=WEB-10", "5 of 108", "", "web-100", "web-104", 5)
	check("/instances?q=nothing-like-it", "0 of 108", "No instance matches", "", "", 0)
	if p := e.get("/instances?state=sleeping"); p.status != http.StatusBadRequest || !strings.Contains(p.body, "state") {
		t.Errorf("an unknown state: %d\n%s", p.status, p.body)
	}
}

// networkAndTemplate creates a local network "lab" and a template "small"
// through the console, and returns their ids.
func (e *env) networkAndTemplate() (netID, tplID string) {
	e.t.Helper()
	e.post("/networks/new", url.Values{"name": {"lab"}, "provider": {"local"}, "httpsStrategy": {"none"}}).must(e.t, http.StatusSeeOther, "create network")
	e.post("/templates/new", url.Values{"name": {"small"}, "provider": {"local"}, "dataDiskGb": {"1"}, "actionCount": {"0"}}).
		must(e.t, http.StatusSeeOther, "create template")
	_, nets := e.api("GET", "/api/v1/networks", nil)
	_, tpls := e.api("GET", "/api/v1/templates", nil)
	return nets["networks"].([]any)[0].(map[string]any)["id"].(string), tpls["templates"].([]any)[0].(map[string]any)["id"].(string)
}
