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

	"flotilla.dev/flotilla/services/gateway/console"
)

// building is a console on the real API of e but for the fleet overview,
// which answers 503 as while the gateway is still building it, logged in
// as the admin.
func building(t *testing.T, e *env) *env {
	t.Helper()
	target, err := url.Parse(e.base)
	if err != nil {
		t.Fatal(err)
	}
	real := httputil.NewSingleHostReverseProxy(target)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/overview" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"code":14,"reason":"unavailable","message":"the fleet overview is still being built from the instance events; try again in a moment"}`)
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
