package console_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const (
	adminUser = "admin"
	adminPass = "S3cret-pass"
)

// agentBinary builds flotilla-agent once, for local VMs.
var agentBinary = testkit.BuiltBinary("flotilla-agent", false)

// env is one Flotilla (every service, on real NATS and PostgreSQL) with an
// admin user, and a browser-like HTTP client that keeps cookies.
type env struct {
	t      testing.TB
	base   string
	client *http.Client
	bus    *testkit.Bus // the stack's NATS, to act as another service would
}

// newEnv starts a stack; with vms, its local provider runs real agents;
// each of with changes its settings before it starts.
func newEnv(t testing.TB, vms bool, with ...func(*stack.Config)) *env {
	t.Helper()
	dbURL, bus := testkit.NewDatabase(t), testkit.SecureNATS(t)
	cfg := stacktest.OnBus(stack.Config{Version: "0.0.0-test", DatabaseURL: dbURL,
		Log: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelError}))}, bus)
	if vms {
		agent, err := agentBinary()
		if err != nil {
			t.Fatal(err)
		}
		cfg.LocalRoot, cfg.AgentCommand = testkit.LocalRoot(t), []string{agent, "--heartbeat-interval", "2s"}
		t.Cleanup(func() { local.KillAll(cfg.LocalRoot) })
	}
	for _, f := range with {
		f(&cfg)
	}
	st := stacktest.Start(t, cfg)
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := inventory.InitialSetup(t.Context(), pool, nil, adminUser, adminPass); err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	return &env{t: t, base: "http://" + st.HTTPAddr, bus: bus, client: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// testLog writes the stack's errors into the test's log.
type testLog struct{ t testing.TB }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// page is an answer: status, headers, body.
type page struct {
	status int
	header http.Header
	body   string
}

// do sends a request (form: a POST form) with extra headers.
func (e *env) do(method, path string, form url.Values, header map[string]string) page {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.base+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return page{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (e *env) get(path string) page { return e.do("GET", path, nil, nil) }

// must asserts a page's status.
func (p page) must(t testing.TB, status int, what string) page {
	t.Helper()
	if p.status != status {
		t.Fatalf("%s: status %d, want %d\n%s", what, p.status, status, p.body)
	}
	return p
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the form token of the session, read from a page every user
// may open.
func (e *env) csrf() string {
	e.t.Helper()
	m := csrfRE.FindStringSubmatch(e.get("/account").must(e.t, 200, "account").body)
	if m == nil {
		e.t.Fatal("no csrf token on the page")
	}
	return m[1]
}

// post sends a console form with the session's token.
func (e *env) post(path string, form url.Values) page {
	e.t.Helper()
	form.Set("csrf", e.csrf())
	return e.do("POST", path, form, nil)
}

// login sends the login form as user.
func (e *env) login(user, pass string) page {
	e.t.Helper()
	return e.do("POST", "/login", url.Values{"username": {user}, "password": {pass}}, nil)
}

// as is another browser on the same Flotilla, logged in as user.
func (e *env) as(user, pass string) *env {
	e.t.Helper()
	jar, _ := cookiejar.New(nil)
	o := &env{t: e.t, base: e.base, client: &http.Client{Jar: jar, CheckRedirect: e.client.CheckRedirect}}
	o.login(user, pass).must(e.t, http.StatusSeeOther, "log in as "+user)
	return o
}
