package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"flotilla.dev/flotilla/api/subjects"
)

// TestAChangeThatWouldStrandInstancesIsRefused: where an instance's VM and
// disk are — its template's provider, its network's provider and cloud
// account, the account's region — cannot change under it, or deprovision
// and delete would look for them in the wrong place and leave them behind;
// a network change that would leave an instance's SSL settings invalid is
// refused too. Each refusal is 409 in_use naming the instance and the
// field, and writes nothing; changes that strand nothing go through.
func TestAChangeThatWouldStrandInstancesIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{subjects.Secrets}}) // a cloud account's region change asks the secret broker
	net := e.must(200, "POST", "/api/v1/networks", reply{"name": "lab", "provider": "local", "httpsStrategy": "self-signed"})
	tmpl := e.template("small")
	in := e.must(200, "POST", "/api/v1/instances", reply{"name": "db-1", "kind": "design", "templateId": tmpl["id"], "networkId": net["id"],
		"ssl": reply{"sans": []string{"db-1.lab.example"}}})
	netPath, tmplPath := "/api/v1/networks/"+net["id"].(string), "/api/v1/templates/"+tmpl["id"].(string)

	refused := func(what, method, path string, body reply, words ...string) {
		t.Helper()
		var apiErr struct{ Reason, Message string }
		code := e.call(method, path, body, &apiErr, "")
		if code != http.StatusConflict || apiErr.Reason != "in_use" {
			t.Fatalf("%s: %d %+v; want 409 in_use", what, code, apiErr)
		}
		for _, w := range words {
			if !strings.Contains(apiErr.Message, w) {
				t.Errorf("%s: %q does not say %q", what, apiErr.Message, w)
			}
		}
	}
	refused("the template's provider", "PATCH", tmplPath, reply{"version": tmpl["version"], "provider": "external"}, "provider", "instances db-1:")
	refused("the network's provider", "PATCH", netPath, reply{"version": net["version"], "provider": "external"}, "provider", "instances db-1:")
	refused("the network's HTTPS strategy, which leaves the instance's ssl.sans invalid", "PATCH", netPath,
		reply{"version": net["version"], "httpsStrategy": "none"}, "ssl", `"db-1"`)
	if got := e.must(200, "GET", tmplPath, nil); got["provider"] != "local" || got["version"] != tmpl["version"] {
		t.Fatalf("the refused template changed: %v", got)
	}
	if got := e.must(200, "GET", netPath, nil); got["provider"] != "local" || got["httpsStrategy"] != "self-signed" || got["version"] != net["version"] {
		t.Fatalf("the refused network changed: %v", got)
	}

	// What leaves the instance where it is and valid goes through.
	e.must(200, "PATCH", tmplPath, reply{"version": tmpl["version"], "dataDiskGb": 20})
	net = e.must(200, "PATCH", netPath, reply{"version": net["version"], "name": "lab-2"})
	net = e.must(200, "PATCH", netPath, reply{"version": net["version"], "dns": reply{"hostnamePattern": "{name}.lab.example"}})
	// Without the instance's SANs, a network without HTTPS fits it.
	e.must(200, "PATCH", "/api/v1/instances/"+in["id"].(string), reply{"version": in["version"], "ssl": reply{}})
	net = e.must(200, "PATCH", netPath, reply{"version": net["version"], "httpsStrategy": "none"})

	// A provisioned instance keeps what it was made from, and its name
	// where the network's host name pattern puts it in its DNS records,
	// certificates and ACME domains (lab-2's does).
	if _, err := e.pool.Exec(t.Context(), `UPDATE instances SET state = 'running', spec = spec || '{"state":"running"}' WHERE id = $1`, in["id"]); err != nil {
		t.Fatal(err)
	}
	in = e.must(200, "GET", "/api/v1/instances/"+in["id"].(string), nil)
	other := e.template("other")
	for field, value := range map[string]any{"name": "db-one", "templateId": other["id"], "kind": "automation"} {
		var apiErr struct{ Reason, Message string }
		if code := e.call("PATCH", "/api/v1/instances/"+in["id"].(string), reply{"version": in["version"], field: value}, &apiErr, ""); code != http.StatusConflict ||
			apiErr.Reason != "invalid_state" || !strings.Contains(apiErr.Message, field) {
			t.Errorf("change %s of a running instance: %d %+v; want 409 invalid_state naming it", field, code, apiErr)
		}
	}
	if got := e.must(200, "GET", "/api/v1/instances/"+in["id"].(string), nil); got["name"] != "db-1" || got["version"] != in["version"] {
		t.Fatalf("the refused instance changed: %v", got)
	}
	// Nor does its network's host name pattern change under it.
	refused("the network's host name pattern", "PATCH", netPath, reply{"version": net["version"], "dns": reply{"hostnamePattern": "{id}.lab.example"}},
		"dns.hostnamePattern", "instances db-1:")

	// A cloud account's region holds the VMs of the instances on its
	// networks.
	acc := e.must(200, "POST", "/api/v1/cloud-accounts", reply{"name": "lab-aws", "provider": "aws", "aws": reply{"region": "eu-west-1"}})
	accPath := "/api/v1/cloud-accounts/" + acc["id"].(string)
	vpc := e.must(200, "POST", "/api/v1/networks", reply{"name": "vpc-a", "provider": "aws", "httpsStrategy": "none", "cloudAccountId": acc["id"],
		"aws": reply{"vpcId": "vpc-0123456789abcdef0", "subnetId": "subnet-0123456789abcdef0"}})
	acc = e.must(200, "PATCH", accPath, reply{"version": acc["version"], "aws": reply{"region": "eu-west-2"}}) // no instance yet
	ami := e.must(200, "POST", "/api/v1/templates", reply{"name": "ami", "provider": "aws", "dataDiskGb": 10, "image": "ami-0123456789abcdef0", "instanceType": "t3.small"})
	e.must(200, "POST", "/api/v1/instances", reply{"name": "db-1-aws", "kind": "design", "templateId": ami["id"], "networkId": vpc["id"]})
	refused("the account's region", "PATCH", accPath, reply{"version": acc["version"], "aws": reply{"region": "eu-west-1"}}, "aws.region", "instances db-1-aws:")
	otherAcc := e.must(200, "POST", "/api/v1/cloud-accounts", reply{"name": "other-aws", "provider": "aws", "aws": reply{"region": "eu-west-2"}})
	refused("the network's account", "PATCH", "/api/v1/networks/"+vpc["id"].(string), reply{"version": vpc["version"], "cloudAccountId": otherAcc["id"]}, "cloudAccountId", "instances db-1-aws:")
	if got := e.must(200, "GET", accPath, nil); got["aws"].(map[string]any)["region"] != "eu-west-2" {
		t.Fatalf("the refused account changed: %v", got)
	}
}
