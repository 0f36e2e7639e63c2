package console_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// bearer calls the REST API with an API token, as a script does, and
// returns the status.
func (e *env) bearer(token, method, path string, body any) int {
	e.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(e.t.Context(), method, e.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// userID is the id of the user named name, read through the API.
func (e *env) userID(name string) string {
	e.t.Helper()
	_, out := e.api("GET", "/api/v1/users", nil)
	for _, u := range out["users"].([]any) {
		if u := u.(map[string]any); u["username"] == name {
			return u["id"].(string)
		}
	}
	e.t.Fatalf("no user %s: %v", name, out)
	return ""
}

// eventually reads path until its body has every one of want, and
// returns it (the audit trail is projected a moment after the call).
func (e *env) eventually(path string, want ...string) string {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := e.get(path).must(e.t, 200, path)
		missing := ""
		for _, w := range want {
			if !strings.Contains(p.body, w) {
				missing = w
			}
		}
		if missing == "" {
			return p.body
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s never showed %q:\n%s", path, missing, p.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var (
	tokenRE    = regexp.MustCompile(`id="once-value"[^>]*value="(flt_[^"]+)"`)
	onceRE     = regexp.MustCompile(`id="once-value"[^>]*value="([^"]+)"`)
	versionRE  = regexp.MustCompile(`name="version" value="(\d+)"`)
	navUsersRE = regexp.MustCompile(`<nav[^>]*>(?s:.*?)</nav>`)
)

// The admin's pages and everyone's account and tokens, over HTTP as a
// browser without scripts sees them: an admin creates users (a bad one
// shows its field error), changes a role, resets a password (the user is
// then held on their account page until they choose their own) and
// deletes a user; a viewer sees no Users or Audit and is refused them; an
// API token is shown once, works as a bearer token and stops working when
// revoked; the audit page filtered by user shows that user's calls only;
// a cloud account's secret key is never shown back, and its verification
// says what the cloud answered.
func TestConsoleUsersTokensAuditAccounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.login(adminUser, adminPass).must(t, http.StatusSeeOther, "log in")

	// The header names the user and role from the API; admins see Users
	// and Audit.
	p := e.get("/users").must(t, 200, "users")
	nav := navUsersRE.FindString(p.body)
	for _, want := range []string{`href="/users" aria-current="page"`, `href="/audit"`, `href="/tokens"`, `href="/cloud-accounts"`} {
		if !strings.Contains(nav, want) {
			t.Fatalf("the admin's navigation lacks %s:\n%s", want, nav)
		}
	}
	if !strings.Contains(p.body, `data-user="admin"`) || !strings.Contains(p.body, `class="who" href="/account"`) ||
		!strings.Contains(p.body, `admin <span class="role">admin</span></a>`) || strings.Contains(p.body, "soon") {
		t.Fatalf("the users page:\n%s", p.body)
	}

	// A bad user: the API's error at its field, the input kept, the
	// password never echoed.
	p = e.post("/users/new", url.Values{"username": {"bad name"}, "password": {"olga-pass-1234"}, "role": {"operator"}}).must(t, 400, "bad user")
	if !strings.Contains(p.body, `<p class="field-error" id="f-username-err">username: `) || !strings.Contains(p.body, `value="bad name"`) ||
		strings.Contains(p.body, "olga-pass-1234") {
		t.Fatalf("the bad user's form:\n%s", p.body)
	}
	e.post("/users/new", url.Values{"username": {"olga"}, "password": {"olga-pass-1234"}, "role": {"operator"}}).must(t, http.StatusSeeOther, "create olga")
	p = e.post("/users/new", url.Values{"username": {"vic"}, "password": {"vic-pass-1234"}, "role": {"viewer"}}).must(t, http.StatusSeeOther, "create vic")
	if p.header.Get("Location") != "/users" {
		t.Fatalf("after a create: %q", p.header.Get("Location"))
	}
	p = e.get("/users").must(t, 200, "users")
	if !regexp.MustCompile(`(?s)data-user="olga">.*?<span class="role">operator</span>`).MatchString(p.body) || !strings.Contains(p.body, "The user vic is saved.") {
		t.Fatalf("the new users are not listed:\n%s", p.body)
	}
	olga, vic := e.userID("olga"), e.userID("vic")

	// A viewer sees no admin pages, and the API refuses them.
	v := e.as("vic", "vic-pass-1234")
	nav = navUsersRE.FindString(v.get("/").must(t, 200, "viewer's overview").body)
	if strings.Contains(nav, `href="/users"`) || strings.Contains(nav, `href="/audit"`) || !strings.Contains(nav, `href="/tokens"`) {
		t.Fatalf("the viewer's navigation:\n%s", nav)
	}
	for _, path := range []string{"/users", "/audit", "/users/new", "/users/" + olga + "/edit"} {
		if p := v.get(path).must(t, http.StatusForbidden, "a viewer's "+path); !strings.Contains(p.body, "<h1>Forbidden</h1>") {
			t.Fatalf("a viewer's %s:\n%s", path, p.body)
		}
	}
	if p := v.get("/cloud-accounts").must(t, 200, "a viewer's cloud accounts"); strings.Contains(p.body, "New cloud account") {
		t.Fatal("a viewer is offered to create cloud accounts")
	}

	// A role change, at the version read.
	p = e.get("/users/"+vic+"/edit").must(t, 200, "edit vic")
	if !strings.Contains(p.body, "<h1>Edit user vic</h1>") || strings.Contains(p.body, `name="username"`) || strings.Contains(p.body, `name="password"`) {
		t.Fatalf("the role form:\n%s", p.body)
	}
	ver := versionRE.FindStringSubmatch(p.body)[1]
	e.post("/users/"+vic+"/edit", url.Values{"version": {ver}, "role": {"operator"}}).must(t, http.StatusSeeOther, "change vic's role")
	if p := e.post("/users/"+vic+"/edit", url.Values{"version": {ver}, "role": {"admin"}}).must(t, 409, "stale role change"); !strings.Contains(p.body, "changed by someone else") {
		t.Fatalf("a stale role change:\n%s", p.body)
	}
	if !regexp.MustCompile(`(?s)data-user="vic">.*?<span class="role">operator</span>`).MatchString(e.get("/users").body) {
		t.Fatal("vic's new role is not listed")
	}

	// An API token: shown once, never in a cookie, working as a bearer
	// token until revoked.
	o := e.as("olga", "olga-pass-1234")
	p = o.get("/tokens/new").must(t, 200, "new token form")
	if strings.Contains(p.body, `<option value="admin"`) || !strings.Contains(p.body, `<option value="operator" selected>`) {
		t.Fatalf("an operator's token roles:\n%s", p.body)
	}
	p = o.post("/tokens/new", url.Values{"name": {"ci"}, "role": {"admin"}, "expiresIn": {"1h"}}).must(t, 400, "a token above its user")
	if !strings.Contains(p.body, `id="f-role-err"`) {
		t.Fatalf("the role error is not at its field:\n%s", p.body)
	}
	p = o.post("/tokens/new", url.Values{"name": {"ci"}, "role": {"operator"}, "expiresIn": {"1h"}}).must(t, 200, "create token")
	m := tokenRE.FindStringSubmatch(p.body)
	if m == nil || !strings.Contains(p.body, "Copy it now: it will not be shown again.") || p.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("the new token's page:\n%s", p.body)
	}
	token := m[1]
	for _, c := range p.header.Values("Set-Cookie") {
		if strings.Contains(c, token) {
			t.Fatalf("the token is in a cookie: %s", c)
		}
	}
	list := o.get("/tokens").must(t, 200, "tokens")
	if !strings.Contains(list.body, `data-token="ci"`) || strings.Contains(list.body, token) {
		t.Fatalf("the tokens page:\n%s", list.body)
	}
	if code := o.bearer(token, "GET", "/api/v1/users/me", nil); code != 200 {
		t.Fatalf("the new token reads: %d", code)
	}
	if code := o.bearer(token, "POST", "/api/v1/networks", map[string]string{"name": "olga-net", "provider": "local", "httpsStrategy": "none"}); code != 200 {
		t.Fatalf("the new token creates a network: %d", code)
	}
	_, toks := o.api("GET", "/api/v1/tokens", nil)
	tokID := toks["tokens"].([]any)[0].(map[string]any)["id"].(string)
	if p := o.get("/tokens/"+tokID+"/delete").must(t, 200, "revoke confirmation"); !strings.Contains(p.body, "Revoke the API token ci?") {
		t.Fatalf("the revoke confirmation:\n%s", p.body)
	}
	if p := o.post("/tokens/"+tokID+"/delete", url.Values{"name": {"ci"}}).must(t, http.StatusSeeOther, "revoke"); p.header.Get("Location") != "/tokens" {
		t.Fatalf("after a revoke: %q", p.header.Get("Location"))
	}
	if code := o.bearer(token, "GET", "/api/v1/users/me", nil); code != 401 {
		t.Fatalf("the revoked token reads: %d", code)
	}
	if p := o.get("/tokens"); strings.Contains(p.body, `data-token="ci"`) || !strings.Contains(p.body, "The API token ci is revoked.") {
		t.Fatalf("the tokens page after a revoke:\n%s", p.body)
	}

	// The audit trail, by user: the admin's user creations, not olga's
	// network; olga's network, not a user creation.
	mine := e.eventually("/audit?user=admin", "<code>POST /api/v1/users</code>", olga, vic)
	if strings.Contains(mine, "POST /api/v1/networks") || strings.Contains(mine, "/audit?user=olga") {
		t.Fatalf("the admin's audit records show olga's:\n%s", mine)
	}
	hers := e.eventually("/audit?user=olga", "<code>POST /api/v1/networks</code>", "<code>DELETE /api/v1/tokens/{id}</code>")
	if strings.Contains(hers, "<code>POST /api/v1/users</code>") {
		t.Fatalf("olga's audit records show the admin's:\n%s", hers)
	}
	future := time.Now().UTC().Add(time.Hour).Format("2006-01-02T15:04")
	if p := e.get("/audit?user=olga&from="+future).must(t, 200, "audit from the future"); !strings.Contains(p.body, "No records match the filter.") {
		t.Fatalf("records from the future:\n%s", p.body)
	}
	if p := e.get("/audit?from=yesterday").must(t, 400, "a bad time"); !regexp.MustCompile(`id="a-from"[^>]*aria-invalid="true"`).MatchString(p.body) {
		t.Fatalf("the bad time is not at its field:\n%s", p.body)
	}

	// A password reset: the temporary password once; the user's session
	// ends, and their next login may only choose their own.
	if p := e.get("/users/"+vic+"/reset-password").must(t, 200, "reset confirmation"); !strings.Contains(p.body, "Reset the password of the user vic?") {
		t.Fatalf("the reset confirmation:\n%s", p.body)
	}
	p = e.post("/users/"+vic+"/reset-password", url.Values{"name": {"vic"}}).must(t, 200, "reset")
	temp := onceRE.FindStringSubmatch(p.body)
	if temp == nil || !strings.Contains(p.body, "will not be shown again") {
		t.Fatalf("the reset's page:\n%s", p.body)
	}
	if !strings.Contains(e.get("/users").body, "reset: to change at next login") {
		t.Fatal("the users page does not show the pending reset")
	}
	if p := v.get("/"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.header.Get("Location"), "/login?expired=1") {
		t.Fatalf("vic's session after the reset: %d %q", p.status, p.header.Get("Location"))
	}
	if p := v.login("vic", temp[1]); p.header.Get("Location") != "/account" {
		t.Fatalf("a login with the temporary password goes to %q", p.header.Get("Location"))
	}
	if p := v.get("/instances").must(t, http.StatusSeeOther, "a page before the change"); p.header.Get("Location") != "/account" {
		t.Fatalf("a page before the change goes to %q", p.header.Get("Location"))
	}
	if p := v.get("/account").must(t, 200, "account"); !strings.Contains(p.body, "An admin reset your password") {
		t.Fatalf("the account page:\n%s", p.body)
	}
	p = v.post("/account", url.Values{"currentPassword": {temp[1]}, "newPassword": {"vic-new-pass-1"}, "confirmPassword": {"vic-new-pass-2"}}).must(t, 400, "mismatch")
	if !strings.Contains(p.body, `id="f-confirmPassword-err"`) || strings.Contains(p.body, "vic-new-pass") {
		t.Fatalf("a mismatched new password:\n%s", p.body)
	}
	p = v.post("/account", url.Values{"currentPassword": {"wrong-pass-123"}, "newPassword": {"vic-new-pass-1"}, "confirmPassword": {"vic-new-pass-1"}}).must(t, 400, "wrong current")
	if !strings.Contains(p.body, `id="f-currentPassword-err"`) {
		t.Fatalf("a wrong current password:\n%s", p.body)
	}
	v.post("/account", url.Values{"currentPassword": {temp[1]}, "newPassword": {"vic-new-pass-1"}, "confirmPassword": {"vic-new-pass-1"}}).must(t, http.StatusSeeOther, "change password")
	v.get("/instances").must(t, 200, "a page after the change")
	e.as("vic", "vic-new-pass-1")

	// A cloud account: its secret key never comes back; verifying asks the
	// cloud (a fake STS here) who the keys are.
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/xml")
		_, _ = w.Write([]byte(`<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>` +
			`<Arn>arn:aws:iam::123456789012:user/flotilla</Arn><UserId>AIDAEXAMPLE</UserId><Account>123456789012</Account>` +
			`</GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>`))
	}))
	defer sts.Close()
	const key = "s3cret-k3y-that-never-shows"
	acct := url.Values{"name": {"aws-main"}, "provider": {"aws"}, "aws.region": {"eu-west-1"}, "aws.endpointUrl": {sts.URL},
		"aws.credentials.accessKeyId": {"AKIAEXAMPLEKEY123456"}}
	if p := e.post("/cloud-accounts/new", acct).must(t, 400, "keys without a secret"); !strings.Contains(p.body, `id="f-aws-credentials-secretAccessKey-err"`) {
		t.Fatalf("the missing secret key is not at its field:\n%s", p.body)
	}
	acct.Set("aws.credentials.secretAccessKey", key)
	e.post("/cloud-accounts/new", acct).must(t, http.StatusSeeOther, "create cloud account")
	p = e.get("/cloud-accounts").must(t, 200, "cloud accounts")
	if !strings.Contains(p.body, `data-account="aws-main"`) || !strings.Contains(p.body, "(secret stored)") {
		t.Fatalf("the cloud accounts page:\n%s", p.body)
	}
	_, accs := e.api("GET", "/api/v1/cloud-accounts", nil)
	acctID := accs["cloudAccounts"].([]any)[0].(map[string]any)["id"].(string)
	edit := e.get("/cloud-accounts/"+acctID+"/edit").must(t, 200, "edit cloud account")
	if !strings.Contains(edit.body, "Stored: leave empty to keep it") {
		t.Fatalf("the edit form does not say a key is stored:\n%s", edit.body)
	}
	acct.Del("aws.credentials.secretAccessKey")
	acct.Set("version", versionRE.FindStringSubmatch(edit.body)[1])
	e.post("/cloud-accounts/"+acctID+"/edit", acct).must(t, http.StatusSeeOther, "edit keeping the key")
	p = e.post("/cloud-accounts/"+acctID+"/verify", url.Values{"name": {"aws-main"}}).must(t, http.StatusSeeOther, "verify")
	p = e.get(p.header.Get("Location"))
	if !strings.Contains(p.body, "The cloud account aws-main works: account 123456789012, signed in as arn:aws:iam::123456789012:user/flotilla.") {
		t.Fatalf("after verifying:\n%s", p.body)
	}
	for _, path := range []string{"/cloud-accounts", "/cloud-accounts/" + acctID + "/edit", "/audit", "/cloud-accounts/" + acctID + "/delete"} {
		if strings.Contains(e.get(path).body, key) {
			t.Fatalf("%s shows the secret key", path)
		}
	}

	// Deleting a user names them first.
	if p := e.get("/users/"+olga+"/delete").must(t, 200, "delete confirmation"); !strings.Contains(p.body, "Delete the user olga?") {
		t.Fatalf("the delete confirmation:\n%s", p.body)
	}
	e.post("/users/"+olga+"/delete", url.Values{"name": {"olga"}, "version": {"1"}}).must(t, http.StatusSeeOther, "delete olga")
	if p := e.get("/users"); strings.Contains(p.body, `data-user="olga"`) || !strings.Contains(p.body, "The user olga is deleted.") {
		t.Fatalf("the users page after a delete:\n%s", p.body)
	}
}
