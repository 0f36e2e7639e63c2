package provisioner

import (
	"strings"
	"testing"

	"flotilla.dev/flotilla/libs/testkit"
)

// TestChallengeRecordFollowsAliases: a challenge's name that is an alias
// leads, through each alias, to where its record is written; one that is
// none is its own; aliases in a circle, or resolvers that do not answer,
// are errors naming the name.
func TestChallengeRecordFollowsAliases(t *testing.T) {
	t.Parallel()
	d := testkit.StartDNS(t, func(string) ([]string, error) { return nil, nil })
	d.CNAME("_acme-challenge.web-1.customer.test", "web-1.delegated.customer.test")
	d.CNAME("web-1.delegated.customer.test", "web-1-customer.acme.fleet.example")
	d.CNAME("_acme-challenge.loop.test", "a.loop.test")
	d.CNAME("a.loop.test", "_acme-challenge.loop.test")
	for domain, want := range map[string]string{
		"web-1.customer.test":  "web-1-customer.acme.fleet.example",
		"web-1.fleet.example":  "_acme-challenge.web-1.fleet.example",
		"web-1.fleet.example.": "_acme-challenge.web-1.fleet.example",
	} {
		if got, err := challengeRecord(t.Context(), domain, []string{d.Addr}); err != nil || got != want {
			t.Errorf("challengeRecord(%s): %q %v, want %q", domain, got, err, want)
		}
	}
	if _, err := challengeRecord(t.Context(), "loop.test", []string{d.Addr}); err == nil || !strings.Contains(err.Error(), "_acme-challenge.loop.test: more than 8 aliases") {
		t.Errorf("aliases in a circle: %v", err)
	}
	if _, err := challengeRecord(t.Context(), "web-1.fleet.example", []string{"127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "look up whether _acme-challenge.web-1.fleet.example is an alias") {
		t.Errorf("a resolver that does not answer: %v", err)
	}
}
