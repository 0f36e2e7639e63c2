package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// testUsersTokensAudit is TestCLI's session of an admin managing users and
// API tokens, and reading the audit trail, with the client commands alone:
// an operator created with --password-stdin logs in with a configuration
// of their own and is refused what admins alone may do; a role change
// applies at once; a reset password must be changed before anything else;
// an API token works as a bearer token until it is revoked; the audit
// trail shows it all by user and by target.
func testUsersTokensAudit(t *testing.T, admin *cli, server, caFile string) {
	start := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)

	// An admin creates an operator, the password from standard input.
	if out := admin.okIn("Ann-pass-123\n", "users", "create", "ann", "--role", "operator", "--password-stdin"); !strings.Contains(out, "user ann created as operator") {
		t.Fatalf("users create:\n%s", out)
	}
	admin.fails("Ann-pass-123\n", []string{"already_exists"}, "users", "create", "ann", "--role", "operator", "--password-stdin")
	admin.fails("", []string{`--role: "boss" is not a role: viewer, operator, admin`}, "users", "create", "bob", "--role", "boss", "--password-stdin")
	var ann struct{ ID, Username, Role string }
	if out := admin.ok("users", "get", "ann", "-o", "json"); json.Unmarshal([]byte(out), &ann) != nil || ann.Role != "operator" || !isID(ann.ID) {
		t.Fatalf("users get ann -o json:\n%s", out)
	}
	if out := admin.ok("users", "list", "-o", "table"); !strings.Contains(out, "ann ") || !strings.Contains(out, "admin ") {
		t.Fatalf("users list:\n%s", out)
	}

	// The operator logs in with a configuration of their own: the fleet is
	// theirs to read and run, the users are not.
	a := newCLI(t)
	a.okIn("Ann-pass-123\n", "login", "--server", server, "--username", "ann", "--password-stdin", "--ca-file", caFile)
	a.ok("instances", "list")
	a.fails("", []string{"GET /api/v1/users needs the role admin or more; this token's is operator", "permission_denied"}, "users", "list")
	whoami := func(role string) {
		t.Helper()
		var me struct{ Username, Role string }
		if out := a.ok("whoami", "-o", "json"); json.Unmarshal([]byte(out), &me) != nil || me.Username != "ann" || me.Role != role {
			t.Fatalf("whoami -o json, want ann with role %s:\n%s", role, out)
		}
	}
	whoami("operator")

	// A viewer from now on: reads still, changes no more.
	if out := admin.ok("users", "set-role", "ann", "viewer", "-o", "table"); !strings.Contains(out, "user ann: role viewer (was operator") {
		t.Fatalf("users set-role:\n%s", out)
	}
	whoami("viewer")
	a.ok("instances", "list")
	a.fails("name: ann-net\nprovider: local\nhttpsStrategy: none\n", []string{"needs the role operator or more", "permission_denied"}, "networks", "create", "-f", "-")

	// A reset password: the admin gets a temporary one, the user's session
	// ends, and logged in with it they must choose their own first.
	var reset struct {
		TemporaryPassword string
		User              struct{ PasswordChangeRequired bool }
	}
	if out := admin.ok("users", "reset-password", "ann", "-o", "json"); json.Unmarshal([]byte(out), &reset) != nil ||
		reset.TemporaryPassword == "" || !reset.User.PasswordChangeRequired {
		t.Fatalf("users reset-password -o json:\n%s", out)
	}
	a.fails("", []string{"unauthenticated", "log in again"}, "instances", "list")
	a.fails("Ann-pass-123\n", []string{"log in to"}, "login", "--server", server, "--username", "ann", "--password-stdin")
	if out := a.okIn(reset.TemporaryPassword+"\n", "login", "--server", server, "--username", "ann", "--password-stdin"); !strings.Contains(out, "flotilla password") {
		t.Fatalf("a login with a temporary password does not say to change it:\n%s", out)
	}
	if _, errOut := a.fails("", []string{"password_change_required", "change it with flotilla password"}, "instances", "list"); strings.Contains(errOut, "POST /api") {
		t.Fatalf("the client points at the API's endpoint rather than its own command:\n%s", errOut)
	}
	a.fails(reset.TemporaryPassword+"\n", []string{"current password", "a line each"}, "password", "--password-stdin")
	a.okIn(reset.TemporaryPassword+"\nAnn-new-pass-456\n", "password", "--password-stdin")
	a.ok("instances", "list")

	// An API token: printed alone on standard output, a bearer token until
	// it is revoked.
	out, errOut, err := admin.run("", nil, "tokens", "create", "ci", "--role", "operator", "--expires-in", "720h")
	token := strings.TrimSuffix(out, "\n")
	if err != nil || !strings.HasPrefix(token, "flt_") || strings.Contains(token, "\n") || !strings.Contains(errOut, "shown only this once") {
		t.Fatalf("tokens create: %v\nstdout %q\nstderr %s", err, out, errOut)
	}
	bot := newCLI(t, serverEnv+"="+server, tokenEnv+"="+token, caFileEnv+"="+caFile)
	bot.ok("instances", "list")
	bot.fails("", []string{"needs a login session"}, "tokens", "create", "other", "--role", "viewer")
	var created struct {
		Token    string
		APIToken struct{ ID, Name, Role string } `json:"apiToken"`
	}
	if out := admin.ok("tokens", "create", "report", "--role", "viewer", "--expires-in", "1h", "-o", "json"); json.Unmarshal([]byte(out), &created) != nil ||
		!strings.HasPrefix(created.Token, "flt_") || created.APIToken.Name != "report" || created.APIToken.Role != "viewer" {
		t.Fatalf("tokens create -o json:\n%s", out)
	}
	a.ok("tokens", "create", "ci", "--role", "viewer")
	table := admin.ok("tokens", "list", "-o", "table")
	for _, want := range [][]string{{"NAME", "USER", "ROLE", "EXPIRES", "LAST", "USED"}, {"ci", "admin", "operator", "in", "29d"},
		{"ci", "ann", "viewer"}, {"report", "admin", "viewer", "in", "59m"}} {
		if !slices.ContainsFunc(strings.Split(table, "\n"), func(l string) bool {
			f := strings.Fields(l)
			return len(f) >= len(want) && slices.Equal(f[:len(want)], want)
		}) {
			t.Fatalf("tokens list (an admin's: everyone's) has no row %q:\n%s", want, table)
		}
	}
	if out := a.ok("tokens", "list", "-o", "table"); strings.Contains(out, "admin") {
		t.Fatalf("tokens list of a viewer shows another's:\n%s", out)
	}
	// Two tokens named ci: the id tells them apart.
	admin.fails("", []string{`2 API tokens are named "ci"`}, "tokens", "revoke", "ci")
	var list struct {
		Tokens []struct{ ID, Name, Username string }
	}
	if out := admin.ok("tokens", "list", "-o", "json"); json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("tokens list -o json:\n%s", out)
	}
	i := slices.IndexFunc(list.Tokens, func(t struct{ ID, Name, Username string }) bool { return t.Name == "ci" && t.Username == "admin" })
	if i < 0 {
		t.Fatalf("tokens list -o json has no ci of admin: %+v", list.Tokens)
	}
	// A follow of the fleet's events with the token, open as it is revoked,
	// ends saying why.
	feed := exec.Command(binary, "events", "-f", "--limit", "1", "-o", "json")
	feed.Env = append(append(os.Environ(), configEnv+"="+bot.config), bot.env...)
	var feedErr bytes.Buffer
	feed.Stderr = &feedErr
	feedOut, err := feed.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := feed.Start(); err != nil {
		t.Fatal(err)
	}
	on, ended := make(chan struct{}), make(chan error, 1)
	go func() {
		_, _ = bufio.NewReader(feedOut).ReadString('\n') // the newest instance event: the follow is on
		close(on)
		_, _ = io.Copy(io.Discard, feedOut)
		ended <- feed.Wait()
	}()
	t.Cleanup(func() { _ = feed.Process.Kill() })
	select {
	case <-on:
	case <-time.After(30 * time.Second):
		t.Fatalf("events -f printed nothing: %s", feedErr.String())
	}
	if out := admin.ok("tokens", "revoke", list.Tokens[i].ID, "report"); !strings.Contains(out, "API token ci revoked") || !strings.Contains(out, "API token report revoked") {
		t.Fatalf("tokens revoke:\n%s", out)
	}
	bot.fails("", []string{"unauthenticated"}, "instances", "list")
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(feedErr.String(), "token was revoked") {
			t.Fatalf("events -f with a token revoked meanwhile: %v\n%s", err, feedErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("events -f goes on after its token was revoked")
	}
	a.ok("tokens", "revoke", "ci") // a viewer's own: the only ci they see

	// The audit trail: by who acted, and by what it was about (projected
	// from the stream in the background).
	type record struct{ Action, Actor, Username, Target, Result string }
	audit := func(args ...string) []record {
		t.Helper()
		var recs struct{ Records []record }
		if out := admin.ok(append([]string{"audit", "-o", "json", "--since", start, "--limit", "0"}, args...)...); json.Unmarshal([]byte(out), &recs) != nil {
			t.Fatalf("audit %v:\n%s", args, out)
		}
		return recs.Records
	}
	has := func(recs []record, action, target string) bool {
		return slices.ContainsFunc(recs, func(r record) bool { return r.Action == action && r.Target == target })
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		byAdmin, aboutAnn := audit("--user", "admin"), audit("--target", "user/ann")
		if has(byAdmin, "user-created", ann.ID) && has(byAdmin, "POST /api/v1/users", ann.ID) && has(aboutAnn, "password-changed", ann.ID) {
			for _, r := range aboutAnn {
				if r.Target != ann.ID {
					t.Fatalf("audit --target user/ann has a record about %s: %+v", r.Target, r)
				}
			}
			for _, action := range []string{"user-created", "role-changed", "password-reset", "PATCH /api/v1/users/{id}"} {
				if !has(aboutAnn, action, ann.ID) {
					t.Fatalf("audit --target user/ann lacks %s: %+v", action, aboutAnn)
				}
			}
			for _, r := range byAdmin {
				if r.Username != "admin" {
					t.Fatalf("audit --user admin has a record of %s: %+v", r.Username, r)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the audit trail lacks the user's creation or password change:\nby admin %+v\nabout ann %+v", byAdmin, aboutAnn)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := admin.ok("audit", "--target", ann.ID, "--limit", "1", "-o", "table"); len(strings.Split(strings.TrimSpace(out), "\n")) != 2 ||
		!strings.HasPrefix(out, "TIME ") || !strings.Contains(out, "POST /api/v1/users/me:change-password") {
		t.Fatalf("audit --target ID --limit 1 -o table (the newest, the call that changed the password):\n%s", out)
	}
	a.fails("", []string{"GET /api/v1/audit needs the role admin"}, "audit")

	// Deleted, the user can do nothing more.
	admin.ok("users", "delete", "ann")
	a.fails("", []string{"unauthenticated"}, "instances", "list")
}
