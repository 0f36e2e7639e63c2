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
	verifications := func() int {
		n := 0
		for _, s := range e.spans.Ended() {
			if strings.HasPrefix(s.Name(), "inventory VerifyTokenRequest") {
				n++
			}
		}
		return n
	}

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
