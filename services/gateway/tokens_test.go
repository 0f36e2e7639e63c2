package gateway_test

import (
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestVerifiedTokensAreCachedAndRevocationsReachEveryGateway: a token is
// verified with the inventory once, then trusted from the gateway's cache;
// logging out through another gateway makes this one refuse the token
// within moments (the revocation record goes by on the bus), and a gateway
// refuses a token it revoked itself at once.
func TestVerifiedTokensAreCachedAndRevocationsReachEveryGateway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus))
	verifications := func() int { return e.served("inventory VerifyTokenRequest") }

	before := verifications()
	for range 5 {
		e.must(200, "GET", "/api/v1/networks", nil)
	}
	if n := verifications() - before; n > 1 {
		t.Fatalf("5 requests with one token verified it %d times, want at most once", n)
	}

	// Log out through the other gateway.
	otherBase := e.base
	e.base = "http://" + other.HTTPAddr
	e.must(200, "POST", "/api/v1/logout", reply{})
	if code := e.call("GET", "/api/v1/networks", nil, nil, ""); code != 401 {
		t.Fatalf("the gateway that revoked the token answered %d, want 401", code)
	}
	e.base = otherBase
	deadline := time.Now().Add(5 * time.Second)
	for e.call("GET", "/api/v1/networks", nil, nil, "") != 401 {
		if time.Now().After(deadline) {
			t.Fatal("a gateway still takes a token another gateway revoked 5 s ago")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStreamsEndWhenTheirTokenIsWithdrawn: a followed feed ends, with a
// last comment saying why, when its API token is revoked (here through
// another gateway, so the revocation reaches this one over the bus) or
// when its user's role changes; other streams go on.
func TestStreamsEndWhenTheirTokenIsWithdrawn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus))
	daveID, dave := e.user("dave", "operator")
	made := e.mustAs(dave, 200, "POST", "/api/v1/tokens", reply{"name": "ci", "role": "viewer"})
	ci, ciID := made["token"].(string), made["apiToken"].(reply)["id"].(string)

	admin := e.token
	e.token = ci
	byToken := e.follow("/api/v1/events?follow=true&entity=network", nil)
	e.token = dave
	bySession := e.follow("/api/v1/events?follow=true&entity=network", nil)
	e.token = admin

	e.network("n1")
	for _, s := range []*sse{byToken, bySession} {
		if _, ev := s.next(); ev["type"] != "network.created" {
			t.Fatalf("followed %v", ev)
		}
	}

	base := e.base
	e.base = "http://" + other.HTTPAddr
	e.mustAs(dave, 200, "DELETE", "/api/v1/tokens/"+ciID, nil)
	e.base = base
	byToken.ended("the revoked token's stream")
	e.network("n2")
	if _, ev := bySession.next(); ev["type"] != "network.created" {
		t.Fatalf("the session's stream after another token's revocation: %v", ev)
	}

	user := e.must(200, "GET", "/api/v1/users/"+daveID, nil)
	e.must(200, "PATCH", "/api/v1/users/"+daveID, reply{"version": user["version"], "role": "viewer"})
	bySession.ended("the stream of a user whose role changed")
}

// ended reads the stream to its end, which must come within 10 s with the
// comment that the token was withdrawn.
func (s *sse) ended(what string) {
	s.t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { s.resp.Body.Close() })
	defer timer.Stop()
	said := false
	for s.sc.Scan() {
		if strings.HasPrefix(s.sc.Text(), ": the stream's token was revoked") {
			said = true
		}
	}
	if !said || s.sc.Err() != nil {
		s.t.Fatalf("%s did not end saying why within 10 s (said %v, %v)", what, said, s.sc.Err())
	}
}
