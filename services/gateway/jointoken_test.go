package gateway_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
)

// POST /api/v1/instances/{id}:joinToken mints a token for an external
// instance waiting for its agent, with everything its agent starts with,
// and refuses any other instance naming the rule; over gRPC too.
func TestOperatorsMintJoinTokensForExternalInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{}) // the provisioner, with the external driver
	net := e.must(200, "POST", "/api/v1/networks", reply{"name": "ext", "provider": "external", "httpsStrategy": "none"})
	tmpl := e.must(200, "POST", "/api/v1/templates", reply{"name": "ext", "provider": "external", "dataDiskGb": 1})
	in := e.instance("machine-1", tmpl, net)
	id := in["id"].(string)

	out := reply{}
	if code := e.call("POST", "/api/v1/instances/"+id+":joinToken", "{}", &out, ""); code != 409 || out["reason"] != "invalid_state" ||
		!strings.Contains(out["message"].(string), "join tokens are minted only while it is being provisioned and waits for its agent") {
		t.Fatalf(":joinToken before :provision: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/instances/"+id+":joinToken", "{}", &out, "-"); code != 401 {
		t.Fatalf(":joinToken without a bearer token: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/instances/nope:joinToken", "{}", &out, ""); code != 400 || out["field"] != "id" {
		t.Fatalf(":joinToken of a malformed id: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/instances/01234567-89ab-7def-8123-456789abcdef:joinToken", "{}", &out, ""); code != 404 || out["reason"] != "not_found" {
		t.Fatalf(":joinToken of an instance that does not exist: %d %v", code, out)
	}

	e.must(200, "POST", "/api/v1/instances/"+id+":provision", nil)
	deadline := time.Now().Add(30 * time.Second)
	for e.must(200, "GET", "/api/v1/instances/"+id, nil)["stateDetail"] != "waiting-for-agent" {
		if time.Now().After(deadline) {
			t.Fatalf("the instance never waited for its agent: %v", e.must(200, "GET", "/api/v1/instances/"+id, nil))
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok := e.must(200, "POST", "/api/v1/instances/"+id+":joinToken", reply{"ttlSeconds": 600})
	got := e.must(200, "GET", "/api/v1/instances/"+id, nil)
	if !strings.HasPrefix(tok["token"].(string), "fjt_") || tok["instanceId"] != id || tok["vmId"] != got["vmId"] || tok["vmId"] == "" ||
		!strings.HasPrefix(tok["caCertificatePem"].(string), "-----BEGIN CERTIFICATE-----") || !strings.HasPrefix(tok["agentGatewayAddr"].(string), "127.0.0.1:") {
		t.Fatalf("join token answer: %v (instance %v)", tok, got)
	}
	if exp, err := time.Parse(time.RFC3339, tok["expireTime"].(string)); err != nil || time.Until(exp) > 10*time.Minute || time.Until(exp) < 9*time.Minute {
		t.Errorf("expireTime %v for ttlSeconds 600 (%v)", tok["expireTime"], err)
	}
	if code := e.call("POST", "/api/v1/instances/"+id+":joinToken", reply{"ttlSeconds": 86401}, &out, ""); code != 400 || out["field"] != "ttlSeconds" {
		t.Errorf(":joinToken for more than a day: %d %v", code, out)
	}

	// An instance of another provider: refused, naming the rule.
	local := e.instance("local-1", e.template("local"), e.network("local"))
	if code := e.call("POST", "/api/v1/instances/"+local["id"].(string)+":joinToken", "{}", &out, ""); code != 400 || out["reason"] != "unsupported" ||
		!strings.Contains(out["message"].(string), `join tokens are minted on demand only for provider "external"`) {
		t.Errorf(":joinToken for a local instance: %d %v", code, out)
	}

	// The same over gRPC.
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	instances := inventoryv1.NewInstanceServiceClient(conn)
	if _, err := instances.CreateInstanceJoinToken(context.Background(), &inventoryv1.CreateInstanceJoinTokenRequest{Id: id}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("gRPC without a bearer token: %v", err)
	}
	authed := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e.token)
	gt, err := instances.CreateInstanceJoinToken(authed, &inventoryv1.CreateInstanceJoinTokenRequest{Id: id})
	if err != nil || gt.GetToken() == tok["token"] || gt.GetVmId() != tok["vmId"] {
		t.Fatalf("gRPC join token: %v %v", gt, err)
	}
}
