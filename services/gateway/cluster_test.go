package gateway_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/membership"
)

// cluster reads GET /api/v1/cluster over gRPC (the same method REST
// serves), decoded as the API's own types.
func (e *env) cluster() *systemv1.Cluster {
	e.t.Helper()
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(e.t.Context(), "authorization", "Bearer "+e.token)
	c, err := systemv1.NewSystemServiceClient(conn).GetCluster(ctx, &systemv1.GetClusterRequest{})
	if err != nil {
		e.t.Fatalf("GetCluster: %v", err)
	}
	return c
}

// managersOf returns the cluster's managers on host, by service.
func managersOf(c *systemv1.Cluster, host string) map[string]*systemv1.Manager {
	out := map[string]*systemv1.Manager{}
	for _, m := range c.GetManagers() {
		if m.GetHost() == host {
			out[m.GetService()] = m
		}
	}
	return out
}

// eventually retries f (a second apart, the cluster answer is cached for
// two) until it returns "" or the time is up.
func eventually(t *testing.T, within time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		why := f()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestClusterListsEveryServiceProcessAndDropsStoppedOnes: every service of
// a stack is a manager with its host, pid and version, healthy; a second
// stack (another host) is listed beside it, and once stopped cleanly it
// is gone at once. The one NATS server leads every stream and the meta
// group; the database is standalone and healthy. Only a logged-in caller
// may ask, over REST and gRPC alike.
func TestClusterListsEveryServiceProcessAndDropsStoppedOnes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{config: func(c *stack.Config) { c.HostName = "host-a" }})
	if code := e.call("GET", "/api/v1/cluster", nil, nil, "-"); code != http.StatusUnauthorized {
		t.Fatalf("cluster without a token: %d", code)
	}
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := systemv1.NewSystemServiceClient(conn).GetCluster(t.Context(), &systemv1.GetClusterRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetCluster without a token: %v", err)
	}

	// A second manager host running two services on the same bus.
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Version: "1.2.4", HostName: "host-b",
		Services: []string{subjects.CA, subjects.Provisioner}, AgentGatewayAddr: "127.0.0.1:7702"}, e.bus))

	c := e.cluster()
	a := managersOf(c, "host-a")
	for _, svc := range subjects.Services {
		m := a[svc]
		if m == nil {
			t.Fatalf("service %s of host-a is not listed: %v", svc, c.GetManagers())
		}
		if !m.GetHealthy() || m.GetVersion() != "1.2.3" || m.GetPid() != int32(os.Getpid()) || m.GetStartTime() == nil ||
			!strings.HasPrefix(m.GetName(), svc+".host-a.") {
			t.Errorf("manager %s: %v", svc, m)
		}
	}
	if b := managersOf(c, "host-b"); len(b) != 2 || b[subjects.CA].GetVersion() != "1.2.4" || b[subjects.Provisioner] == nil {
		t.Fatalf("host-b's managers: %v", b)
	}
	if len(c.GetManagers()) != len(subjects.Services)+2 {
		t.Fatalf("%d managers, want %d: %v", len(c.GetManagers()), len(subjects.Services)+2, c.GetManagers())
	}

	// The REST answer is the same document.
	var rest struct {
		Managers []struct {
			Service, Host string
			Healthy       bool
		}
		Brokers []struct {
			Name, Version, URL string
			MetaLeader         bool
			Healthy            bool
		}
		Streams []struct {
			Name, Leader string
			Replicas     []any
		}
		Databases []struct {
			Name, Role string
			Healthy    bool
		}
		Warnings []string
	}
	if code := e.call("GET", "/api/v1/cluster", nil, &rest, ""); code != 200 {
		t.Fatalf("GET /api/v1/cluster: %d", code)
	}
	if len(rest.Managers) != len(c.GetManagers()) {
		t.Fatalf("REST managers %v", rest.Managers)
	}
	// Without monitoring endpoints, the server the gateway is connected
	// to is known with its version and address all the same.
	if len(rest.Brokers) != 1 || rest.Brokers[0].Name != "testkit" || !rest.Brokers[0].MetaLeader || !rest.Brokers[0].Healthy ||
		rest.Brokers[0].Version == "" || !strings.HasPrefix(rest.Brokers[0].URL, "nats://") {
		t.Fatalf("brokers: %+v", rest.Brokers)
	}
	var names []string
	for _, s := range rest.Streams {
		names = append(names, s.Name)
		if s.Leader != "testkit" || len(s.Replicas) != 0 {
			t.Errorf("stream %s on one server: leader %q, replicas %v", s.Name, s.Leader, s.Replicas)
		}
	}
	for _, want := range []string{subjects.EventsStream, subjects.AgentLogsStream, subjects.KVStream(subjects.ManagersBucket), subjects.KVStream(subjects.JoinTokensBucket)} {
		if !slices.Contains(names, want) {
			t.Errorf("stream %s not reported: %v", want, names)
		}
	}
	if len(rest.Databases) != 1 || rest.Databases[0].Role != "standalone" || !rest.Databases[0].Healthy {
		t.Fatalf("databases: %+v", rest.Databases)
	}
	if len(rest.Warnings) != 0 {
		t.Fatalf("warnings: %v", rest.Warnings)
	}

	// A clean stop removes the other host's managers at once (the next
	// answer, at most two seconds on).
	stacktest.Stop(t, other)
	eventually(t, 5*time.Second, func() string {
		if b := managersOf(e.cluster(), "host-b"); len(b) != 0 {
			return "host-b's stopped services are still listed"
		}
		return ""
	})
	if a := managersOf(e.cluster(), "host-a"); len(a) != len(subjects.Services) {
		t.Fatalf("host-a lost managers when host-b stopped: %v", a)
	}
}

