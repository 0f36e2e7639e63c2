package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"flotilla.dev/flotilla/agent"
	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory"
)

// api is an operator of a stack's REST API.
type api struct {
	t     *testing.T
	base  string
	token string
}

// do sends a JSON request and decodes the answer into out, failing the
// test unless the status is 200.
func (a *api) do(method, path string, body, out any) {
	a.t.Helper()
	if code := a.call(method, path, body, out); code != 200 {
		a.t.Fatalf("%s %s: %d, unavailable", method, path, code)
	}
}

// call is do that answers the API's 503 (unavailable: try again) as its
// status instead of failing the test.
func (a *api) call(method, path string, body, out any) int {
	a.t.Helper()
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			a.t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(a.t.Context(), method, a.base+path, bytes.NewReader(data))
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		a.t.Fatalf("%s %s: %d, undecodable answer: %v", method, path, resp.StatusCode, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		a.t.Logf("%s %s: %d %s (trying again)", method, path, resp.StatusCode, raw)
		return resp.StatusCode
	}
	if resp.StatusCode != 200 {
		a.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatal(err)
		}
	}
	return resp.StatusCode
}

type apiLine struct {
	Seq    string `json:"seq"`
	Source string `json:"source"`
	Text   string `json:"text"`
}

// logs pages through every line of the instance, oldest first, over the
// gRPC API (the REST mapping of the same call is tested in the gateway).
func (a *api) logs(grpcAddr, id string) []*inventoryv1.InstanceLogLine {
	a.t.Helper()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		a.t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(a.t.Context(), "authorization", "Bearer "+a.token)
	client := inventoryv1.NewInstanceServiceClient(conn)
	var all []*inventoryv1.InstanceLogLine
	req := &inventoryv1.ListInstanceLogsRequest{Id: id, PageSize: 5000}
	for {
		page, err := client.ListInstanceLogs(ctx, req)
		for tries := 0; status.Code(err) == codes.Unavailable && tries < 50; tries++ {
			// A read the stream did not deliver in time: try again, as
			// the answer says.
			time.Sleep(200 * time.Millisecond)
			page, err = client.ListInstanceLogs(ctx, req)
		}
		if err != nil {
			a.t.Fatal(err)
		}
		all = append(all, page.GetLines()...)
		if req.PageToken = page.GetNextPageToken(); req.PageToken == "" {
			return all
		}
	}
}

// TestAHundredThousandLinesFromOneScriptAllReachTheAPI: a setup script
// prints 100 000 lines as fast as it can; the agent holds it back instead
// of dropping lines, the agent gateway stores each once, and paging
// through the API gives every line, in order.
func TestAHundredThousandLinesFromOneScriptAllReachTheAPI(t *testing.T) {
	t.Parallel()
	const n = 100000
	bus := testkit.SecureNATS(t)
	dbURL := testkit.NewDatabase(t)
	st := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Inventory, subjects.CA, subjects.AgentGW, subjects.Gateway},
		DatabaseURL: dbURL, Log: agent.NewTestLog(t)}, bus))
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := inventory.InitialSetup(t.Context(), pool, nil, "admin", "S3cret-pass"); err != nil {
		t.Fatal(err)
	}
	op := &api{t: t, base: "http://" + st.HTTPAddr}
	var login struct{ Token string }
	op.do("POST", "/api/v1/login", map[string]string{"username": "admin", "password": "S3cret-pass"}, &login)
	op.token = login.Token

	var net, tmpl, inst struct{ ID string }
	op.do("POST", "/api/v1/networks", map[string]any{"name": "n", "provider": "local", "httpsStrategy": "none"}, &net)
	op.do("POST", "/api/v1/templates", map[string]any{"name": "t", "provider": "local", "dataDiskGb": 1}, &tmpl)
	op.do("POST", "/api/v1/instances", map[string]any{"name": "chatty", "kind": "design", "templateId": tmpl.ID, "networkId": net.ID,
		"logRetention": map[string]any{"maxLines": 2 * n}}, &inst)
	id := inst.ID
	op.do("POST", "/api/v1/instances/"+id+":provision", map[string]any{}, nil)
	// No provisioner runs: record the VM as it would, then start its agent.
	provisioner := rpc.NewClient(bus.Conn(t, subjects.Provisioner), subjects.Provisioner, 0)
	if _, err := rpc.Call(t.Context(), provisioner, endpoints.LifecycleRecord, &inventoryv1.RecordStateRequest{Id: id,
		State: string(vocab.StateProvisioning), StateDetail: string(vocab.StepLaunchingVM), VmId: "vm-" + id}); err != nil {
		t.Fatal(err)
	}
	runAgent(t, provisioner, st.CA, st.AgentAddr, id, time.Second)
	testkit.WaitFor(t, 20*time.Second, "the agent connected", func() bool {
		var in struct{ Agent struct{ Status string } }
		op.do("GET", "/api/v1/instances/"+id, nil, &in)
		return in.Agent.Status == "connected"
	})
	cmd := &agentv1.Command{Id: "vm-" + id, Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{InstanceName: "chatty",
		SetupActions: []*inventoryv1.SetupAction{{Type: "script", Script: fmt.Sprintf("seq 1 %d", n)}}}}}
	if _, err := rpc.Call(t.Context(), provisioner, endpoints.AgentCommand.At(id), cmd); err != nil {
		t.Fatal(err)
	}

	// Once the script's last line is stored, every earlier one is: the
	// agent forgets a line only when JetStream acknowledged every line up
	// to it.
	start := time.Now()
	testkit.WaitFor(t, 90*time.Second, "the script's last line in the API", func() bool {
		var page struct{ Lines []apiLine }
		if op.call("GET", "/api/v1/instances/"+id+"/logs?order=desc&pageSize=200", nil, &page) != 200 {
			return false // not delivered in time while the lines pour in: try again
		}
		for _, l := range page.Lines {
			if l.Source == agent.SourceSetup && l.Text == strconv.Itoa(n) {
				return true
			}
		}
		return false
	})
	t.Logf("%d lines from the script stored in %s", n, time.Since(start).Round(time.Millisecond))
	var setup []*inventoryv1.InstanceLogLine
	for _, l := range op.logs(st.GRPCAddr, id) {
		if l.GetSource() == agent.SourceSetup {
			setup = append(setup, l)
		}
	}
	if len(setup) != n {
		t.Fatalf("%d setup lines, want %d: some were stored twice", len(setup), n)
	}
	var last uint64
	for i, l := range setup {
		if l.GetText() != strconv.Itoa(i+1) {
			t.Fatalf("setup line %d reads %q: lines were lost or reordered", i+1, l.GetText())
		}
		if l.GetSeq() <= last {
			t.Fatalf("setup line %d has seq %d after %d", i+1, l.GetSeq(), last)
		}
		last = l.GetSeq()
	}
}
