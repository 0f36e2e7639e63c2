package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/agentgw"
	"flotilla.dev/flotilla/services/ca"
	"flotilla.dev/flotilla/services/gateway"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/inventory/app"
	"flotilla.dev/flotilla/services/provisioner"
	"flotilla.dev/flotilla/services/secrets"
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
	ns       *server.Server
	nc       *nats.Conn
	spans    *tracetest.SpanRecorder
}

type envOptions struct {
	appOptions []app.Option
	// only starts just these extra services besides inventory and gateway
	// (nil: all of them).
	only []string
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	ns := testkit.NATS(t)
	pool, err := pgstore.Open(ctx, testkit.NewDatabase(t), tp, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		pool.Close()
		_ = tp.Shutdown(context.Background())
	})
	run := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				t.Errorf("service stopped: %v", err)
			}
		}()
	}
	inv, err := inventory.New(ctx, inventory.Deps{Pool: pool, NATS: testkit.NATSConn(t, ns), Log: log, TracerProvider: tp, StreamReplicas: 1, AppOptions: o.appOptions})
	if err != nil {
		t.Fatal(err)
	}
	run(inv.Run)
	want := func(name string) bool {
		if o.only == nil {
			return true
		}
		for _, n := range o.only {
			if n == name {
				return true
			}
		}
		return false
	}
	type runner interface{ Run(context.Context) error }
	// In dependency order: the agent gateway needs the CA at start.
	for _, svc := range []struct {
		name  string
		start func(*nats.Conn) (runner, error)
	}{
		{"ca", func(nc *nats.Conn) (runner, error) {
			dir := t.TempDir()
			return ca.New(ctx, ca.Deps{NATS: nc, Log: log, TracerProvider: tp, CertFile: filepath.Join(dir, "ca.crt"), KeyFile: filepath.Join(dir, "ca.key")})
		}},
		{"secrets", func(nc *nats.Conn) (runner, error) {
			k, err := kms.OpenLocal(filepath.Join(t.TempDir(), "kms", "master.key"))
			if err != nil {
				return nil, err
			}
			return secrets.New(ctx, secrets.Deps{Pool: pool, NATS: nc, KMS: k, Log: log, TracerProvider: tp, StreamReplicas: 1})
		}},
		{"provisioner", func(nc *nats.Conn) (runner, error) {
			return provisioner.New(ctx, provisioner.Deps{NATS: nc, Log: log, TracerProvider: tp})
		}},
		{"agentgw", func(nc *nats.Conn) (runner, error) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			return agentgw.New(ctx, agentgw.Deps{NATS: nc, Log: log, TracerProvider: tp, Listener: l})
		}},
	} {
		if !want(svc.name) {
			continue
		}
		s, err := svc.start(testkit.NATSConn(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		run(s.Run)
	}
	httpL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(ctx, gateway.Deps{NATS: testkit.NATSConn(t, ns), Log: log, TracerProvider: tp, Version: "1.2.3", HTTPListener: httpL, GRPCListener: grpcL})
	if err != nil {
		t.Fatal(err)
	}
	run(gw.Run)
	if err := inventory.InitialSetup(ctx, pool, log, adminUser, adminPass); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, base: "http://" + httpL.Addr().String(), grpcAddr: grpcL.Addr().String(), pool: pool, ns: ns, nc: testkit.NATSConn(t, ns), spans: spans}
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
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
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
