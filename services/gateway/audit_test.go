package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/metadata"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/gateway"
)

// TestTheAuditTrail: calls by several users — allowed and refused, over
// REST and gRPC, changing a password, minting a token, storing a secret —
// are each one record of who (user, role), what (route, target), the
// result, the client's address and the trace; GET /api/v1/audit answers
// exactly the right ones by user (name or id), by target and by time,
// newest first, page by page. No record holds a password, a token or a
// secret's value.
func TestTheAuditTrail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"secrets"}})
	olgaID, olga := e.user("olga", "operator")
	_, vic := e.user("vic", "viewer")

	n := e.mustAs(olga, 200, "POST", "/api/v1/networks", reply{"name": "audited", "provider": "local", "httpsStrategy": "none"})
	netID := n["id"].(string)
	if code, _ := e.as(vic, "POST", "/api/v1/networks", reply{"name": "nope", "provider": "local", "httpsStrategy": "none"}); code != 403 {
		t.Fatalf("a viewer creating a network: %d", code)
	}
	if code, _ := e.as(vic, "DELETE", "/api/v1/networks/"+netID, nil); code != 403 {
		t.Fatalf("a viewer deleting a network: %d", code)
	}
	const secretValue = "s3cret-value-never-recorded"
	instanceID := "01234567-89ab-7def-8123-456789abcdef"
	if code, out := e.as(olga, "POST", "/api/v1/instances/"+instanceID+"/secrets", reply{"name": "db-password", "value": secretValue}); code != 404 {
		t.Fatalf("a secret for no instance: %d %v", code, out)
	}
	conn, _ := e.grpcConn(context.Background())
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+olga)
	if _, err := inventoryv1.NewNetworkServiceClient(conn).DeleteNetwork(ctx, &inventoryv1.DeleteNetworkRequest{Id: netID}); err != nil {
		t.Fatal(err)
	}
	const newPassword = "olga-new-password"
	e.mustAs(olga, 200, "POST", "/api/v1/users/me:change-password", reply{"currentPassword": "olga-pass", "newPassword": newPassword})
	apiToken := e.mustAs(olga, 200, "POST", "/api/v1/tokens", reply{"name": "olga-ci", "role": "viewer"})
	tokenID := apiToken["apiToken"].(reply)["id"].(string)

	// The projection catches up.
	const total = 16
	var all []reply
	eventually(t, 10*time.Second, func() string {
		all = e.auditPages(t, "", 100)
		if len(all) != total {
			return fmt.Sprintf("%d audit records, want %d:\n%s", len(all), total, summary(all))
		}
		return ""
	})

	byOlga := []string{
		"POST /api/v1/tokens olga " + tokenID + " 200 ok",
		"token-created olga " + tokenID + " 0 ok",
		"POST /api/v1/users/me:change-password olga " + olgaID + " 200 ok", // the caller's own user
		"password-changed olga " + olgaID + " 0 ok",
		"DELETE /api/v1/networks/{id} olga " + netID + " 200 ok",
		"POST /api/v1/instances/{instance_id}/secrets olga " + instanceID + " 404 not_found",
		"POST /api/v1/networks olga " + netID + " 200 ok",
		"token-issued olga " + olgaID + " 0 ok",
	}
	for _, q := range []string{"user=olga", "user=" + olgaID} {
		if got := e.audit(t, q); summary(got) != strings.Join(byOlga, "\n") {
			t.Errorf("%s:\n%s\nwant\n%s", q, summary(got), strings.Join(byOlga, "\n"))
		}
	}
	byNetwork := []string{
		"DELETE /api/v1/networks/{id} olga " + netID + " 200 ok",
		"DELETE /api/v1/networks/{id} vic " + netID + " 403 permission_denied",
		"POST /api/v1/networks olga " + netID + " 200 ok",
	}
	if got := e.audit(t, "target="+netID); summary(got) != strings.Join(byNetwork, "\n") {
		t.Errorf("target=%s:\n%s\nwant\n%s", netID, summary(got), strings.Join(byNetwork, "\n"))
	}
	byOlgaUser := []string{
		"POST /api/v1/users/me:change-password olga " + olgaID + " 200 ok",
		"password-changed olga " + olgaID + " 0 ok",
		"token-issued olga " + olgaID + " 0 ok",
		"POST /api/v1/users admin " + olgaID + " 200 ok",
		"user-created admin " + olgaID + " 0 ok",
	}
	if got := e.audit(t, "target="+olgaID); summary(got) != strings.Join(byOlgaUser, "\n") {
		t.Errorf("target=%s:\n%s\nwant\n%s", olgaID, summary(got), strings.Join(byOlgaUser, "\n"))
	}
	// A time range: since is inclusive, until exclusive.
	since, until := all[7]["time"].(string), all[3]["time"].(string)
	if got := e.audit(t, "since="+url.QueryEscape(since)+"&until="+url.QueryEscape(until)); summary(got) != summary(all[4:8]) {
		t.Errorf("since %s until %s:\n%s\nwant\n%s", since, until, summary(got), summary(all[4:8]))
	}
	// Page by page, the same records.
	if paged := e.auditPages(t, "", 4); summary(paged) != summary(all) {
		t.Errorf("in pages of 4:\n%s\nwant\n%s", summary(paged), summary(all))
	}
	if code, out := e.as(e.token, "GET", "/api/v1/audit?since=yesterday", nil); code != 400 || out["field"] != "since" {
		t.Errorf("since=yesterday: %d %v", code, out)
	}

	// Who, with which role, from where, in which trace, by which means.
	for _, r := range all {
		if r["kind"] != "api" {
			continue
		}
		if r["source"] != "127.0.0.1" || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(r["traceId"].(string)) || r["actor"] != "user:"+r["username"].(string) {
			t.Errorf("record %v", r)
		}
		switch r["username"] {
		case "olga":
			if r["role"] != "operator" {
				t.Errorf("olga's record: %v", r)
			}
		case "vic":
			if r["role"] != "viewer" {
				t.Errorf("vic's record: %v", r)
			}
		}
		if r["action"] == "DELETE /api/v1/networks/{id}" && r["username"] == "olga" &&
			!strings.Contains(r["detail"].(string), "method=/flotilla.inventory.v1.NetworkService/DeleteNetwork") {
			t.Errorf("the gRPC call's record: %v", r)
		}
	}

	// Nothing secret anywhere in the trail.
	secrets := []string{secretValue, adminPass, "olga-pass", newPassword, "vic-pass", olga, vic, e.token, apiToken["token"].(string)}
	for _, m := range e.read(t, "FLOTILLA_AUDIT", "flotilla.audit.>") {
		for _, s := range secrets {
			if bytes.Contains(m.Data(), []byte(s)) || strings.Contains(fmt.Sprint(m.Headers()), s) {
				t.Errorf("audit record %s holds %q", m.Subject(), s)
			}
		}
	}
	for _, s := range secrets {
		if strings.Contains(fmt.Sprint(all), s) {
			t.Errorf("GET /api/v1/audit shows %q", s)
		}
	}
}

