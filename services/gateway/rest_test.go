package gateway_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestStatusAnswersWithoutTokenAndReportsEveryService(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	st := reply{}
	if code := e.call("GET", "/api/v1/status", nil, &st, "-"); code != 200 {
		t.Fatalf("status: %d %v", code, st)
	}
	if st["status"] != "ok" || st["version"] != "1.2.3" {
		t.Fatalf("status %v", st)
	}
	names := map[string]bool{}
	for _, c := range st["components"].([]any) {
		names[c.(reply)["name"].(string)] = c.(reply)["status"] == "ok"
	}
	for _, svc := range []string{"gateway", "inventory", "ca", "secrets", "provisioner", "agentgw"} {
		if !names[svc] {
			t.Errorf("component %s missing or not ok: %v", svc, st["components"])
		}
	}
}

// TestStatusIsDegradedWhenAServiceIsMissing: with the provisioner missing
// the status is degraded, answered 503 for a load balancer, and the gateway
// says so in its log once, naming the service, however often it is asked;
// once the provisioner answers, the status is ok and the log says so, once.
func TestStatusIsDegradedWhenAServiceIsMissing(t *testing.T) {
	t.Parallel()
	var logs testkit.Buffer
	e := newEnv(t, envOptions{only: []string{"ca", "secrets", "agentgw"}, config: func(c *stack.Config) {
		c.Log = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	for range 2 {
		st := reply{}
		if code := e.call("GET", "/api/v1/status", nil, &st, "-"); code != 503 {
			t.Fatalf("status code %d, want 503 for a load balancer: %v", code, st)
		}
		if st["status"] != "degraded" || !strings.Contains(fmt.Sprint(st["components"]), "provisioner service is not available") {
			t.Fatalf("status %v", st)
		}
		time.Sleep(1100 * time.Millisecond) // past the status kept for a second: pinged again
	}
	var said []string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "status degraded") {
			said = append(said, l)
		}
	}
	if len(said) != 1 || !strings.Contains(said[0], "provisioner: ") || strings.Contains(said[0], "inventory: ") {
		t.Fatalf("the gateway logged %q; want one warning naming the provisioner, and only it", said)
	}

	// A provisioner (its ping alone) starts.
	p, err := rpc.New(e.bus.Conn(t, subjects.Provisioner), subjects.Provisioner, "1.2.3", "provisioner", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	testkit.WaitFor(t, 10*time.Second, "the status ok", func() bool { return e.call("GET", "/api/v1/status", nil, nil, "-") == 200 })
	time.Sleep(1100 * time.Millisecond) // asked again: still ok, said once
	if code := e.call("GET", "/api/v1/status", nil, nil, "-"); code != 200 {
		t.Fatalf("status code %d once the provisioner answers", code)
	}
	if n := strings.Count(logs.String(), "status ok again"); n != 1 {
		t.Fatalf("the gateway logged \"status ok again\" %d times; want once:\n%s", n, logs.String())
	}
}

func TestTheFleetCACertificateIsServedAsPEMAndJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := e.must(200, "GET", "/api/v1/ca", nil)
	pemText, _ := c["certificatePem"].(string)
	if !strings.HasPrefix(pemText, "-----BEGIN CERTIFICATE-----") || len(c["fingerprintSha256"].(string)) != 64 || c["notAfter"] == "" {
		t.Fatalf("GET /api/v1/ca: %v", c)
	}
	req, _ := http.NewRequest("GET", e.base+"/api/v1/ca/certificate", nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != pemText || resp.Header.Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("GET /api/v1/ca/certificate: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if code := e.call("GET", "/api/v1/ca/certificate", nil, nil, "-"); code != 401 {
		t.Fatalf("CA certificate without a token: %d", code)
	}
}

func TestEveryEndpointButStatusLoginAndOpenAPINeedsAToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	protected := []struct{ method, path string }{
		{"GET", "/api/v1/networks"}, {"POST", "/api/v1/networks"}, {"GET", "/api/v1/networks/x"},
		{"PATCH", "/api/v1/networks/x"}, {"DELETE", "/api/v1/networks/x"},
		{"GET", "/api/v1/templates"}, {"POST", "/api/v1/templates"}, {"GET", "/api/v1/templates/x"},
		{"PATCH", "/api/v1/templates/x"}, {"DELETE", "/api/v1/templates/x"},
		{"GET", "/api/v1/instances"}, {"POST", "/api/v1/instances"}, {"GET", "/api/v1/instances/x"},
		{"PATCH", "/api/v1/instances/x"}, {"DELETE", "/api/v1/instances/x"},
		{"POST", "/api/v1/logout"}, {"GET", "/api/v1/no-such-thing"},
	}
	for _, p := range protected {
		for _, token := range []string{"-", "flt_not-a-real-token"} {
			out := reply{}
			if code := e.call(p.method, p.path, "{}", &out, token); code != 401 {
				t.Errorf("%s %s with token %q: %d, want 401", p.method, p.path, token, code)
			}
		}
	}
	for _, path := range []string{"/api/v1/status", "/api/v1/openapi.json"} {
		if code := e.call("GET", path, nil, nil, "-"); code != 200 {
			t.Errorf("GET %s without token: %d, want 200", path, code)
		}
	}
	out := reply{}
	if code := e.call("POST", "/api/v1/login", reply{"username": adminUser, "password": "wrong-pass"}, &out, "-"); code != 401 {
		t.Errorf("login with a wrong password: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/login", reply{"username": "nobody", "password": "wrong-pass"}, &out, "-"); code != 401 {
		t.Errorf("login of an unknown user: %d %v", code, out)
	}
}

func TestLogoutRevokesTheToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.must(200, "GET", "/api/v1/networks", nil)
	e.must(200, "POST", "/api/v1/logout", "{}")
	if code := e.call("GET", "/api/v1/networks", nil, nil, ""); code != 401 {
		t.Fatalf("revoked token still works: %d", code)
	}
}

func TestNetworkLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	acc := e.must(200, "POST", "/api/v1/cloud-accounts", reply{"name": "lab-aws", "provider": "aws", "aws": reply{"region": "eu-west-1"}})
	n := e.must(200, "POST", "/api/v1/networks", reply{
		"name": "lab", "provider": "aws", "httpsStrategy": "self-signed", "cloudAccountId": acc["id"],
		"aws": reply{"vpcId": "vpc-0123456789abcdef0", "subnetId": "subnet-0123abcd", "securityGroupIds": []string{"sg-0123abcd"}, "region": "eu-west-1"},
		"dns": reply{"privateZoneId": "Z1", "hostnamePattern": "{name}.lab.example.com"}, "assignPublicIp": true,
	})
	id := n["id"].(string)
	if n["version"] != "1" || n["httpsStrategy"] != "self-signed" || n["aws"].(reply)["subnetId"] != "subnet-0123abcd" || n["assignPublicIp"] != true {
		t.Fatalf("created %v", n)
	}
	got := e.must(200, "GET", "/api/v1/networks/"+id, nil)
	if fmt.Sprint(got) != fmt.Sprint(n) {
		t.Fatalf("read back differs:\n%v\n%v", got, n)
	}
	// PATCH changes only the fields sent.
	u := e.must(200, "PATCH", "/api/v1/networks/"+id, reply{"version": "1", "dns": reply{"hostnamePattern": "{id}.example.com"}})
	if u["version"] != "2" || u["dns"].(reply)["hostnamePattern"] != "{id}.example.com" || u["aws"].(reply)["subnetId"] != "subnet-0123abcd" || u["httpsStrategy"] != "self-signed" {
		t.Fatalf("updated %v", u)
	}
	// A stale version changes nothing.
	out := reply{}
	if code := e.call("PATCH", "/api/v1/networks/"+id, reply{"version": "1", "assignPublicIp": false}, &out, ""); code != 409 {
		t.Fatalf("stale update: %d %v", code, out)
	}
	if got := e.must(200, "GET", "/api/v1/networks/"+id, nil); got["assignPublicIp"] != true || got["version"] != "2" {
		t.Fatalf("stale update changed the network: %v", got)
	}
	// An update without a version is refused.
	if code := e.call("PATCH", "/api/v1/networks/"+id, reply{"assignPublicIp": false}, &out, ""); code != 400 || !strings.Contains(out["message"].(string), "version") {
		t.Fatalf("update without version: %d %v", code, out)
	}
	// Delete at a stale version is refused; at the current one it works.
	if code := e.call("DELETE", "/api/v1/networks/"+id+"?version=1", nil, &out, ""); code != 409 {
		t.Fatalf("stale delete: %d %v", code, out)
	}
	e.must(200, "DELETE", "/api/v1/networks/"+id+"?version=2", nil)
	if code := e.call("GET", "/api/v1/networks/"+id, nil, &out, ""); code != 404 {
		t.Fatalf("deleted network: %d %v", code, out)
	}
	if code := e.call("DELETE", "/api/v1/networks/"+id, nil, &out, ""); code != 404 {
		t.Fatalf("delete again: %d %v", code, out)
	}
}

func TestBadInputNamesTheFieldAndWritesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	net := e.network("net")
	tmpl := e.template("tmpl")
	cases := []struct {
		name, path string
		body       any
		field      string
	}{
		{"missing name", "/api/v1/networks", reply{"provider": "local", "httpsStrategy": "none"}, "name: is required"},
		{"bad name", "/api/v1/networks", reply{"name": "Lab Net", "provider": "local", "httpsStrategy": "none"}, "name:"},
		{"unknown provider", "/api/v1/networks", reply{"name": "n1", "provider": "gcp", "httpsStrategy": "none"}, "provider: \"gcp\" is not one of local, aws"},
		{"unknown strategy", "/api/v1/networks", reply{"name": "n1", "provider": "local", "httpsStrategy": "tls"}, "httpsStrategy: \"tls\" is not one of"},
		{"acme without a contact", "/api/v1/networks", reply{"name": "n1", "provider": "local", "httpsStrategy": "acme"}, "acme.contactEmail: is required"},
		{"custom certificate on another strategy", "/api/v1/networks", reply{"name": "n1", "provider": "local", "httpsStrategy": "none", "customCertificate": reply{"privateKeyRef": "k"}}, "customCertificate: is only allowed"},
		{"acme settings without acme", "/api/v1/networks", reply{"name": "n1", "provider": "local", "httpsStrategy": "none", "acme": reply{"contactEmail": "a@b.c"}}, "acme: is only allowed"},
		{"aws settings on local", "/api/v1/networks", reply{"name": "n1", "provider": "local", "httpsStrategy": "none", "aws": reply{"subnetId": "subnet-12345678"}}, "aws: is only allowed"},
		{"bad security group", "/api/v1/networks", reply{"name": "n1", "provider": "aws", "httpsStrategy": "none", "aws": reply{"subnetId": "subnet-12345678", "securityGroupIds": []string{"default"}}}, "aws.securityGroupIds[0]"},
		{"malformed JSON", "/api/v1/networks", `{"name": "n1",`, "request body"},
		{"unknown field", "/api/v1/networks", `{"name":"n1","provider":"local","httpsStrategy":"none","colour":"red"}`, `unknown field "colour"`},
		{"wrong type", "/api/v1/networks", `{"name":"n1","provider":"local","httpsStrategy":"none","assignPublicIp":"yes"}`, "assignPublicIp"},
		{"disk too small", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 0}, "dataDiskGb: 0 is out of range"},
		{"disk too large", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 20000}, "dataDiskGb: 20000 is out of range"},
		{"unknown action", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "reboot"}}}, "setupActions[0].type"},
		{"file escapes disk", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "script", "script": "true"}, {"type": "file", "path": "../etc/passwd"}}}, "setupActions[1].path"},
		{"bad mode", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "file", "path": "a", "mode": "rwx"}}}, "setupActions[0].mode"},
		{"bad env name", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "env", "name": "1X"}}}, "setupActions[0].name"},
		{"field of another action", "/api/v1/templates", reply{"name": "t1", "provider": "local", "dataDiskGb": 1, "setupActions": []reply{{"type": "env", "name": "X", "script": "ls"}}}, "setupActions[0].script: is not used"},
		{"aws template without image", "/api/v1/templates", reply{"name": "t1", "provider": "aws", "dataDiskGb": 1}, "image: is required"},
		{"unknown kind", "/api/v1/instances", reply{"name": "i1", "kind": "worker", "templateId": tmpl["id"], "networkId": net["id"]}, "kind: \"worker\" is not one of design, automation, deployer"},
		{"missing template", "/api/v1/instances", reply{"name": "i1", "kind": "design", "networkId": net["id"]}, "templateId: is required"},
		{"template that does not exist", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": "01a200d4-0222-77be-bbfa-0d3805488a1b", "networkId": net["id"]}, "templateId: template \"01a200d4-0222-77be-bbfa-0d3805488a1b\" does not exist"},
		{"network that does not exist", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": "nope"}, "networkId: network \"nope\" does not exist"},
		{"bad SAN", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "ssl": reply{"sans": []string{"bad name!"}}}, "ssl.sans[0]"},
		{"SANs on a plain-HTTP network", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "ssl": reply{"sans": []string{"x.example.com"}}}, "ssl: network \"net\" uses httpsStrategy \"none\""},
		{"too many log lines kept", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "logRetention": reply{"maxLines": 1000001}}, "logRetention.maxLines: 1000001 is out of range: must be between 1 and 1000000"},
		{"negative log lines", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "logRetention": reply{"maxLines": -5}}, "logRetention.maxLines"},
		{"logs kept too long", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "logRetention": reply{"maxAge": "2592001s"}}, "logRetention.maxAge: 720h0m1s is out of range"},
		{"logs kept too briefly", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"], "logRetention": reply{"maxAge": "30s"}}, "logRetention.maxAge"},
		{"page size", "/api/v1/networks?pageSize=501", nil, "pageSize"},
		{"page token", "/api/v1/networks?pageToken=garbage!", nil, "pageToken"},
		{"unknown state filter", "/api/v1/instances?state=sleeping", nil, `state: "sleeping" is not one of`},
		{"network filter not an id", "/api/v1/instances?networkId=lab", nil, "networkId"},
		{"unknown order", "/api/v1/instances?orderBy=age", nil, "orderBy"},
		{"skip too far", "/api/v1/instances?skip=1000001", nil, "skip"},
		{"misspelt filter", "/api/v1/instances?status=failed", nil, "status: is not a parameter of GET /api/v1/instances: it takes pageSize, pageToken, state"},
		{"a field twice", "/api/v1/instances?pageSize=5&page_size=6", nil, "page_size: names the same field as pageSize"},
		{"a value twice", "/api/v1/instances?state=running&state=failed", nil, "state: is given 2 times"},
		{"not a number", "/api/v1/networks?pageSize=ten", nil, `pageSize: "ten" is not a whole number`},
		{"a path variable in the query", "/api/v1/networks/" + net["id"].(string) + "?id=x", nil, "id: is not a parameter of GET /api/v1/networks/{id}: it takes none"},
		{"unknown events parameter", "/api/v1/events?type=created", nil, "type: is not a parameter of GET /api/v1/events: it takes id, entity"},
		{"unknown follow parameter", "/api/v1/instances/" + net["id"].(string) + "/logs?follow=true&tail=5", nil, "tail: is not a parameter"},
		{"unknown kind of entity for events", "/api/v1/events?entity=vm", nil, `entity: "vm" is not one of instance, network, template, cloudaccount`},
	}
	for _, c := range cases {
		method := "POST"
		if c.body == nil {
			method = "GET"
		}
		out := reply{}
		code := e.call(method, c.path, c.body, &out, "")
		msg, _ := out["message"].(string)
		if code != 400 || !strings.Contains(msg, c.field) {
			t.Errorf("%s: %d %q, want 400 naming %q", c.name, code, msg, c.field)
		}
	}
	// Nothing was written: one network, one template, no instance, and no
	// event beyond the two creations (and the admin's).
	for path, want := range map[string]int{"/api/v1/networks": 1, "/api/v1/templates": 1, "/api/v1/instances": 0} {
		l := e.must(200, "GET", path, nil)
		for k, v := range l {
			if k == "totalSize" {
				if v != float64(want) {
					t.Errorf("%s counts %v items after rejected requests, want %d", path, v, want)
				}
				continue
			}
			if k != "nextPageToken" && len(v.([]any)) != want {
				t.Errorf("%s has %d items after rejected requests, want %d", path, len(v.([]any)), want)
			}
		}
	}
	if n := len(e.events(t, "flotilla.evt.>")); n != 3 {
		t.Errorf("%d events after rejected requests, want 3 (user, network, template created)", n)
	}
}

