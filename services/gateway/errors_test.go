package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestErrorsCarryAStableReason drives the API into each kind of refusal a
// client must tell apart and checks the JSON body's code, reason and field,
// not the English.
func TestErrorsCarryAStableReason(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"ca", "secrets", "agentgw"}})
	net := e.network("lab")
	tmpl := e.template("small")
	in := e.instance("db-1", tmpl, net)
	id := in["id"].(string)
	e.must(200, "POST", "/api/v1/instances/"+id+":provision", nil) // no provisioner runs: it stays provisioning

	cases := []struct {
		name         string
		method, path string
		body         any
		token        string
		status       int
		reason       string
		field        string
	}{
		{"stale version", "PATCH", "/api/v1/networks/" + net["id"].(string), reply{"version": "7", "name": "lab-2"}, "", 409, "version_mismatch", ""},
		{"name taken", "POST", "/api/v1/networks", reply{"name": "lab", "provider": "local", "httpsStrategy": "none"}, "", 409, "already_exists", ""},
		{"network in use", "DELETE", "/api/v1/networks/" + net["id"].(string), nil, "", 409, "in_use", ""},
		{"action in progress", "POST", "/api/v1/instances/" + id + ":deprovision", nil, "", 409, "lifecycle_busy", ""},
		{"bad field", "POST", "/api/v1/templates", reply{"name": "t2", "provider": "local", "dataDiskGb": 0}, "", 400, "invalid_field", "dataDiskGb"},
		{"nested field", "POST", "/api/v1/templates", reply{"name": "t2", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "file", "path": "../x"}}}, "", 400, "invalid_field", "setupActions[0].path"},
		{"malformed body", "POST", "/api/v1/networks", `{"name":`, "", 400, "malformed_request", ""},
		{"acme without a contact", "POST", "/api/v1/networks", reply{"name": "n2", "provider": "local", "httpsStrategy": "acme"}, "", 400, "invalid_field", "acme.contactEmail"},
		{"missing", "GET", "/api/v1/networks/0190c3e1-0000-7000-8000-000000000000", nil, "", 404, "not_found", ""},
		{"malformed id", "GET", "/api/v1/networks/nope", nil, "", 400, "invalid_field", "id"},
		{"loopback SAN", "POST", "/api/v1/instances", reply{"name": "db-2", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"],
			"ssl": reply{"sans": []string{"db-2.example.test", "127.0.0.1"}}}, "", 400, "invalid_field", "ssl.sans[1]"},
		{"localhost SAN", "POST", "/api/v1/instances", reply{"name": "db-2", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"],
			"ssl": reply{"sans": []string{"LocalHost."}}}, "", 400, "invalid_field", "ssl.sans[0]"},
		{"upper-case id", "GET", "/api/v1/instances/" + strings.ToUpper(id), nil, "", 400, "invalid_field", "id"},
		{"events of no instance id", "GET", "/api/v1/instances/*/events", nil, "", 400, "invalid_field", "id"},
		{"events of a subject pattern", "GET", "/api/v1/instances/" + id + ".%3E/events", nil, "", 400, "invalid_field", "id"},
		{"logs of no instance id", "GET", "/api/v1/instances/%3E/logs", nil, "", 400, "invalid_field", "id"},
		{"no token", "GET", "/api/v1/networks", nil, "-", 401, "unauthenticated", ""},
		{"bad token", "GET", "/api/v1/networks", nil, "flt_nope", 401, "unauthenticated", ""},
		{"no such path", "GET", "/api/v1/nowhere", nil, "", 404, "not_found", ""},
	}
	for _, c := range cases {
		out := reply{}
		code := e.call(c.method, c.path, c.body, &out, c.token)
		if code != c.status || out["reason"] != c.reason || fieldOf(out) != c.field {
			t.Errorf("%s: %d %v, want %d reason %q field %q", c.name, code, out, c.status, c.reason, c.field)
		}
		if _, ok := out["code"].(float64); !ok || out["message"] == "" {
			t.Errorf("%s: body %v lacks code or message", c.name, out)
		}
	}

	// A stale version asking for what is already so changes nothing and
	// is no conflict (the same change sent twice); anything more is one.
	if out := e.must(200, "PATCH", "/api/v1/networks/"+net["id"].(string), reply{"version": "7", "assignPublicIp": false, "httpsStrategy": net["httpsStrategy"]}); out["version"] != net["version"] {
		t.Errorf("a stale PATCH that changes nothing: %v, want the network at version %v", out, net["version"])
	}

	// A running instance: deleting it is refused for its state, not because
	// something else is in progress.
	if _, err := e.pool.Exec(t.Context(), `UPDATE instances SET state = 'running', spec = spec || '{"state":"running"}' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	out := reply{}
	if code := e.call("DELETE", "/api/v1/instances/"+id, nil, &out, ""); code != 409 || out["reason"] != "invalid_state" {
		t.Errorf("delete a running instance: %d %v", code, out)
	}

	// gRPC carries the same reason and field in an ErrorInfo detail.
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e.token)
	_, err = inventoryv1.NewTemplateServiceClient(conn).CreateTemplate(ctx, &inventoryv1.CreateTemplateRequest{
		Template: &inventoryv1.Template{Name: "t3", Provider: "local", DataDiskGb: 99999}})
	var info *errdetails.ErrorInfo
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.GetReason() != "invalid_field" || info.GetDomain() != "flotilla.dev" || info.GetMetadata()["field"] != "dataDiskGb" {
		t.Fatalf("gRPC error %v has ErrorInfo %v", err, info)
	}
}

func fieldOf(r reply) string {
	f, _ := r["field"].(string)
	return f
}

// TestRequestsWhileTheDatabaseIsOutOfReachAreUnavailable: with PostgreSQL
// out of reach (the services' way to it cut, as HAProxy's while PostgreSQL
// fails over), a write and a read are answered 503 unavailable, try again
// — not an internal error, which would say Flotilla is at fault — and once
// it is back, writes go through again.
func TestRequestsWhileTheDatabaseIsOutOfReachAreUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dbProxy: true})
	network := func(name string) map[string]any {
		return map[string]any{"name": name, "provider": "local", "httpsStrategy": "none"}
	}
	e.must(200, "POST", "/api/v1/networks", network("before"))
	e.db.Cut()
	for _, r := range []struct {
		method, path string
		body         any
	}{{"POST", "/api/v1/networks", network("during")}, {"GET", "/api/v1/networks", nil}} {
		out := reply{}
		code := e.call(r.method, r.path, r.body, &out, "")
		if msg, _ := out["message"].(string); code != 503 || out["reason"] != "unavailable" ||
			!strings.Contains(msg, "inventory service is not ready") || !strings.Contains(msg, "try again") {
			t.Errorf("%s %s with the database out of reach: %d %v; want 503, unavailable, try again", r.method, r.path, code, out)
		}
	}
	e.db.Restore()
	tries := 0
	testkit.WaitFor(t, 20*time.Second, "writes to go through again", func() bool {
		tries++
		return e.call("POST", "/api/v1/networks", network(fmt.Sprintf("after-%d", tries)), nil, "") == 200
	})
}