// TestClusterShowsASilentMemberUnhealthyThenForgetsIt: a process that dies
// leaves its key; it shows unhealthy once its heartbeats are older than
// the healthy window, and is gone once the bucket's TTL expires it.
func TestClusterShowsASilentMemberUnhealthyThenForgetsIt(t *testing.T) {
	t.Parallel()
	const (
		interval = 200 * time.Millisecond
		healthy  = 1500 * time.Millisecond
		ttl      = 5 * time.Second
	)
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) {
		c.MemberInterval, c.MemberHealthyWithin, c.MemberTTL = interval, healthy, ttl
	}})
	// A provisioner on another host joins, beats once and dies: its
	// connection closes without a word.
	nc := e.bus.Conn(t, subjects.Provisioner)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.Provisioner, Host: "doomed",
		Interval: interval, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	find := func() *systemv1.Manager {
		for _, m := range e.cluster().GetManagers() {
			if m.GetName() == dead.Name() {
				return m
			}
		}
		return nil
	}
	if m := find(); m == nil || !m.GetHealthy() {
		t.Fatalf("the new member: %v", m)
	}
	start := time.Now()
	eventually(t, ttl, func() string {
		if m := find(); m == nil || m.GetHealthy() {
			return "the silent member is not listed unhealthy: " + m.String()
		}
		return ""
	})
	eventually(t, 2*ttl, func() string {
		if find() != nil {
			return "the silent member is still listed after the bucket's TTL"
		}
		return ""
	})
	if d := time.Since(start); d < ttl-healthy-interval {
		t.Errorf("the silent member was forgotten after %v, before the TTL", d)
	}
	// The stack's own members kept beating all along.
	for _, m := range e.cluster().GetManagers() {
		if !m.GetHealthy() {
			t.Errorf("member %s is unhealthy", m.GetName())
		}
	}
}

// TestRemoveManagersTakesAGoneHostOffTheList: DELETE
// /api/v1/cluster/managers/{host} refuses while the host's managers beat,
// removes them at once when they are silent (before their keys expire),
// and knows no host it has removed.
func TestRemoveManagersTakesAGoneHostOffTheList(t *testing.T) {
	t.Parallel()
	const (
		interval = 200 * time.Millisecond
		healthy  = 1500 * time.Millisecond
	)
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) {
		c.MemberInterval, c.MemberHealthyWithin = interval, healthy
	}})
	nc := e.bus.Conn(t, subjects.Provisioner)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.Provisioner, Host: "h3", Interval: interval})
	if err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Reason, Message string }
	if code := e.call("DELETE", "/api/v1/cluster/managers/h3", nil, &apiErr, ""); code != http.StatusConflict ||
		apiErr.Reason != "invalid_state" || !strings.Contains(apiErr.Message, dead.Name()) {
		t.Fatalf("remove a running manager: %d %+v", code, apiErr)
	}
	nc.Close() // it dies: no more heartbeats
	time.Sleep(healthy + interval)
	var resp struct{ Removed []struct{ Name, Host string } }
	if code := e.call("DELETE", "/api/v1/cluster/managers/h3", nil, &resp, ""); code != 200 ||
		len(resp.Removed) != 1 || resp.Removed[0].Name != dead.Name() || resp.Removed[0].Host != "h3" {
		t.Fatalf("remove h3: %d %+v", code, resp)
	}
	// At once, not when the key expires (30 s).
	for _, m := range e.cluster().GetManagers() {
		if m.GetHost() == "h3" {
			t.Fatalf("h3 still listed after its removal: %v", m)
		}
	}
	if code := e.call("DELETE", "/api/v1/cluster/managers/h3", nil, &apiErr, ""); code != http.StatusNotFound {
		t.Fatalf("remove h3 again: %d %+v", code, apiErr)
	}
	if code := e.call("DELETE", "/api/v1/cluster/managers/h3", nil, nil, "-"); code != http.StatusUnauthorized {
		t.Fatalf("remove without a token: %d", code)
	}
}

