package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestAdminsManageUsers: an admin creates users with a role (bad input
// named by field, a taken name refused), lists them (oldest first) and
// reads them, changes a role at the version read (a stale one refused) and
// deletes them; the last admin can be neither demoted nor deleted; nobody
// else may do any of it. A user reads themselves at /users/me.
func TestAdminsManageUsers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})

	for _, c := range []struct {
		body  reply
		field string
	}{
		{reply{"username": "", "password": "long-enough", "role": "viewer"}, "username"},
		{reply{"username": "bad name", "password": "long-enough", "role": "viewer"}, "username"},
		{reply{"username": "ann", "password": "short", "role": "viewer"}, "password"},
		{reply{"username": "ann", "password": "long-enough"}, "role"},
		{reply{"username": "ann", "password": "long-enough", "role": "root"}, "role"},
	} {
		if code, out := e.as(e.token, "POST", "/api/v1/users", c.body); code != 400 || out["field"] != c.field || out["reason"] != "invalid_field" {
			t.Errorf("create %v: %d %v, want 400 naming %s", c.body, code, out, c.field)
		}
	}
	ann := e.must(200, "POST", "/api/v1/users", reply{"username": "ann", "password": "ann-pass-1", "role": "operator"})
	if ann["role"] != "operator" || ann["version"] != "1" || ann["passwordChangeRequired"] != false || ann["password"] != nil {
		t.Fatalf("created %v", ann)
	}
	if code, out := e.as(e.token, "POST", "/api/v1/users", reply{"username": "ann", "password": "other-pass", "role": "viewer"}); code != 409 || out["reason"] != "already_exists" {
		t.Fatalf("a taken name: %d %v", code, out)
	}
	annID := ann["id"].(string)
	annToken := e.login("ann", "ann-pass-1")

	list := e.must(200, "GET", "/api/v1/users?pageSize=1", nil)
	if len(list["users"].([]any)) != 1 || list["nextPageToken"] == "" {
		t.Fatalf("first page: %v", list)
	}
	next := e.must(200, "GET", "/api/v1/users?pageSize=1&pageToken="+list["nextPageToken"].(string), nil)
	if got := next["users"].([]any)[0].(reply); got["username"] != "ann" || next["nextPageToken"] != "" {
		t.Fatalf("second page: %v", next)
	}
	if got := e.must(200, "GET", "/api/v1/users/"+annID, nil); got["username"] != "ann" {
		t.Fatalf("get: %v", got)
	}
	if code, me := e.as(annToken, "GET", "/api/v1/users/me", nil); code != 200 || me["id"] != annID || me["role"] != "operator" {
		t.Fatalf("GET /users/me as ann: %d %v", code, me)
	}

	// Others may not manage users.
	if code, out := e.as(annToken, "PATCH", "/api/v1/users/"+annID, reply{"version": "1", "role": "admin"}); code != 403 || out["reason"] != "permission_denied" {
		t.Fatalf("an operator making herself admin: %d %v", code, out)
	}

	// A role changes at the version read, and applies to her tokens at
	// once, in this gateway and in another.
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus))
	otherBase := "http://" + other.HTTPAddr
	asAnnOn := func(base string) int {
		saved := e.base
		e.base = base
		defer func() { e.base = saved }()
		code, _ := e.as(annToken, "POST", "/api/v1/networks", reply{"name": fmt.Sprintf("n-%d", time.Now().UnixNano()), "provider": "local", "httpsStrategy": "none"})
		return code
	}
	if asAnnOn(e.base) != 200 || asAnnOn(otherBase) != 200 {
		t.Fatal("an operator cannot create networks")
	}
	if code, out := e.as(e.token, "PATCH", "/api/v1/users/"+annID, reply{"role": "viewer"}); code != 400 || out["field"] != "version" {
		t.Fatalf("no version: %d %v", code, out)
	}
	u := e.must(200, "PATCH", "/api/v1/users/"+annID, reply{"version": "1", "role": "viewer"})
	if u["role"] != "viewer" || u["version"] != "2" {
		t.Fatalf("demoted: %v", u)
	}
	if code, out := e.as(e.token, "PATCH", "/api/v1/users/"+annID, reply{"version": "1", "role": "admin"}); code != 409 || out["reason"] != "version_mismatch" {
		t.Fatalf("stale version: %d %v", code, out)
	}
	if code := asAnnOn(e.base); code != 403 {
		t.Fatalf("a demoted operator still creates networks here: %d", code)
	}
	eventually(t, 5*time.Second, func() string {
		if code := asAnnOn(otherBase); code != 403 {
			return fmt.Sprintf("the other gateway still lets the demoted operator create networks: %d", code)
		}
		return ""
	})

	// The last admin stays.
	admin := e.must(200, "GET", "/api/v1/users/me", nil)
	adminID := admin["id"].(string)
	if code, out := e.as(e.token, "PATCH", "/api/v1/users/"+adminID, reply{"version": admin["version"], "role": "operator"}); code != 409 || out["reason"] != "last_admin" {
		t.Fatalf("demoting the last admin: %d %v", code, out)
	}
	if code, out := e.as(e.token, "DELETE", "/api/v1/users/"+adminID, nil); code != 409 || out["reason"] != "last_admin" {
		t.Fatalf("deleting the last admin: %d %v", code, out)
	}
	// With a second admin, the first may go.
	e.must(200, "PATCH", "/api/v1/users/"+annID, reply{"version": "2", "role": "admin"})
	e.must(200, "PATCH", "/api/v1/users/"+adminID, reply{"version": admin["version"], "role": "viewer"})
	if code, out := e.as(annToken, "DELETE", "/api/v1/users/"+annID, nil); code != 409 || out["reason"] != "last_admin" {
		t.Fatalf("the new last admin deleting herself: %d %v", code, out)
	}

	// A deleted user's tokens stop working at once, everywhere.
	bob := e.mustAs(annToken, 200, "POST", "/api/v1/users", reply{"username": "bob", "password": "bob-pass-1", "role": "viewer"})
	bobToken := e.login("bob", "bob-pass-1")
	if code, _ := e.as(bobToken, "GET", "/api/v1/networks", nil); code != 200 {
		t.Fatalf("bob reads networks: %d", code)
	}
	e.mustAs(annToken, 200, "DELETE", "/api/v1/users/"+bob["id"].(string), nil)
	if code, _ := e.as(bobToken, "GET", "/api/v1/networks", nil); code != 401 {
		t.Fatalf("a deleted user's token: %d", code)
	}
	if code, _ := e.as(annToken, "GET", "/api/v1/users/"+bob["id"].(string), nil); code != 404 {
		t.Fatalf("a deleted user: %d", code)
	}
	if code, _ := e.as("-", "POST", "/api/v1/login", reply{"username": "bob", "password": "bob-pass-1"}); code != 401 {
		t.Fatalf("a deleted user logs in: %d", code)
	}

	// The list is oldest first, page after page, not by name.
	for _, name := range []string{"zoe", "bea"} {
		e.mustAs(annToken, 200, "POST", "/api/v1/users", reply{"username": name, "password": name + "-pass-1", "role": "viewer"})
	}
	var names []string
	for token := ""; ; {
		page := e.mustAs(annToken, 200, "GET", "/api/v1/users?pageSize=2&pageToken="+token, nil)
		for _, u := range page["users"].([]any) {
			names = append(names, u.(reply)["username"].(string))
		}
		if token, _ = page["nextPageToken"].(string); token == "" {
			break
		}
	}
	if got := strings.Join(names, " "); got != "admin ann zoe bea" {
		t.Fatalf("the users, page by page: %s; want the oldest first: admin ann zoe bea", got)
	}
}

