package console_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/gateway/console"
)

// building is a console on the real API of e but for the fleet overview,
// which answers 503 as while the gateway is still building it, logged in
// as the admin.
func building(t *testing.T, e *env) *env {
	t.Helper()
	return withOverview(t, e, http.StatusServiceUnavailable,
		`{"code":14,"reason":"unavailable","message":"the fleet overview is still being built from the instance events; try again in a moment"}`)
}

// withOverview is a console on the real API of e but for the fleet
// overview, which answers status and body, logged in as the admin.
func withOverview(t *testing.T, e *env, status int, body string) *env {
	t.Helper()
	target, err := url.Parse(e.base)
	if err != nil {
		t.Fatal(err)
	}
	real := httputil.NewSingleHostReverseProxy(target)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/overview" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
			return
		}
		real.ServeHTTP(w, r)
	})
	c, err := console.New(console.Deps{API: api, Log: slog.New(slog.DiscardHandler), Version: "0.0.0-test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	o := &env{t: t, base: srv.URL, client: e.client}
	o.login(adminUser, adminPass).must(t, http.StatusSeeOther, "log in")
	return o
}

// While the gateway is still building the fleet overview, the overview
// page says so and shows the rest (services, recent events) rather than
// failing.
func TestTheOverviewPageSaysWhileTheOverviewIsBuilt(t *testing.T) {
	t.Parallel()
	o := building(t, newEnv(t, false))
	p := o.get("/").must(t, http.StatusOK, "overview while it is built")
	if !strings.Contains(p.body, "data-building") || !strings.Contains(p.body, "still building the fleet overview") ||
		!strings.Contains(p.body, "gateway: ok") {
		t.Fatalf("the overview page while the overview is built:\n%s", p.body)
	}
}

// A filtered instances page takes "of N" from the fleet overview; while
// that is being built the page shows its matches alone, not an error.
func TestAFilteredInstancesPageWithoutTheOverviewShowsItsMatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.login(adminUser, adminPass)
	netID, tplID := e.networkAndTemplate()
	for _, name := range []string{"web-1", "web-2", "db-1"} {
		e.post("/instances/new", url.Values{"name": {name}, "kind": {"design"}, "templateId": {tplID}, "networkId": {netID}}).
			must(t, http.StatusSeeOther, "create "+name)
	}
	p := building(t, e).get("/instances?q=web").must(t, http.StatusOK, "a filtered page while the overview is built")
	if !strings.Contains(p.body, "<small>(2)</small>") || !strings.Contains(p.body, ">web-1<") || strings.Contains(p.body, ">db-1<") {
		t.Fatalf("a filtered page while the overview is built, want its two matches and no total:\n%s", p.body)
	}
}

// The overview page names the instances whose node certificate ends soon,
// each linked, with when, and says what to do; without any, the section
// is left out.
func TestTheOverviewPageNamesCertificatesEndingSoon(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	ov := `{"instances":"2","states":{"running":"2"},"certificatesEndingCount":"1",
		"certificatesEnding":[{"id":"0190c3e1-0000-7000-8000-000000000001","name":"db-1","notAfter":"2026-12-10T08:00:00Z"}]}`
	p := withOverview(t, e, http.StatusOK, ov).get("/").must(t, http.StatusOK, "overview")
	for _, want := range []string{"Certificates ending within 14 days <small>(1)</small>",
		`<a href="/instances/0190c3e1-0000-7000-8000-000000000001">db-1</a>`, "ends 2026-12-10 08:00:00 UTC", "yours to replace"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("the overview page lacks %q:\n%s", want, p.body)
		}
	}
	// The gateway's window (FLOTILLA_CERTIFICATE_WARNING) heads the section.
	wide := strings.Replace(ov, `"instances"`, `"certificateWarning":"2592000s","instances"`, 1)
	if p := withOverview(t, e, http.StatusOK, wide).get("/"); !strings.Contains(p.body, "Certificates ending within 30 days <small>(1)</small>") {
		t.Errorf("the overview page with a 30-day window:\n%s", p.body)
	}
	p = withOverview(t, e, http.StatusOK, `{"instances":"2","states":{"running":"2"}}`).get("/").must(t, http.StatusOK, "overview")
	if strings.Contains(p.body, "certificates-ending") {
		t.Errorf("the overview page has a certificates section without certificates:\n%s", p.body)
	}
}

// The instance page shows when the certificate its node serves ends, as
// its agent's heartbeat reports it.
func TestTheInstancePageShowsWhenTheNodeCertificateEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.login(adminUser, adminPass)
	netID, tplID := e.networkAndTemplate()
	e.post("/instances/new", url.Values{"name": {"web-1"}, "kind": {"design"}, "templateId": {tplID}, "networkId": {netID}}).
		must(t, http.StatusSeeOther, "create web-1")
	_, list := e.api("GET", "/api/v1/instances", nil)
	id := list["instances"].([]any)[0].(map[string]any)["id"].(string)
	if p := e.get("/instances/"+id).must(t, http.StatusOK, "the instance"); !strings.Contains(p.body, "<dt>Node certificate ends</dt><dd><time datetime=\"\">—</time>") {
		t.Fatalf("before any heartbeat the page shows an end:\n%s", p.body)
	}
	ends := time.Date(2027, 3, 3, 17, 31, 6, 0, time.UTC)
	agentgw := rpc.NewClient(e.bus.Conn(t, subjects.AgentGW), subjects.AgentGW, 10*time.Second)
	if _, err := rpc.Call(t.Context(), agentgw, endpoints.LifecycleObserve, &agentv1.AgentEvent{InstanceId: id, Time: timestamppb.Now(),
		Body: &agentv1.AgentEvent_Heartbeat{Heartbeat: &agentv1.Heartbeat{NodeCertificateNotAfter: timestamppb.New(ends)}}}, rpc.As(vocab.Agent(id))); err != nil {
		t.Fatal(err)
	}
	// The gateway reads the instance again once the change's event goes by.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		p := e.get("/instances/"+id).must(t, http.StatusOK, "the instance")
		if strings.Contains(p.body, `<time datetime="2027-03-03T17:31:06Z">2027-03-03 17:31:06 UTC</time>`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page does not show the node certificate's end:\n%s", p.body)
		}
	}
}
