package gateway_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/services/gateway"
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

// TestClientsBehindATrustedProxyAreCountedApart: behind a trusted proxy
// (here every request comes from 127.0.0.1, as through HAProxy), failed
// logins are counted per address the proxy forwards, so one client's
// guesses lock out that client, not everyone behind the proxy; and the
// audit records name the forwarded address. The same header from a peer
// that is not trusted counts for nothing (TestLoginsAreThrottledAndAudited:
// the gateway there trusts no proxy).
func TestClientsBehindATrustedProxyAreCountedApart(t *testing.T) {
	t.Parallel()
	proxies, err := gateway.ParseProxies([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) {
		c.SourceLoginPolicy = attempts.Policy{Free: 2, Base: time.Minute, Max: time.Hour, Forget: time.Hour}
		c.TrustedProxies = proxies
	}})
	login := func(from, user, pw string) (int, reply) {
		t.Helper()
		body, _ := json.Marshal(reply{"username": user, "password": pw})
		req, _ := http.NewRequestWithContext(t.Context(), "POST", e.base+"/api/v1/login", bytes.NewReader(body))
		req.Header.Set("X-Forwarded-For", from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := reply{}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	for _, user := range []string{"eve", "mallory", "trent"} {
		if code, out := login("203.0.113.7", user, "guess"); code != 401 {
			t.Fatalf("a guess from 203.0.113.7: %d %v", code, out)
		}
	}
	if code, out := login("203.0.113.7", adminUser, adminPass); code != 429 || !strings.Contains(out["message"].(string), "203.0.113.7") {
		t.Fatalf("203.0.113.7 after three failures: %d %v; want 429 naming it", code, out)
	}
	if code, out := login("203.0.113.8", adminUser, adminPass); code != 200 {
		t.Fatalf("another client behind the same proxy: %d %v; want 200", code, out)
	}
	// The web console's login form passes the forwarded address on.
	consoleLogin := func(from string) (int, string) {
		t.Helper()
		form := url.Values{"username": {adminUser}, "password": {adminPass}}
		req, _ := http.NewRequestWithContext(t.Context(), "POST", e.base+"/login", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-For", from)
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, page := consoleLogin("203.0.113.7"); code == http.StatusSeeOther || !strings.Contains(page, "203.0.113.7") {
		t.Errorf("the console's login from 203.0.113.7, locked out: %d; want a page naming the address", code)
	}
	if code, _ := consoleLogin("203.0.113.9"); code != http.StatusSeeOther {
		t.Errorf("the console's login from 203.0.113.9: %d; want 303", code)
	}
	sources := map[string]string{}
	for _, m := range e.read(t, "FLOTILLA_AUDIT", "flotilla.audit.user.>") {
		rec := &authv1.AuthAudit{}
		if err := proto.Unmarshal(m.Data(), rec); err != nil {
			t.Fatal(err)
		}
		sources[rec.GetAction()+":"+rec.GetUsername()] = rec.GetSource()
	}
	if sources["login-failed:eve"] != "203.0.113.7" || sources["token-issued:"+adminUser] == "" {
		t.Errorf("audit sources %v: want the forwarded addresses", sources)
	}
	for k, src := range sources {
		if src == "127.0.0.1" {
			t.Errorf("audit record %s names the proxy, not the client", k)
		}
	}
}