// TestResetPasswordForcesAChange: an admin's reset answers a temporary
// password once and ends the user's sessions (their API tokens work on);
// logged in with it, the user may only read themselves, change it and log
// out until they change it;
// changing it (the current one checked, the new one named on error) ends
// their other sessions and keeps this one.
func TestResetPasswordForcesAChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	carolID, oldSession := e.user("carol", "operator")
	other := e.login("carol", "carol-pass")
	automation := e.mustAs(oldSession, 200, "POST", "/api/v1/tokens", reply{"name": "ci", "role": "viewer"})["token"].(string)

	reset := e.must(200, "POST", "/api/v1/users/"+carolID+":reset-password", reply{})
	temporary, _ := reset["temporaryPassword"].(string)
	if len(temporary) < 16 || reset["user"].(reply)["passwordChangeRequired"] != true {
		t.Fatalf("reset: %v", reset)
	}
	for _, tok := range []string{oldSession, other} {
		if code, _ := e.as(tok, "GET", "/api/v1/networks", nil); code != 401 {
			t.Fatalf("a session from before the reset: %d", code)
		}
	}
	if code, _ := e.as("-", "POST", "/api/v1/login", reply{"username": "carol", "password": "carol-pass"}); code != 401 {
		t.Fatalf("the old password after a reset: %d", code)
	}
	if code, _ := e.as(automation, "GET", "/api/v1/networks", nil); code != 200 {
		t.Fatalf("carol's API token after the reset: %d, want it working", code)
	}
	var login reply
	if code := e.call("POST", "/api/v1/login", reply{"username": "carol", "password": temporary}, &login, "-"); code != 200 || login["passwordChangeRequired"] != true || login["role"] != "operator" {
		t.Fatalf("login with the temporary password: %d %v", code, login)
	}
	tok := login["token"].(string)
	if code, out := e.as(tok, "GET", "/api/v1/networks", nil); code != 403 || out["reason"] != "password_change_required" {
		t.Fatalf("reading networks before changing the password: %d %v", code, out)
	}
	if code, me := e.as(tok, "GET", "/api/v1/users/me", nil); code != 200 || me["passwordChangeRequired"] != true {
		t.Fatalf("GET /users/me before the change: %d %v", code, me)
	}
	second := e.login("carol", temporary)

	for _, c := range []struct {
		body  reply
		field string
	}{
		{reply{"currentPassword": "wrong-password", "newPassword": "carol-new-pass"}, "currentPassword"},
		{reply{"currentPassword": temporary, "newPassword": "short"}, "newPassword"},
		{reply{"currentPassword": temporary, "newPassword": temporary}, "newPassword"},
	} {
		if code, out := e.as(tok, "POST", "/api/v1/users/me:change-password", c.body); code != 400 || out["field"] != c.field {
			t.Errorf("change %v: %d %v, want 400 naming %s", c.body, code, out, c.field)
		}
	}
	change := reply{"currentPassword": temporary, "newPassword": "carol-new-pass"}
	if code, out := e.as(tok, "POST", "/api/v1/users/me:change-password", change); code != 200 {
		t.Fatalf("change: %d %v", code, out)
	}
	// Sent again (a retry), it succeeds and changes nothing.
	if code, out := e.as(tok, "POST", "/api/v1/users/me:change-password", change); code != 200 {
		t.Fatalf("the same change again: %d %v", code, out)
	}
	if code, _ := e.as(tok, "GET", "/api/v1/networks", nil); code != 200 {
		t.Fatalf("reading networks after the change: %d", code)
	}
	if code, _ := e.as(second, "GET", "/api/v1/networks", nil); code != 401 {
		t.Fatalf("another session after the change: %d", code)
	}
	if code, _ := e.as("-", "POST", "/api/v1/login", reply{"username": "carol", "password": temporary}); code != 401 {
		t.Fatalf("the temporary password after the change: %d", code)
	}
	e.login("carol", "carol-new-pass")
}