// TestAnAuditRecordJetStreamCannotStoreNowIsStoredLater: while the audit
// stream takes no record (as while it elects a leader), a mutating call
// still ends, after gateway.AuditWait, and its record is stored, once, as
// soon as the stream takes records again. A call made while another's
// record has waited half a second does not wait: its record joins the
// late ones, as does one made once a record is late. The log says each
// record is late, with all it holds, and when it was stored.
func TestAnAuditRecordJetStreamCannotStoreNowIsStoredLater(t *testing.T) {
	t.Parallel()
	var logs testkit.Buffer
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) {
		c.Log = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	js, err := jetstream.New(e.bus.Unrestricted(t))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), subjects.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	taking := cfg.Subjects
	cfg.Subjects = []string{"flotilla.audit-paused.>"}
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	type answer struct {
		code int
		body []byte
		took time.Duration
	}
	first := make(chan answer, 1)
	go func() {
		code, body := e.send("POST", "/api/v1/networks", reply{"name": "audited-late", "provider": "local", "httpsStrategy": "none"}, "")
		first <- answer{code, body, time.Since(start)}
	}()
	// A call made while the first's record has waited half a second does
	// not wait too: it ends before the first. The record waits from when
	// the network is written (the inventory's answer), however long the
	// call took to get there on a busy machine.
	for written := false; !written; time.Sleep(10 * time.Millisecond) {
		if err := e.pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT FROM networks WHERE name = 'audited-late')`).Scan(&written); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("the first call's network was not written within 30 s")
		}
	}
	time.Sleep(gateway.AuditStalled + 200*time.Millisecond)
	meanwhile := e.must(200, "POST", "/api/v1/networks", reply{"name": "audited-meanwhile", "provider": "local", "httpsStrategy": "none"})
	var a answer
	select {
	case a = <-first:
		t.Errorf("a call made while another's record waited ended after it")
	default:
		a = <-first
	}
	n := reply{}
	if err := json.Unmarshal(a.body, &n); a.code != 200 || err != nil {
		t.Fatalf("the first call: %d %s", a.code, a.body)
	}
	if a.took < gateway.AuditWait {
		t.Fatalf("the call ended after %v, before its record could have been stored", a.took)
	}
	// A call made while a record is late does not wait either: its record
	// joins those before it.
	behind := e.must(200, "POST", "/api/v1/networks", reply{"name": "audited-behind", "provider": "local", "httpsStrategy": "none"})
	for _, want := range []struct{ id, behind string }{{meanwhile["id"].(string), "behind=1"}, {behind["id"].(string), "behind=2"}} {
		joined := false
		for l := range strings.Lines(logs.String()) {
			joined = joined || strings.Contains(l, `msg="audit record late: storing it in the background"`) &&
				strings.Contains(l, "target="+want.id) && strings.Contains(l, want.behind)
		}
		if !joined {
			t.Errorf("the record of the call on %s did not join the late ones (%s):\n%s", want.id, want.behind, logs.String())
		}
	}
	time.Sleep(time.Second) // the records wait
	cfg.Subjects = taking
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{n["id"].(string), meanwhile["id"].(string), behind["id"].(string)} {
		want := "POST /api/v1/networks admin " + id + " 200 ok"
		eventually(t, 15*time.Second, func() string {
			if got := summary(e.audit(t, "target="+id)); got != want {
				return fmt.Sprintf("the network's audit records:\n%s\nwant\n%s", got, want)
			}
			return ""
		})
	}
	for _, line := range []string{
		`msg="audit record late: storing it in the background" service=gateway route="POST /api/v1/networks" user=admin role=admin target=` + n["id"].(string),
		`msg="late audit record stored" service=gateway route="POST /api/v1/networks" user=admin`,
	} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("the gateway's log does not say\n%s\nit says:\n%s", line, logs.String())
		}
	}
}

// audit reads one page of GET /api/v1/audit?query as the admin.
func (e *env) audit(t *testing.T, query string) []reply {
	t.Helper()
	out := e.must(200, "GET", "/api/v1/audit?"+query, nil)
	var recs []reply
	for _, r := range out["records"].([]any) {
		recs = append(recs, r.(reply))
	}
	return recs
}

// auditPages reads every page of GET /api/v1/audit?query, size at a time.
func (e *env) auditPages(t *testing.T, query string, size int) []reply {
	t.Helper()
	var recs []reply
	token := ""
	for {
		out := e.must(200, "GET", fmt.Sprintf("/api/v1/audit?pageSize=%d&pageToken=%s&%s", size, token, query), nil)
		for _, r := range out["records"].([]any) {
			recs = append(recs, r.(reply))
		}
		if token, _ = out["nextPageToken"].(string); token == "" {
			return recs
		}
	}
}

// summary is one line per record: action, user, target, status, result.
func summary(recs []reply) string {
	lines := make([]string, len(recs))
	for i, r := range recs {
		lines[i] = fmt.Sprintf("%v %v %v %v %v", r["action"], r["username"], r["target"], r["status"], r["result"])
	}
	return strings.Join(lines, "\n")
}
