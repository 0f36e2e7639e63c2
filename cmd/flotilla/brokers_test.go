package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestBrokersRemoveTakesAGoneServerOutOfJetStream runs a three-server
// JetStream cluster trusting a bus authority, stops one server for good and
// removes it with `flotilla cluster brokers remove` and the system
// account's credentials: the meta group forgets it. A service's
// credentials, or none, cannot.
func TestBrokersRemoveTakesAGoneServerOutOfJetStream(t *testing.T) {
	t.Parallel()
	auth, err := busauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"s1", "s2", "s3"}
	servers := testkit.JetStreamCluster(t, len(names), func(opts *server.Options) {
		if err := auth.Configure(opts); err != nil {
			t.Fatal(err)
		}
	})
	meta := func(s *server.Server) *server.MetaClusterInfo {
		if s.Running() {
			if jsz, err := s.Jsz(&server.JSzOptions{}); err == nil && jsz.Meta != nil {
				return jsz.Meta
			}
		}
		return &server.MetaClusterInfo{}
	}
	peers := func(s *server.Server) []string {
		// The replicas are the peers besides the server asked.
		out := []string{s.Name()}
		for _, r := range meta(s).Replicas {
			out = append(out, r.Name)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	// seen is the meta group as each server sees it, for a failure.
	seen := func() string {
		var b strings.Builder
		for _, s := range servers {
			m := meta(s)
			fmt.Fprintf(&b, "\n%s: leader %q, size %d, peers %v, running %v", s.Name(), m.Leader, m.Size, peers(s), s.Running())
		}
		return b.String()
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30 s; the meta group seen from each server:%s", what, seen())
			}
		}
	}
	// agreed says whether the servers of ss see the meta group of want,
	// led by one of them, all the same leader.
	agreed := func(ss []*server.Server, want []string) bool {
		l := meta(ss[0]).Leader
		for _, s := range ss {
			if m := meta(s); m.Leader == "" || m.Leader != l || !slices.Contains(want, l) || !slices.Equal(peers(s), want) {
				return false
			}
		}
		return true
	}
	// Settled first, as every server sees it: a server that stops while the
	// others still learn of each other can leave two that cannot elect a
	// leader (each waits for the vote of one that is gone).
	waitFor("a meta group of three, settled", func() bool { return agreed(servers, names) })

	servers[2].Shutdown()
	servers[2].WaitForShutdown()
	// Only the meta leader answers a removal: the two left must elect one
	// (s3 may have led).
	waitFor("a meta leader among the two left", func() bool {
		l := meta(servers[0]).Leader
		return l != "" && l != "s3" && l == meta(servers[1]).Leader
	})
	natsURL := servers[0].ClientURL()
	// Only the system account may: a service's credentials are refused,
	// saying so, at once (the refusal is not mistaken for a meta group
	// without a leader and asked again for a minute).
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--creds"},
		{[]string{"--creds", auth.Creds("gateway")}, "refused these credentials"},
	} {
		out, err := exec.Command(binary, append([]string{"cluster", "brokers", "remove", "s3", "--nats", natsURL}, c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("brokers remove %v: %v, %s; want an error naming %q", c.args, err, out, c.want)
		}
	}
	out := flotillaCLI(t, nil, "cluster", "brokers", "remove", "s3", "--nats", natsURL, "--creds", auth.SystemCreds())
	if !strings.Contains(out, "removed s3") {
		t.Errorf("brokers remove: %q", out)
	}
	waitFor("s3 gone from the meta group", func() bool { return slices.Equal(peers(servers[0]), names[:2]) })
}