// TestViewersSeeSecretsByNameOnly: an operator lists an instance's
// secrets and the fleet secrets with their metadata; a viewer sees their
// names only (and a fleet secret's templates).
func TestViewersSeeSecretsByNameOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"secrets"}})
	t0 := e.template("t")
	tpl := t0["id"].(string)
	in := e.instance("with-secrets", t0, e.network("n"))
	id := in["id"].(string)
	_, op := e.user("oscar", "operator")
	_, vw := e.user("vera", "viewer")
	e.mustAs(op, 200, "POST", "/api/v1/instances/"+id+"/secrets", reply{"name": "db-password", "value": "s3cret"})

	full := e.mustAs(op, 200, "GET", "/api/v1/instances/"+id+"/secrets", nil)["secrets"].([]any)[0].(reply)
	if full["name"] != "db-password" || full["version"] != "1" || full["kmsKeyId"] == "" || full["createTime"] == nil {
		t.Fatalf("an operator's list: %v", full)
	}
	names := e.mustAs(vw, 200, "GET", "/api/v1/instances/"+id+"/secrets", nil)["secrets"].([]any)[0].(reply)
	if names["name"] != "db-password" || names["instanceId"] != id || names["version"] != "0" || names["kmsKeyId"] != "" ||
		names["createTime"] != nil || names["updateTime"] != nil {
		t.Fatalf("a viewer's list: %v", names)
	}
	if code, _ := e.as(vw, "DELETE", "/api/v1/instances/"+id+"/secrets/db-password", nil); code != 403 {
		t.Fatalf("a viewer deleting a secret: %d", code)
	}

	e.mustAs(op, 200, "PUT", "/api/v1/secrets/registry", reply{"value": "fleet-s3cret", "templateIds": []string{tpl}})
	full = e.mustAs(op, 200, "GET", "/api/v1/secrets", nil)["secrets"].([]any)[0].(reply)
	if full["name"] != "registry" || full["version"] != "1" || full["kmsKeyId"] == "" || full["createTime"] == nil || fmt.Sprint(full["templateIds"]) != "["+tpl+"]" {
		t.Fatalf("an operator's list of fleet secrets: %v", full)
	}
	names = e.mustAs(vw, 200, "GET", "/api/v1/secrets", nil)["secrets"].([]any)[0].(reply)
	if names["name"] != "registry" || fmt.Sprint(names["templateIds"]) != "["+tpl+"]" || names["version"] != "0" || names["kmsKeyId"] != "" || names["createTime"] != nil {
		t.Fatalf("a viewer's list of fleet secrets: %v", names)
	}
	if one := e.mustAs(op, 200, "GET", "/api/v1/secrets/registry", nil); fmt.Sprint(one) != fmt.Sprint(full) {
		t.Fatalf("an operator's read of a fleet secret: %v; want what the list shows, %v", one, full)
	}
	if one := e.mustAs(vw, 200, "GET", "/api/v1/secrets/registry", nil); fmt.Sprint(one) != fmt.Sprint(names) {
		t.Fatalf("a viewer's read of a fleet secret: %v; want what the viewer's list shows, %v", one, names)
	}
	for _, m := range []string{"PUT", "DELETE"} {
		if code, _ := e.as(vw, m, "/api/v1/secrets/registry", reply{"value": "x", "templateIds": []string{tpl}}); code != 403 {
			t.Fatalf("a viewer's %s of a fleet secret: %d", m, code)
		}
	}
	e.mustAs(op, 200, "DELETE", "/api/v1/secrets/registry", nil)
}