func TestNamesAreUniquePerKind(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.network("alpha")
	b := e.network("beta")
	e.template("alpha") // another kind may use the same name
	out := reply{}
	if code := e.call("POST", "/api/v1/networks", reply{"name": "alpha", "provider": "local", "httpsStrategy": "none"}, &out, ""); code != 409 || !strings.Contains(out["message"].(string), `"alpha" is already in use`) {
		t.Fatalf("duplicate create: %d %v", code, out)
	}
	if code := e.call("PATCH", "/api/v1/networks/"+b["id"].(string), reply{"version": "1", "name": "alpha"}, &out, ""); code != 409 {
		t.Fatalf("rename onto an existing name: %d %v", code, out)
	}
	if got := e.must(200, "GET", "/api/v1/networks/"+b["id"].(string), nil); got["name"] != "beta" {
		t.Fatalf("failed rename changed the network: %v", got)
	}
}

func TestListsArePaginated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	var want []string
	for i := range 7 {
		want = append(want, e.template(fmt.Sprintf("t%d", i))["id"].(string))
	}
	var got []string
	token := ""
	pages := 0
	for {
		page := e.must(200, "GET", "/api/v1/templates?pageSize=3&pageToken="+token, nil)
		for _, it := range page["templates"].([]any) {
			got = append(got, it.(reply)["id"].(string))
		}
		pages++
		token, _ = page["nextPageToken"].(string)
		if token == "" {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%d pages, ids %v, want 3 pages with %v", pages, got, want)
	}
	all := e.must(200, "GET", "/api/v1/templates", nil)
	if len(all["templates"].([]any)) != 7 || all["nextPageToken"] != "" {
		t.Fatalf("default page: %v", all)
	}
}

