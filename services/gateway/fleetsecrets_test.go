package gateway_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/membership"
)

// TestFleetSecretNetworksWaitForEveryBroker: while a secret broker of a
// release before fleet secrets had networks is listed (a cluster upgraded
// host by host), a fleet secret naming networks is refused, naming the
// field and the host, and nothing is stored; without networks it is
// stored; a change over the update time read is refused likewise; once
// the old broker is gone, both are taken. The cluster
// status warns of an old broker listed, and, once fleet secrets name
// networks (an old host added back), of how many it would release beyond
// them.
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
	clusterWarns(t, e, "manager "+old.Name()+": a secret broker of version 0.9.0, which does not keep fleet secrets' networks: "+
		"fleet secrets cannot name networks until it is upgraded, or stopped and off the list")
	if list := e.must(200, "GET", "/api/v1/secrets", nil); len(list["secrets"].([]any)) != 0 {
		t.Fatalf("the refusal stored %v", list)
	}
	first := e.must(200, "PUT", "/api/v1/secrets/registry", reply{"value": "fleet-s3cret", "templateIds": []string{tpl}})
	if fmt.Sprint(first["networkIds"]) != "[]" {
		t.Fatalf("without networks: %v", first)
	}
	// Nor is a change over the update time read: the old broker would not
	// check it.
	code, out = e.as("", "PUT", "/api/v1/secrets/registry", reply{"templateIds": []string{tpl}, "ifUpdateTime": first["updateTime"]})
	if msg := fmt.Sprint(out["message"]); code != 409 || out["reason"] != "invalid_state" || !strings.HasPrefix(msg, "ifUpdateTime: the secret broker on h-old (version 0.9.0) would not check it") {
		t.Fatalf("ifUpdateTime while an old broker is listed: %d %v", code, out)
	}

	old.Leave(context.Background())
	sec := e.must(200, "PUT", "/api/v1/secrets/registry", withNetworks)
	if fmt.Sprint(sec["networkIds"]) != "["+net+"]" {
		t.Fatalf("networks once every broker keeps them: %v", sec)
	}
	// Over the update time read: taken while it is the secret's, refused
	// once another change came.
	e.must(200, "PUT", "/api/v1/secrets/registry", reply{"templateIds": []string{tpl}, "networkIds": []string{net}, "ifUpdateTime": sec["updateTime"]})
	code, out = e.as("", "PUT", "/api/v1/secrets/registry", reply{"templateIds": []string{tpl}, "ifUpdateTime": sec["updateTime"]})
	if code != 409 || out["reason"] != "version_mismatch" || !strings.Contains(fmt.Sprint(out["message"]), "after it was read") {
		t.Fatalf("a change over an update time gone: %d %v", code, out)
	}
	back, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.Secrets, Host: "h-back", Version: "0.9.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Leave(context.Background())
	clusterWarns(t, e, "manager "+back.Name()+": a secret broker of version 0.9.0, which does not keep fleet secrets' networks: "+
		"it releases the fleet secret that names networks to instances in any network; upgrade it, or stop it (flotilla cluster managers remove takes it off the list at once)")
}

// clusterWarns waits for the cluster status (gathered anew every few
// seconds) to warn want.
func clusterWarns(t *testing.T, e *env, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w := e.cluster().GetWarnings()
		if slices.Contains(w, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster warnings %q\nwant among them %q", w, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
