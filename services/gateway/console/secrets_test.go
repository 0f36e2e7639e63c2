package console_test

import (
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConsoleFleetSecrets: an operator stores a fleet secret for a
// template from the Secrets page, sees it listed with the template by
// name and never its value, gives it other templates without retyping
// the value, and deletes it after a confirmation; a refusal says the
// API's field; a viewer sees the list and no form.
func TestConsoleFleetSecrets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.login(adminUser, adminPass).must(t, http.StatusSeeOther, "log in")
	netID, tplID := e.networkAndTemplate()
	e.post("/templates/new", url.Values{"name": {"big"}, "provider": {"local"}, "dataDiskGb": {"2"}, "actionCount": {"0"}}).
		must(t, http.StatusSeeOther, "create template big")
	e.post("/users/new", url.Values{"username": {"vic"}, "password": {"vic-pass-1234"}, "role": {"viewer"}}).must(t, http.StatusSeeOther, "create vic")

	p := e.get("/secrets").must(t, 200, "the fleet secrets")
	if !strings.Contains(p.body, `href="/secrets" aria-current="page"`) || !strings.Contains(p.body, "No fleet secrets.") ||
		!strings.Contains(p.body, `name="templateId" value="`+tplID+`"> small`) {
		t.Fatalf("the empty page:\n%s", p.body)
	}
	// No name, no template chosen: refused, naming the field.
	e.post("/secrets", url.Values{"name": {" "}, "value": {"t0ken-value"}, "templateId": {tplID}}).must(t, http.StatusSeeOther, "a fleet secret without a name")
	if p := e.get("/secrets"); !strings.Contains(p.body, "The fleet secret was not stored: name: is required") {
		t.Fatalf("the refusal of no name:\n%s", p.body)
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "value": {"t0ken-value"}}).must(t, http.StatusSeeOther, "a fleet secret for no template")
	if p := e.get("/secrets"); !strings.Contains(html.UnescapeString(p.body), "The fleet secret was not stored: templateIds: is required") {
		t.Fatalf("the refusal:\n%s", p.body)
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "value": {"t0ken-value"}, "templateId": {tplID}}).must(t, http.StatusSeeOther, "store registry")
	p = e.get("/secrets").must(t, 200, "the fleet secrets")
	if !strings.Contains(p.body, "The fleet secret registry is stored.") || !strings.Contains(p.body, `<a href="/templates/`+tplID+`/edit">small</a>`) ||
		strings.Contains(p.body, "t0ken-value") || !strings.Contains(p.body, `<a href="/secrets/registry/delete"`) {
		t.Fatalf("the page after the store:\n%s", p.body)
	}
	// Its row links to the refresh of its templates' instances: none runs.
	link := `/instances/refresh-configuration?template=` + tplID
	if !strings.Contains(p.body, `<a href="`+link+`"`) {
		t.Fatalf("no link to refresh the instances of the secret's template:\n%s", p.body)
	}
	e.post("/instances/new", url.Values{"name": {"web-1"}, "kind": {"design"}, "templateId": {tplID}, "networkId": {netID}}).must(t, http.StatusSeeOther, "create web-1")
	if p := e.get(link).must(t, 200, "the refresh of the secret's instances"); !strings.Contains(html.UnescapeString(p.body), "Refresh the configuration of 0 instances?") ||
		!strings.Contains(p.body, ">web-1</a>") || !strings.Contains(p.body, "not asked: the instance is created") || strings.Contains(p.body, "configurations</button>") {
		t.Fatalf("the refresh of the secret's instances:\n%s", p.body)
	}

	// No value: its templates alone change, the value and version stay.
	bigID := ""
	for _, l := range strings.Split(p.body, "\n") {
		if strings.Contains(l, `name="templateId"`) && strings.HasSuffix(strings.TrimSpace(l), "big</label>") {
			bigID = strings.Split(strings.Split(l, `value="`)[1], `"`)[0]
		}
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "templateId": {tplID, bigID}}).must(t, http.StatusSeeOther, "give registry big too")
	_, list := e.api("GET", "/api/v1/secrets", nil)
	sec := list["secrets"].([]any)[0].(map[string]any)
	if sec["version"] != "1" || len(sec["templateIds"].([]any)) != 2 {
		t.Fatalf("after its templates changed: %v", sec)
	}
	// For the network lab alone; a new value keeps it, until every network
	// is chosen again.
	networks := func() []any {
		t.Helper()
		_, list := e.api("GET", "/api/v1/secrets", nil)
		n, _ := list["secrets"].([]any)[0].(map[string]any)["networkIds"].([]any)
		return n
	}
	if !strings.Contains(p.body, `name="networkId" value="`+netID+`"> lab`) {
		t.Fatalf("the form offers no network:\n%s", p.body)
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "templateId": {tplID}, "networkId": {netID}}).must(t, http.StatusSeeOther, "registry for lab")
	if n := networks(); len(n) != 1 || n[0] != netID {
		t.Fatalf("registry for lab: networks %v", n)
	}
	if p := e.get("/secrets"); !strings.Contains(p.body, `<td><a href="/networks/`+netID+`/edit">lab</a></td>`) {
		t.Fatalf("the page, registry for lab:\n%s", p.body)
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "value": {"t0ken-value-2"}, "templateId": {tplID, bigID}}).must(t, http.StatusSeeOther, "a new value")
	if n := networks(); len(n) != 1 || n[0] != netID {
		t.Fatalf("a new value widened registry to networks %v", n)
	}
	e.post("/secrets", url.Values{"name": {"registry"}, "templateId": {tplID, bigID}, "allNetworks": {"1"}}).must(t, http.StatusSeeOther, "registry everywhere")
	if n := networks(); len(n) != 0 {
		t.Fatalf("registry for every network: networks %v", n)
	}
	if p := e.get("/secrets"); !strings.Contains(p.body, `<span class="muted">every network</span>`) {
		t.Fatalf("the page, registry for every network:\n%s", p.body)
	}

	// Changed from its row: the form shows its templates and networks
	// checked, and sends the update time it showed; a form another change
	// overtook is refused, and shows the secret as it is now.
	if !strings.Contains(e.get("/secrets").body, `<a href="/secrets?edit=registry#set-h" aria-label="Change registry">Change</a>`) {
		t.Fatal("no link to change registry")
	}
	_, cur := e.api("GET", "/api/v1/secrets/registry", nil)
	form := e.get("/secrets?edit=registry").must(t, 200, "the form that changes registry").body
	if shown := formUpdateTime(t, form); !shown.Equal(must(time.Parse(time.RFC3339Nano, cur["updateTime"].(string)))) {
		t.Fatalf("the form shows update time %v; the secret's is %v", shown, cur["updateTime"])
	}
	for _, want := range []string{"Change the fleet secret registry",
		`name="name" value="registry" readonly`, `name="templateId" value="` + tplID + `" checked> small`, `name="templateId" value="` + bigID + `" checked> big`,
		`name="networkId" value="` + netID + `"> lab`, `name="allNetworks" value="1" checked> every network`, "Change fleet secret</button>"} {
		if !strings.Contains(form, want) {
			t.Fatalf("the form that changes registry lacks %q:\n%s", want, form)
		}
	}
	shown := url.Values{"name": {"registry"}, "updateTime": {cur["updateTime"].(string)}, "templateId": {tplID}, "allNetworks": {"1"}}
	e.post("/secrets", shown).must(t, http.StatusSeeOther, "registry for small alone")
	_, got := e.api("GET", "/api/v1/secrets/registry", nil)
	if fmt.Sprint(got["templateIds"]) != "["+tplID+"]" || got["version"] != "2" {
		t.Fatalf("registry changed from its form: %v", got)
	}
	shown.Set("templateId", bigID) // the same form, sent again: its time is gone
	shown.Set("value", "t0ken-value-3")
	if p := e.post("/secrets", shown).must(t, http.StatusSeeOther, "a form overtaken"); p.header.Get("Location") != "/secrets?edit=registry#set-h" {
		t.Fatalf("a form overtaken goes to %q", p.header.Get("Location"))
	}
	if p := e.get("/secrets?edit=registry"); !strings.Contains(html.UnescapeString(p.body), "The fleet secret was not stored: ") ||
		!strings.Contains(html.UnescapeString(p.body), "after it was read") || !formUpdateTime(t, p.body).Equal(must(time.Parse(time.RFC3339Nano, got["updateTime"].(string)))) ||
		strings.Contains(p.body, `value="`+bigID+`" checked>`) {
		t.Fatalf("the form after it was overtaken:\n%s", p.body)
	}
	if _, now := e.api("GET", "/api/v1/secrets/registry", nil); now["version"] != "2" || fmt.Sprint(now["templateIds"]) != "["+tplID+"]" {
		t.Fatalf("registry after the refusal: %v", now)
	}
	e.get("/secrets?edit=nope").must(t, http.StatusNotFound, "the form that changes a fleet secret that is not")
	e.post("/secrets", url.Values{"name": {"registry"}, "templateId": {tplID, bigID}}).must(t, http.StatusSeeOther, "registry for big again")

	// One read from AWS Secrets Manager: no value, the secret named.
	e.post("/secrets", url.Values{"name": {"license"}, "secretsManagerId": {"prod/license"}, "templateId": {tplID}}).must(t, http.StatusSeeOther, "store license")
	if p := e.get("/secrets"); !strings.Contains(p.body, "The fleet secret license is stored.") || !strings.Contains(p.body, "· AWS Secrets Manager prod/license") {
		t.Fatalf("a fleet secret read from AWS Secrets Manager:\n%s", p.body)
	}

	// A viewer reads the list, with no form, no change and no delete.
	v := e.as("vic", "vic-pass-1234")
	if p := v.get("/secrets").must(t, 200, "a viewer's fleet secrets"); !strings.Contains(p.body, `<th scope="row">registry</th>`) ||
		strings.Contains(p.body, `id="set-fleet-secret"`) || strings.Contains(p.body, "/secrets/registry/delete") || strings.Contains(p.body, "/secrets?edit=") {
		t.Fatalf("a viewer's page:\n%s", p.body)
	}

	// Deleted after the confirmation.
	if p := e.get("/secrets/registry/delete").must(t, 200, "the confirmation"); !strings.Contains(p.body, "Delete the fleet secret registry?") ||
		!strings.Contains(p.body, `action="/secrets/registry/delete"`) {
		t.Fatalf("the confirmation:\n%s", p.body)
	}
	e.post("/secrets/registry/delete", url.Values{}).must(t, http.StatusSeeOther, "delete registry")
	e.post("/secrets/license/delete", url.Values{}).must(t, http.StatusSeeOther, "delete license")
	if p := e.get("/secrets"); !strings.Contains(p.body, "The fleet secret license is deleted.") || !strings.Contains(p.body, "No fleet secrets.") {
		t.Fatalf("after the delete:\n%s", p.body)
	}
}

// formUpdateTime is the update time a fleet secret's change form sends.
func formUpdateTime(t *testing.T, body string) time.Time {
	t.Helper()
	m := regexp.MustCompile(`<input type="hidden" name="updateTime" value="([^"]+)">`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no update time in the form:\n%s", body)
	}
	return must(time.Parse(time.RFC3339Nano, m[1]))
}

// must is v, or a panic with err (a value a test made itself).
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
