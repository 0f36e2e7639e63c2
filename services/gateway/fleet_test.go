package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// overviewOf waits (10 s at most) until GET base/api/v1/overview answers
// with want instances and states, and returns the answer.
func (e *env) overviewOf(t *testing.T, base string, want string) reply {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b := e.base
		e.base = base
		code, out := e.as(e.token, "GET", "/api/v1/overview", nil)
		e.base = b
		got := fmt.Sprintf("%v %v", out["instances"], out["states"])
		if code == 200 && got == want {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/api/v1/overview: %d %v, want %s", base, code, out, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// GET /api/v1/overview counts the fleet by state as it changes, for any
// viewer. A gateway started later builds the same from the instance
// events, and from a listing of the instances for those no event in the
// stream speaks of (here: the stream purged, as 90 days' retention would).
func TestTheOverviewCountsTheFleetInEveryGateway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	tmpl, net := e.template("t"), e.network("n")
	a, _ := e.instance("a", tmpl, net), e.instance("b", tmpl, net)
	c := e.instance("c", tmpl, net)
	e.must(200, "DELETE", "/api/v1/instances/"+c["id"].(string), nil)
	e.overviewOf(t, e.base, "2 map[created:2]")
	_, viewer := e.user("vera", "viewer")
	if code, out := e.as(viewer, "GET", "/api/v1/overview", nil); code != 200 || out["agentsExpected"] != "0" || out["failures"] == nil {
		t.Fatalf("a viewer's overview: %d %v", code, out)
	}
	if code, _ := e.as("-", "GET", "/api/v1/overview", nil); code != 401 {
		t.Fatalf("without a token: %d, want 401", code)
	}

	js, err := jetstream.New(e.bus.Unrestricted(t))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(t.Context(), jetstream.WithPurgeSubject(subjects.EntityEvents(subjects.NounInstance, "*"))); err != nil {
		t.Fatal(err)
	}
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Gateway}}, e.bus))
	otherBase := "http://" + other.HTTPAddr
	e.overviewOf(t, otherBase, "2 map[created:2]")
	e.must(200, "DELETE", "/api/v1/instances/"+a["id"].(string), nil)
	e.instance("d", tmpl, net)
	e.instance("f", tmpl, net)
	e.overviewOf(t, otherBase, "3 map[created:3]")
	e.overviewOf(t, e.base, "3 map[created:3]")
}
