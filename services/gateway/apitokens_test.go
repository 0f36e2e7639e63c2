package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestAPITokens: a user mints named API tokens with a role at most their
// own and an expiry; the token is answered once and works as a bearer
// token with its own role (never more than its user's, even after a
// demotion); it may not mint tokens or change the password; admins list
// everyone's tokens and others their own, with the last use; a revoked
// token stops working at once in every gateway.
func TestAPITokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus))
	otherBase := "http://" + other.HTTPAddr
	daveID, dave := e.user("dave", "operator")

	for _, c := range []struct {
		body  reply
		field string
	}{
		{reply{"role": "viewer"}, "name"},
		{reply{"name": "ci", "role": "boss"}, "role"},
		{reply{"name": "ci"}, "role"},
		{reply{"name": "ci", "role": "admin"}, "role"}, // more than dave's
		{reply{"name": "ci", "role": "viewer", "expiresIn": "30s"}, "expiresIn"},
		{reply{"name": "ci", "role": "viewer", "expiresIn": "31536001s"}, "expiresIn"},
	} {
		if code, out := e.as(dave, "POST", "/api/v1/tokens", c.body); code != 400 || out["field"] != c.field {
			t.Errorf("create %v: %d %v, want 400 naming %s", c.body, code, out, c.field)
		}
	}
	made := e.mustAs(dave, 200, "POST", "/api/v1/tokens", reply{"name": "ci", "role": "operator", "expiresIn": "86400s"})
	ci, _ := made["token"].(string)
	meta := made["apiToken"].(reply)
	if len(ci) < 40 || meta["name"] != "ci" || meta["role"] != "operator" || meta["userId"] != daveID || meta["username"] != "dave" {
		t.Fatalf("created %v", made)
	}
	if exp, _ := time.Parse(time.RFC3339, meta["expireTime"].(string)); time.Until(exp) < 23*time.Hour || time.Until(exp) > 25*time.Hour {
		t.Fatalf("expiry %v, want in a day", meta["expireTime"])
	}
	if code, out := e.as(dave, "POST", "/api/v1/tokens", reply{"name": "ci", "role": "viewer"}); code != 409 || out["reason"] != "already_exists" || out["field"] != "name" {
		t.Fatalf("a second live token named ci: %d %v", code, out)
	}
	ro := e.mustAs(dave, 200, "POST", "/api/v1/tokens", reply{"name": "dashboards", "role": "viewer"})["token"].(string)

	// Each works with its own role.
	net := reply{"name": "made-by-ci", "provider": "local", "httpsStrategy": "none"}
	e.mustAs(ci, 200, "POST", "/api/v1/networks", net)
	if code, out := e.as(ro, "POST", "/api/v1/networks", reply{"name": "n2", "provider": "local", "httpsStrategy": "none"}); code != 403 || out["reason"] != "permission_denied" {
		t.Fatalf("a viewer token creating a network: %d %v", code, out)
	}
	e.mustAs(ro, 200, "GET", "/api/v1/networks", nil)
	// A token mints no tokens and changes no password.
	if code, out := e.as(ci, "POST", "/api/v1/tokens", reply{"name": "more", "role": "viewer"}); code != 403 || out["reason"] != "permission_denied" {
		t.Fatalf("a token minting a token: %d %v", code, out)
	}
	if code, _ := e.as(ci, "POST", "/api/v1/users/me:change-password", reply{"currentPassword": "dave-pass", "newPassword": "stolen-pass"}); code != 403 {
		t.Fatalf("a token changing the password: %d", code)
	}

	// Lists: one's own, or everyone's for an admin; with the last use.
	e.must(200, "POST", "/api/v1/tokens", reply{"name": "admin-ci", "role": "admin"})
	names := func(token string) map[string]reply {
		out := map[string]reply{}
		for _, x := range e.mustAs(token, 200, "GET", "/api/v1/tokens", nil)["tokens"].([]any) {
			out[x.(reply)["name"].(string)] = x.(reply)
		}
		return out
	}
	mine := names(dave)
	if len(mine) != 2 || mine["ci"] == nil || mine["dashboards"] == nil {
		t.Fatalf("dave's list: %v", mine)
	}
	if mine["ci"]["lastUseTime"] == nil || mine["ci"]["token"] != nil {
		t.Fatalf("dave's ci token: %v", mine["ci"])
	}
	if all := names(e.token); len(all) != 3 || all["admin-ci"] == nil {
		t.Fatalf("the admin's list: %v", all)
	}

	// A demotion caps the user's tokens.
	daveUser := e.must(200, "GET", "/api/v1/users/"+daveID, nil)
	e.must(200, "PATCH", "/api/v1/users/"+daveID, reply{"version": daveUser["version"], "role": "viewer"})
	if code, out := e.as(ci, "POST", "/api/v1/networks", reply{"name": "n3", "provider": "local", "httpsStrategy": "none"}); code != 403 {
		t.Fatalf("an operator token of a demoted user: %d %v", code, out)
	}

	// Revoking: others' tokens are not found to a non-admin; one's own
	// token is refused at once here and, within moments, everywhere.
	adminTokenID := names(e.token)["admin-ci"]["id"].(string)
	if code, _ := e.as(dave, "DELETE", "/api/v1/tokens/"+adminTokenID, nil); code != 404 {
		t.Fatalf("dave revoking the admin's token: %d", code)
	}
	saved := e.base
	e.base = otherBase
	e.mustAs(ro, 200, "GET", "/api/v1/networks", nil) // cached there
	e.base = saved
	e.mustAs(dave, 200, "DELETE", "/api/v1/tokens/"+mine["dashboards"]["id"].(string), nil)
	if code, _ := e.as(ro, "GET", "/api/v1/networks", nil); code != 401 {
		t.Fatalf("a revoked token here: %d", code)
	}
	e.base = otherBase
	eventually(t, 5*time.Second, func() string {
		if code, _ := e.as(ro, "GET", "/api/v1/networks", nil); code != 401 {
			return fmt.Sprintf("another gateway still takes a revoked token: %d", code)
		}
		return ""
	})
	e.base = saved
	if code, _ := e.as(dave, "DELETE", "/api/v1/tokens/"+mine["dashboards"]["id"].(string), nil); code != 404 {
		t.Fatalf("revoking it again: %d", code)
	}
	if got := names(dave); len(got) != 1 || got["ci"] == nil {
		t.Fatalf("dave's list after revoking: %v", got)
	}
	// The name is free again.
	e.mustAs(dave, 200, "POST", "/api/v1/tokens", reply{"name": "dashboards", "role": "viewer"})
}
