package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/membership"
)

// TestFleetSecretNetworksWaitForEveryBroker: while a secret broker of a
// release before fleet secrets had networks is listed (a cluster upgraded
// host by host), a fleet secret naming networks is refused, naming the
// field and the host, and nothing is stored; without networks it is
// stored; once the old broker is gone, networks are taken.
func TestFleetSecretNetworksWaitForEveryBroker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"secrets"}})
	tpl := e.template("t")["id"].(string)
	net := e.network("lab")["id"].(string)
	withNetworks := reply{"value": "fleet-s3cret", "templateIds": []string{tpl}, "networkIds": []string{net}}

	js, err := jetstream.New(e.bus.Conn(t, subjects.Secrets))
	if err != nil {
		t.Fatal(err)
	}
	old, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.Secrets, Host: "h-old", Version: "0.9.0"})
	if err != nil {
		t.Fatal(err)
	}
	code, out := e.as("", "PUT", "/api/v1/secrets/registry", withNetworks)
	msg := fmt.Sprint(out["message"])
	if code != 409 || out["reason"] != "invalid_state" || !strings.HasPrefix(msg, "networkIds: ") || !strings.Contains(msg, "h-old (version 0.9.0)") {
		t.Fatalf("networks while an old broker is listed: %d %v", code, out)
	}
	if list := e.must(200, "GET", "/api/v1/secrets", nil); len(list["secrets"].([]any)) != 0 {
		t.Fatalf("the refusal stored %v", list)
	}
	if sec := e.must(200, "PUT", "/api/v1/secrets/registry", reply{"value": "fleet-s3cret", "templateIds": []string{tpl}}); fmt.Sprint(sec["networkIds"]) != "[]" {
		t.Fatalf("without networks: %v", sec)
	}

	old.Leave(context.Background())
	sec := e.must(200, "PUT", "/api/v1/secrets/registry", withNetworks)
	if fmt.Sprint(sec["networkIds"]) != "["+net+"]" {
		t.Fatalf("networks once every broker keeps them: %v", sec)
	}
}
