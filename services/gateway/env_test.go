package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/gateway"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/inventory/app"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const (
	adminUser = "admin"
	adminPass = "S3cret-pass"
)

// env is one isolated Flotilla: its own database, NATS server, inventory,
// the other services and a gateway, with an admin logged in.
type env struct {
	t        *testing.T
	base     string
	grpcAddr string
	token    string
	pool     *pgxpool.Pool
	nc       *nats.Conn
	bus      *testkit.Bus
	spans    *tracetest.SpanRecorder
	gw       *gateway.Gateway
	// db is the proxy the services reach PostgreSQL through, with
	// envOptions.dbProxy.
	db *testkit.TCPProxy
}

type envOptions struct {
	appOptions []app.Option
	// only starts just these extra services besides inventory and gateway
	// (nil: all of them).
	only []string
	// config changes the stack's configuration.
	config func(*stack.Config)
	// monitored serves the NATS server's monitoring endpoint
	// (env.bus.MonitorURL) and gives it to the gateway.
	monitored bool
	// dbProxy has the services reach PostgreSQL through a proxy the test
	// can cut (env.db).
	dbProxy bool
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	bus := testkit.SecureNATS(t)
	if o.monitored {
		bus = testkit.SecureNATSMonitored(t)
	}
	dbURL := testkit.NewDatabase(t)
	servicesDB, db := dbURL, (*testkit.TCPProxy)(nil)
	if o.dbProxy {
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		db = testkit.NewTCPProxy(t, u.Host)
		u.Host = db.Addr
		servicesDB = u.String()
	}
	cfg := stacktest.OnBus(stack.Config{Version: "1.2.3", TracerProvider: tp, DatabaseURL: servicesDB, InventoryOptions: o.appOptions}, bus)
	if o.monitored {
		cfg.NATSMonitorURLs = []string{bus.MonitorURL}
	}
	if o.config != nil {
		o.config(&cfg)
	}
	if o.only != nil {
		cfg.Services = append([]string{subjects.Inventory, subjects.Gateway}, o.only...)
	}
	st := stacktest.Start(t, cfg)
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := inventory.InitialSetup(t.Context(), pool, nil, adminUser, adminPass); err != nil {
		t.Fatal(err)
	}
	// The test reads the streams as an operator's tools would.
	e := &env{t: t, base: "http://" + st.HTTPAddr, grpcAddr: st.GRPCAddr, pool: pool, nc: bus.Conn(t, busauth.Observer), bus: bus, spans: spans, gw: st.Gateway, db: db}
	var login struct{ Token string }
	if code := e.call("POST", "/api/v1/login", map[string]string{"username": adminUser, "password": adminPass}, &login, ""); code != 200 {
		t.Fatalf("login: %d", code)
	}
	e.token = login.Token
	return e
}

// reply is a decoded JSON response.
type reply = map[string]any

// call sends a JSON request (body may be nil, a string of raw JSON, or a
// value to encode) with the given token ("" for e.token, "-" for none), decodes
// the JSON answer into out (if not nil) and returns the HTTP status.
func (e *env) call(method, path string, body any, out any, token string) int {
	e.t.Helper()
	code, data := e.send(method, path, body, token)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return code
}

// send sends a request as call does and returns the status and the body.
func (e *env) send(method, path string, body any, token string) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = bytes.NewBufferString(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.base+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	switch token {
	case "":
		token = e.token
	case "-":
		token = ""
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, data
}

// must sends a request that must answer want, and returns the JSON reply.
func (e *env) must(want int, method, path string, body any) reply {
	e.t.Helper()
	out := reply{}
	if code := e.call(method, path, body, &out, ""); code != want {
		e.t.Fatalf("%s %s: status %d, want %d: %v", method, path, code, want, out)
	}
	return out
}

// login logs a user in and returns the token.
func (e *env) login(username, password string) string {
	e.t.Helper()
	var out struct{ Token string }
	if code := e.call("POST", "/api/v1/login", reply{"username": username, "password": password}, &out, "-"); code != 200 || out.Token == "" {
		e.t.Fatalf("login as %s: %d", username, code)
	}
	return out.Token
}

// user has the admin create a user with the given role (password
// username+"-pass") and returns its id and a login token of theirs.
func (e *env) user(username, role string) (id, token string) {
	e.t.Helper()
	u := e.must(200, "POST", "/api/v1/users", reply{"username": username, "password": username + "-pass", "role": role})
	return u["id"].(string), e.login(username, username+"-pass")
}

// as sends a request with token and returns the status and the answer,
// decoded if it is a JSON object.
func (e *env) as(token, method, path string, body any) (int, reply) {
	e.t.Helper()
	code, data := e.send(method, path, body, token)
	out := reply{}
	_ = json.Unmarshal(data, &out)
	return code, out
}

// mustAs sends a request with token that must answer want, and returns
// the JSON reply.
func (e *env) mustAs(token string, want int, method, path string, body any) reply {
	e.t.Helper()
	code, out := e.as(token, method, path, body)
	if code != want {
		e.t.Fatalf("%s %s: status %d, want %d: %v", method, path, code, want, out)
	}
	return out
}

// served counts the spans ended so far whose names start with prefix
// (a service's span of a request it answered: "inventory PingRequest").
func (e *env) served(prefix string) int {
	n := 0
	for _, s := range e.spans.Ended() {
		if strings.HasPrefix(s.Name(), prefix) {
			n++
		}
	}
	return n
}

func (e *env) network(name string) reply {
	e.t.Helper()
	return e.must(200, "POST", "/api/v1/networks", reply{"name": name, "provider": "local", "httpsStrategy": "none"})
}

func (e *env) template(name string) reply {
	e.t.Helper()
	return e.must(200, "POST", "/api/v1/templates", reply{"name": name, "provider": "local", "dataDiskGb": 10,
		"setupActions": []reply{{"type": "script", "script": "echo hi"}, {"type": "file", "path": "etc/app.conf", "content": "x=1", "mode": "0644"}, {"type": "env", "name": "APP_MODE", "value": "dev"}}})
}

func (e *env) instance(name string, tmpl, net reply) reply {
	e.t.Helper()
	return e.must(200, "POST", "/api/v1/instances", reply{"name": name, "kind": "design", "templateId": tmpl["id"], "networkId": net["id"]})
}
