package gateway_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/services/inventory/app"
)

// TestLoginsAreThrottledAndAudited: failed logins for one user, and from
// one address, make the next wait (429 with Retry-After, the password not
// checked); failures, refusals, tokens issued and revoked, and a revoked
// token presented are audit records on FLOTILLA_AUDIT naming the user and
// the address, never holding a password or a token.
func TestLoginsAreThrottledAndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{},
		appOptions: []app.Option{app.WithLoginPolicy(attempts.Policy{Free: 2, Base: 2 * time.Minute, Max: time.Hour, Forget: time.Hour})},
		config: func(c *stack.Config) {
			c.SourceLoginPolicy = attempts.Policy{Free: 4, Base: time.Minute, Max: time.Hour, Forget: time.Hour}
		}})
	login := func(user, pw string) (int, reply, http.Header) {
		t.Helper()
		body, _ := json.Marshal(reply{"username": user, "password": pw})
		resp, err := http.Post(e.base+"/api/v1/login", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := reply{}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out, resp.Header
	}
	retryAfter := func(h http.Header) time.Duration {
		s, _ := strconv.Atoi(h.Get("Retry-After"))
		return time.Duration(s) * time.Second
	}

	// Per user: two failures are free, the third makes the next wait two
	// minutes, whatever the password.
	for range 3 {
		if code, out, _ := login(adminUser, "wrong-pass"); code != 401 {
			t.Fatalf("wrong password: %d %v", code, out)
		}
	}
	code, out, h := login(adminUser, adminPass)
	// (The wait counts from the third failure: a slow machine has spent
	// some of it by now.)
	if code != 429 || out["reason"] != "too_many_attempts" || retryAfter(h) < 90*time.Second || retryAfter(h) > 2*time.Minute {
		t.Fatalf("login while the user is locked out: %d %v Retry-After %q", code, out, h.Get("Retry-After"))
	}

	// Per address: the fifth failure from here, whichever the user, makes
	// the next login from here wait a minute.
	for _, user := range []string{"eve", "mallory"} {
		if code, out, _ := login(user, "guess"); code != 401 {
			t.Fatalf("unknown user: %d %v", code, out)
		}
	}
	code, out, h = login("trent", "guess")
	if code != 429 || !strings.Contains(out["message"].(string), "127.0.0.1") || retryAfter(h) < 30*time.Second || retryAfter(h) > time.Minute {
		t.Fatalf("login from a locked-out address: %d %v Retry-After %q", code, out, h.Get("Retry-After"))
	}

	// Logging out revokes the token env logged in with; presented again,
	// it is refused and recorded, naming its user and the client's
	// address (once: the second try within ten minutes is not).
	e.must(200, "POST", "/api/v1/logout", reply{})
	for range 2 {
		if code := e.call("GET", "/api/v1/networks", nil, nil, ""); code != 401 {
			t.Fatalf("a logged-out token: %d, want 401", code)
		}
	}

	var got []string
	issued := ""
	for _, m := range e.read(t, "FLOTILLA_AUDIT", "flotilla.audit.user.>") {
		for _, secret := range []string{adminPass, "wrong-pass", "guess", e.token} {
			if bytes.Contains(m.Data(), []byte(secret)) {
				t.Errorf("audit record %s holds %q", m.Subject(), secret)
			}
		}
		rec := &authv1.AuthAudit{}
		if err := proto.Unmarshal(m.Data(), rec); err != nil {
			t.Fatal(err)
		}
		if rec.GetSource() != "127.0.0.1" || rec.GetTime() == nil {
			t.Errorf("record %s: source %q, time %v", m.Subject(), rec.GetSource(), rec.GetTime())
		}
		switch rec.GetAction() {
		case "token-issued":
			issued = rec.GetTokenId()
		case "token-revoked":
			if rec.GetTokenId() != issued || issued == "" {
				t.Errorf("revoked token %q, issued %q", rec.GetTokenId(), issued)
			}
		}
		got = append(got, rec.GetAction()+":"+rec.GetUsername()+":"+rec.GetReason())
	}
	want := []string{
		"token-issued:admin:",
		"login-failed:admin:wrong password", "login-failed:admin:wrong password", "login-failed:admin:wrong password",
		"login-refused:admin:3 failed logins in a row",
		"login-failed:eve:no such user", "login-failed:mallory:no such user",
		"token-revoked:admin:",
		"token-refused:admin:revoked",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit records:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
