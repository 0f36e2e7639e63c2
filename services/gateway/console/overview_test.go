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

// While the gateway is still building the fleet overview (GET
// /api/v1/overview answers 503), the overview page says so and shows the
// rest (services, recent events) rather than failing. Here a console runs
// on the real API, but for the overview's answer.
func TestTheOverviewPageSaysWhileTheOverviewIsBuilt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
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
	p := o.get("/").must(t, http.StatusOK, "overview while it is built")
	if !strings.Contains(p.body, "data-building") || !strings.Contains(p.body, "still building the fleet overview") ||
		!strings.Contains(p.body, "gateway: ok") {
		t.Fatalf("the overview page while the overview is built:\n%s", p.body)
	}
}