func TestDeleteGuards(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	net, tmpl := e.network("net"), e.template("tmpl")
	in := e.instance("db-1", tmpl, net)
	if in["state"] != "created" || in["desiredState"] != "deprovisioned" {
		t.Fatalf("new instance %v", in)
	}
	out := reply{}
	if code := e.call("DELETE", "/api/v1/networks/"+net["id"].(string), nil, &out, ""); code != 409 || !strings.Contains(out["message"].(string), "used by instances db-1") {
		t.Fatalf("delete network in use: %d %v", code, out)
	}
	if code := e.call("DELETE", "/api/v1/templates/"+tmpl["id"].(string), nil, &out, ""); code != 409 || !strings.Contains(out["message"].(string), "used by instances db-1") {
		t.Fatalf("delete template in use: %d %v", code, out)
	}
	// A running instance cannot be deleted or moved to another network.
	if _, err := e.pool.Exec(t.Context(), "UPDATE instances SET state = 'running', spec = spec || '{\"state\":\"running\"}' WHERE id = $1", in["id"]); err != nil {
		t.Fatal(err)
	}
	if code := e.call("DELETE", "/api/v1/instances/"+in["id"].(string), nil, &out, ""); code != 409 || !strings.Contains(out["message"].(string), "deprovision it") {
		t.Fatalf("delete running instance: %d %v", code, out)
	}
	other := e.network("other")
	if code := e.call("PATCH", "/api/v1/instances/"+in["id"].(string), reply{"version": "1", "networkId": other["id"]}, &out, ""); code != 409 {
		t.Fatalf("move running instance: %d %v", code, out)
	}
	// Renaming a running instance is fine; server-owned fields sent back are ignored.
	r := e.must(200, "PATCH", "/api/v1/instances/"+in["id"].(string), reply{"version": "1", "name": "db-one", "state": "deleted", "id": "x"})
	if r["name"] != "db-one" || r["state"] != "running" || r["id"] != in["id"] {
		t.Fatalf("rename: %v", r)
	}
	if _, err := e.pool.Exec(t.Context(), "UPDATE instances SET state = 'created', spec = spec || '{\"state\":\"created\"}' WHERE id = $1", in["id"]); err != nil {
		t.Fatal(err)
	}
	// Never provisioned: gone at once.
	if d := e.must(200, "DELETE", "/api/v1/instances/"+in["id"].(string), nil); d["state"] != "deleted" {
		t.Fatalf("delete: %v", d)
	}
	if code := e.call("GET", "/api/v1/instances/"+in["id"].(string), nil, &out, ""); code != 404 {
		t.Fatalf("deleted instance: %d", code)
	}
	e.must(200, "DELETE", "/api/v1/networks/"+net["id"].(string), nil)
	e.must(200, "DELETE", "/api/v1/templates/"+tmpl["id"].(string), nil)
}

func TestInstanceMustFitItsNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	local := e.network("local-net")
	aws := e.must(200, "POST", "/api/v1/templates", reply{"name": "aws-t", "provider": "aws", "image": "ami-0abc", "instanceType": "m6i.large", "dataDiskGb": 100})
	out := reply{}
	if code := e.call("POST", "/api/v1/instances", reply{"name": "i1", "kind": "design", "templateId": aws["id"], "networkId": local["id"]}, &out, ""); code != 400 || !strings.Contains(out["message"].(string), "templateId: template \"aws-t\" is for provider \"aws\"") {
		t.Fatalf("mixed providers: %d %v", code, out)
	}
	ss := e.must(200, "POST", "/api/v1/networks", reply{"name": "tls-net", "provider": "local", "httpsStrategy": "self-signed"})
	tmpl := e.template("t")
	in := e.must(200, "POST", "/api/v1/instances", reply{"name": "i2", "kind": "automation", "templateId": tmpl["id"], "networkId": ss["id"], "ssl": reply{"sans": []string{"i2.example.com", "10.0.0.5"}}})
	if fmt.Sprint(in["ssl"].(reply)["sans"]) != "[i2.example.com 10.0.0.5]" {
		t.Fatalf("sans: %v", in["ssl"])
	}
}

// TestStatusStaysOkWhileEveryDatabaseConnectionIsBusy: requests that wait
// in PostgreSQL (here on a lock the test holds; in a cluster, commits
// waiting for a synchronous standby that was cut off) take every
// connection of the services' pool; the status still answers ok, since
// PostgreSQL does (the readiness pings have a connection of their own), so
// a load balancer keeps every gateway rather than take them all out for a
// wait that ends by itself; and once it ends the requests are answered.
func TestStatusStaysOkWhileEveryDatabaseConnectionIsBusy(t *testing.T) {
	t.Parallel()
	// Each endpoint serves 2 requests at once, over a pool of 6.
	e := newEnv(t, envOptions{config: func(c *stack.Config) { c.BusConcurrency = 2 }})
	lock, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(t.Context())
	if _, err := lock.Exec(t.Context(), "LOCK TABLE networks IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	codes := make(chan int, 12)
	for i := range 4 {
		go func() {
			codes <- e.call("POST", "/api/v1/networks", map[string]any{"name": fmt.Sprintf("busy-%d", i), "provider": "local", "httpsStrategy": "none"}, nil, "")
		}()
		go func() { codes <- e.call("GET", "/api/v1/networks", nil, nil, "") }()
		go func() { codes <- e.call("GET", "/api/v1/networks/00000000-0000-0000-0000-000000000000", nil, nil, "") }()
	}
	testkit.WaitFor(t, 10*time.Second, "six of the services' connections waiting on the lock", func() bool {
		var n int
		if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'flotilla' AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n >= 6
	})
	st := reply{}
	if code := e.call("GET", "/api/v1/status", nil, &st, "-"); code != 200 {
		t.Errorf("status with every connection busy: %d %v; want 200", code, st)
	}
	if err := lock.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range 12 {
		if code := <-codes; code != 200 && code != 404 {
			t.Errorf("a request that waited on the lock: %d", code)
		}
	}
}