// TestClusterNamesBrokersFromTheirMonitoringEndpoints: with monitoring
// URLs the gateway lists the server behind each, with its version and
// whether it leads the JetStream meta group; one that does not answer is
// listed unhealthy, with a warning.
func TestClusterNamesBrokersFromTheirMonitoringEndpoints(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + l.Addr().String()
	l.Close()
	e := newEnv(t, envOptions{only: []string{}, monitored: true, config: func(c *stack.Config) {
		c.NATSMonitorURLs = append(c.NATSMonitorURLs, deadURL)
	}})
	c := e.cluster()
	if len(c.GetBrokers()) != 2 {
		t.Fatalf("brokers: %v", c.GetBrokers())
	}
	var live, dead *systemv1.Broker
	for _, b := range c.GetBrokers() {
		if b.GetUrl() == e.bus.MonitorURL {
			live = b
		} else {
			dead = b
		}
	}
	if live.GetName() != "testkit" || !live.GetMetaLeader() || !live.GetHealthy() || live.GetVersion() == "" {
		t.Errorf("the monitored server: %v", live)
	}
	if dead.GetUrl() != deadURL || dead.GetHealthy() || dead.GetMetaLeader() || dead.GetMessage() == "" || dead.GetName() != "127.0.0.1" {
		t.Errorf("the server that does not answer: %v", dead)
	}
	if w := strings.Join(c.GetWarnings(), "\n"); !strings.Contains(w, deadURL) {
		t.Errorf("warnings %q do not name %s", w, deadURL)
	}
}

// patroniCluster is what Patroni 3.0's GET /cluster answers for a leader,
// a synchronous standby and a replica whose lag it cannot tell.
const patroniCluster = `{"members": [
 {"name": "pg-1", "role": "leader", "state": "running", "api_url": "http://10.0.0.11:8008/patroni", "host": "10.0.0.11", "port": 5432, "timeline": 4},
 {"name": "pg-2", "role": "sync_standby", "state": "streaming", "api_url": "http://10.0.0.12:8008/patroni", "host": "10.0.0.12", "port": 5432, "timeline": 4, "lag": 1024},
 {"name": "pg-3", "role": "replica", "state": "stopped", "api_url": "http://10.0.0.13:8008/patroni", "host": "10.0.0.13", "port": 5432, "lag": "unknown"}
], "scope": "flotilla"}`

// TestClusterReportsPatronisMembers: with Patroni URLs the databases are
// Patroni's members, from the first URL that answers: roles, states, lag.
func TestClusterReportsPatronisMembers(t *testing.T) {
	t.Parallel()
	patroni := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(patroniCluster))
	}))
	t.Cleanup(patroni.Close)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	t.Cleanup(down.Close)
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) { c.PatroniURLs = []string{down.URL, patroni.URL} }})
	dbs := e.cluster().GetDatabases()
	if len(dbs) != 3 {
		t.Fatalf("databases: %v", dbs)
	}
	byName := map[string]*systemv1.Database{}
	for _, d := range dbs {
		byName[d.GetName()] = d
	}
	if d := byName["pg-1"]; d.GetRole() != "leader" || d.GetState() != "running" || !d.GetHealthy() || d.LagBytes != nil || d.GetHost() != "10.0.0.11" || d.GetPort() != 5432 {
		t.Errorf("leader: %v", d)
	}
	if d := byName["pg-2"]; d.GetRole() != "sync_standby" || !d.GetHealthy() || d.LagBytes == nil || d.GetLagBytes() != 1024 {
		t.Errorf("synchronous standby: %v", d)
	}
	if d := byName["pg-3"]; d.GetRole() != "replica" || d.GetHealthy() || d.LagBytes != nil {
		t.Errorf("stopped replica: %v", d)
	}
	// REST shows the lag where known, and no lag where not.
	var rest struct{ Databases []map[string]any }
	if code := e.call("GET", "/api/v1/cluster", nil, &rest, ""); code != 200 {
		t.Fatal(code)
	}
	for _, d := range rest.Databases {
		if _, has := d["lagBytes"]; has != (d["name"] == "pg-2") {
			t.Errorf("REST database %v", d)
		}
	}

	// No Patroni answering: no databases, and a warning naming each URL.
	e2 := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) { c.PatroniURLs = []string{down.URL} }})
	c := e2.cluster()
	if len(c.GetDatabases()) != 0 || !strings.Contains(strings.Join(c.GetWarnings(), " "), down.URL) {
		t.Fatalf("without an answering Patroni: %v, warnings %v", c.GetDatabases(), c.GetWarnings())
	}
}

// TestClusterWarnsOfAManagerWithAnotherReleasesCredentials: a manager whose
// bus credentials are not its release's is named in the cluster status's
// warnings, with what differs and how to mend it.
func TestClusterWarnsOfAManagerWithAnotherReleasesCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	js, err := jetstream.New(e.bus.Conn(t, subjects.Provisioner))
	if err != nil {
		t.Fatal(err)
	}
	m, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.Provisioner, Host: "h2",
		CredentialsProblem: "the bus credentials in /etc/flotilla/bus/provisioner.creds are not this release's for provisioner: they do not let it publish to x"})
	if err != nil {
		t.Fatal(err)
	}
	want := "manager " + m.Name() + ": the bus credentials in /etc/flotilla/bus/provisioner.creds are not this release's for provisioner: " +
		"they do not let it publish to x (sign them again with this release's flotilla admin bus-credentials init, and copy its .creds file to h2)"
	if w := e.cluster().GetWarnings(); !slices.Contains(w, want) {
		t.Fatalf("warnings %q\nwant among them %q", w, want)
	}
}
