package gateway_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
)

// Without a provisioner running, the API's side of the lifecycle shows alone:
// desired state set at once, work queued exactly once, no interleaving.
func TestLifecycleActionsQueueWorkAndDoNotInterleave(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"ca", "secrets", "agentgw"}})
	in := e.instance("i1", e.template("tmpl"), e.network("net"))
	id := in["id"].(string)
	p := e.must(200, "POST", "/api/v1/instances/"+id+":provision", nil) // no body, as with curl -XPOST
	if p["state"] != "provisioning" || p["stateDetail"] != "queued" || p["desiredState"] != "provisioned" {
		t.Fatalf("after :provision: %v", p)
	}
	if again := e.must(200, "POST", "/api/v1/instances/"+id+":provision", "{}"); again["version"] != p["version"] {
		t.Fatalf("a repeated :provision changed the instance: %v", again)
	}
	for _, action := range []string{":deprovision", ":reprovision"} {
		out := reply{}
		if code := e.call("POST", "/api/v1/instances/"+id+action, "{}", &out, ""); code != 409 || !strings.Contains(out["message"].(string), "is provisioning") {
			t.Errorf("%s while provisioning: %d %v", action, code, out)
		}
	}
	out := reply{}
	if code := e.call("DELETE", "/api/v1/instances/"+id, nil, &out, ""); code != 409 {
		t.Errorf("DELETE while provisioning: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/instances/0190c3e1-0000-7000-8000-000000000000:provision", "{}", &out, ""); code != 404 {
		t.Errorf(":provision of an unknown instance: %d %v", code, out)
	}
	if code := e.call("POST", "/api/v1/instances/nope:provision", "{}", &out, ""); code != 400 || out["reason"] != "invalid_field" {
		t.Errorf(":provision of a malformed id: %d %v", code, out)
	}

	// Exactly one piece of work is queued, naming the instance and the action.
	js, _ := jetstream.New(e.nc)
	e.events(t, "flotilla.evt.>") // waits for the outbox to drain
	s, err := js.Stream(context.Background(), "FLOTILLA_PROVISIONING")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(context.Background())
	if info.State.Msgs != 1 {
		t.Fatalf("%d provisioning messages queued, want 1", info.State.Msgs)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), "flotilla.cmd.provision."+id)
	if err != nil {
		t.Fatal(err)
	}
	req := &inventoryv1.LifecycleRequest{}
	if err := proto.Unmarshal(m.Data, req); err != nil || req.GetId() != id || req.GetAction() != "provision" {
		t.Fatalf("queued work %v %v", req, err)
	}
	// The request is on the instance's timeline.
	ev := reply{}
	if code := e.call("GET", "/api/v1/instances/"+id+"/events", nil, &ev, ""); code != 200 {
		t.Fatalf("events: %d %v", code, ev)
	}
	var types []string
	for _, x := range ev["events"].([]any) {
		types = append(types, x.(reply)["type"].(string))
	}
	if strings.Join(types, ",") != "instance.created,instance.provision-requested" {
		t.Fatalf("timeline %v", types)
	}
}
