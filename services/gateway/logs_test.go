package gateway_test

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/testkit"
)

// storeLogs stores lines from..to of instance id as the agent gateway does.
func (e *env) storeLogs(id string, from, to int) {
	e.t.Helper()
	testkit.StoreAgentLogs(e.t, e.bus.Conn(e.t, subjects.AgentGW), id, from, to)
}

// pageLogs follows nextPageToken through every page of query, and returns
// the seq of every line and the number of pages.
func (e *env) pageLogs(id, query string) ([]int, int) {
	e.t.Helper()
	var seqs []int
	token, pages := "", 0
	for {
		page := e.must(200, "GET", "/api/v1/instances/"+id+"/logs?"+query+"&pageToken="+token, nil)
		pages++
		for _, l := range page["lines"].([]any) {
			n, err := strconv.Atoi(l.(reply)["seq"].(string))
			if err != nil {
				e.t.Fatal(err)
			}
			if l.(reply)["text"] != fmt.Sprintf("line %d", n) {
				e.t.Fatalf("line %d reads %q", n, l.(reply)["text"])
			}
			seqs = append(seqs, n)
		}
		token, _ = page["nextPageToken"].(string)
		if token == "" {
			return seqs, pages
		}
		if pages > 100 {
			e.t.Fatal("paging does not end")
		}
	}
}

// seqRange is from..to, counting down when from > to.
func seqRange(from, to int) []int {
	var out []int
	for i := from; ; {
		out = append(out, i)
		if i == to {
			return out
		}
		if from < to {
			i++
		} else {
			i--
		}
	}
}

func TestLogsArePagedOldestOrNewestFirstAndFromATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	id := e.instance("chatty", e.template("t"), e.network("n"))["id"].(string)
	other := e.instance("quiet", e.template("t2"), e.network("n2"))["id"].(string)
	e.storeLogs(id, 1, 1500)
	e.storeLogs(other, 1, 30) // interleaved lines of another instance are never shown
	time.Sleep(20 * time.Millisecond)
	mid := time.Now().UTC()
	time.Sleep(20 * time.Millisecond)
	e.storeLogs(id, 1501, 2345)

	if got, pages := e.pageLogs(id, "pageSize=1000"); pages != 3 || fmt.Sprint(got) != fmt.Sprint(seqRange(1, 2345)) {
		t.Fatalf("oldest first: %d pages, %d lines (%v…)", pages, len(got), got[:min(5, len(got))])
	}
	if got, pages := e.pageLogs(id, "pageSize=700&order=desc"); pages != 4 || fmt.Sprint(got) != fmt.Sprint(seqRange(2345, 1)) {
		t.Fatalf("newest first: %d pages, %d lines (%v…)", pages, len(got), got[:min(5, len(got))])
	}
	since := url.QueryEscape(mid.Format(time.RFC3339Nano))
	if got, _ := e.pageLogs(id, "pageSize=300&since="+since); fmt.Sprint(got) != fmt.Sprint(seqRange(1501, 2345)) {
		t.Fatalf("oldest first since the middle: %d lines (%v…)", len(got), got[:min(5, len(got))])
	}
	if got, _ := e.pageLogs(id, "pageSize=300&order=desc&since="+since); fmt.Sprint(got) != fmt.Sprint(seqRange(2345, 1501)) {
		t.Fatalf("newest first since the middle: %d lines (%v…)", len(got), got[:min(5, len(got))])
	}
	if got, pages := e.pageLogs(other, "order=desc"); pages != 1 || fmt.Sprint(got) != fmt.Sprint(seqRange(30, 1)) {
		t.Fatalf("the other instance: %d pages, %v", pages, got)
	}
	first := e.must(200, "GET", "/api/v1/instances/"+id+"/logs", nil)
	if n := len(first["lines"].([]any)); n != 500 || first["nextPageToken"] == "" {
		t.Fatalf("the default page holds %d lines, next %q; want 500 and a next page", n, first["nextPageToken"])
	}

	// Bad parameters name the field and the rule.
	descToken := e.must(200, "GET", "/api/v1/instances/"+id+"/logs?order=desc&pageSize=1", nil)["nextPageToken"].(string)
	for _, c := range []struct{ query, field, rule string }{
		{"pageSize=5001", "pageSize", "between 1 and 5000"},
		{"pageSize=-1", "pageSize", "between 1 and 5000"},
		{"order=sideways", "order", `"asc"`},
		{"since=yesterday", "since", "RFC 3339"},
		{"pageToken=not-a-token", "pageToken", "previous response"},
		{"pageToken=" + descToken, "pageToken", "order=desc"},
		{"lines=10", "lines", "follow=true"},
		{"follow=true&lines=0", "lines", "between 1 and 10000"},
		{"follow=true&pageSize=10", "pageSize", "follow=true"},
		{"follow=true&since=noon", "since", "RFC 3339"},
	} {
		got := reply{}
		code := e.call("GET", "/api/v1/instances/"+id+"/logs?"+c.query, nil, &got, "")
		if code != 400 || fieldOf(got) != c.field || !strings.Contains(fmt.Sprint(got["message"]), c.rule) {
			t.Errorf("%s: %d %v, want 400 naming %s and %q", c.query, code, got, c.field, c.rule)
		}
	}
	if code := e.call("GET", "/api/v1/instances/00000000-0000-0000-0000-000000000000/logs", nil, nil, ""); code != 404 {
		t.Errorf("logs of no instance: %d, want 404", code)
	}
}

// TestFollowingLogsStartsWithTheNewestAndGoesOn: a follow starts with the
// newest lines and goes on with new ones; each event's id is the line's
// stream sequence, after which a follow resumes (Last-Event-ID, as an
// EventSource sends when it reconnects): the lines stored meanwhile come,
// none of those already seen.
func TestFollowingLogsStartsWithTheNewestAndGoesOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	tmpl, netw := e.template("t"), e.network("n")
	id := e.instance("followed", tmpl, netw)["id"].(string)
	other := e.instance("other", tmpl, netw)["id"].(string)
	e.storeLogs(other, 1, 7) // so stream sequences are not the lines' own
	e.storeLogs(id, 1, 50)
	s := e.follow("/api/v1/instances/"+id+"/logs?follow=true&lines=2", nil)
	var seqs []string
	var last string
	for len(seqs) < 3 {
		ev, l := s.next()
		if l["cursor"] != ev {
			t.Fatalf("line %v came as event %s: its cursor is not its event id", l, ev)
		}
		seqs, last = append(seqs, l["seq"].(string)), ev
		if len(seqs) == 2 {
			e.storeLogs(id, 51, 51)
		}
	}
	if strings.Join(seqs, ",") != "49,50,51" || last != "58" {
		t.Fatalf("followed lines %v (the last event's id %s), want the newest two (49, 50) then the new one (51), id 58", seqs, last)
	}
	s.resp.Body.Close()
	e.storeLogs(other, 8, 8)
	e.storeLogs(id, 52, 53) // while nobody follows
	s = e.follow("/api/v1/instances/"+id+"/logs?follow=true", map[string]string{"Last-Event-ID": last})
	seqs = seqs[:0]
	for len(seqs) < 2 {
		_, l := s.next()
		seqs = append(seqs, l["seq"].(string))
	}
	if strings.Join(seqs, ",") != "52,53" {
		t.Fatalf("a follow resumed after line 51: %v, want 52, 53", seqs)
	}
	s.resp.Body.Close()
	// after in the URL says the same; a reconnecting EventSource's
	// Last-Event-ID comes before it.
	for _, c := range []struct {
		query  string
		header map[string]string
	}{
		{"follow=true&after=" + last, nil},
		{"follow=true&after=1", map[string]string{"Last-Event-ID": last}},
	} {
		s = e.follow("/api/v1/instances/"+id+"/logs?"+c.query, c.header)
		if _, l := s.next(); l["seq"] != "52" {
			t.Errorf("%s %v: the first line is %v, want 52", c.query, c.header, l)
		}
		s.resp.Body.Close()
	}
	for _, c := range []struct{ query, field string }{
		{"follow=true&lastEventId=latest", "lastEventId"},
		{"lastEventId=58", "lastEventId"},
		{"follow=true&after=latest", "after"},
		{"after=58", "after"},
	} {
		got := reply{}
		if code := e.call("GET", "/api/v1/instances/"+id+"/logs?"+c.query, nil, &got, ""); code != 400 || fieldOf(got) != c.field {
			t.Errorf("%s: %d %v, want 400 naming %s", c.query, code, got, c.field)
		}
	}
}

// TestFollowingLogsOverGRPC: FollowInstanceLogs streams the newest lines,
// then new ones, to a gRPC client; paging settings are refused, naming
// the field; logging out ends the follow.
func TestFollowingLogsOverGRPC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	id := e.instance("followed-grpc", e.template("t"), e.network("n"))["id"].(string)
	e.storeLogs(id, 1, 20)
	conn, authed := e.grpcConn(t.Context())
	ctx, cancel := context.WithTimeout(authed, 30*time.Second)
	defer cancel()
	instances := inventoryv1.NewInstanceServiceClient(conn)
	stream, err := instances.FollowInstanceLogs(ctx, &inventoryv1.ListInstanceLogsRequest{Id: id, Lines: 3})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []string
	var cursor uint64
	for len(seqs) < 4 {
		l, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", seqs, err)
		}
		seqs = append(seqs, strconv.FormatUint(l.GetSeq(), 10))
		if l.GetCursor() <= cursor {
			t.Fatalf("line %d's cursor %d does not follow the one before (%d)", l.GetSeq(), l.GetCursor(), cursor)
		}
		cursor = l.GetCursor()
		if len(seqs) == 3 {
			e.storeLogs(id, 21, 21)
		}
	}
	if strings.Join(seqs, ",") != "18,19,20,21" {
		t.Fatalf("followed %v, want the newest three then the new one", seqs)
	}
	// A follow given the cursor of the last line it got goes on after it.
	resumed, err := instances.FollowInstanceLogs(ctx, &inventoryv1.ListInstanceLogsRequest{Id: id, After: cursor})
	if err != nil {
		t.Fatal(err)
	}
	e.storeLogs(id, 22, 22)
	if l, err := resumed.Recv(); err != nil || l.GetSeq() != 22 || l.GetCursor() <= cursor {
		t.Errorf("a follow after line 21 (cursor %d) first got %v, %v; want line 22 with a greater cursor", cursor, l, err)
	}
	if l, err := stream.Recv(); err != nil || l.GetSeq() != 22 {
		t.Errorf("the first follow then got %v, %v; want line 22 too", l, err)
	}
	bad, err := instances.FollowInstanceLogs(ctx, &inventoryv1.ListInstanceLogsRequest{Id: id, PageSize: 10})
	if err == nil {
		_, err = bad.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "pageSize") {
		t.Errorf("a follow with pageSize: %v; want invalid, naming pageSize", err)
	}
	anon, err := instances.FollowInstanceLogs(context.Background(), &inventoryv1.ListInstanceLogsRequest{Id: id})
	if err == nil {
		_, err = anon.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("a follow without a token: %v", err)
	}

	// Logging out ends the follows of the session.
	e.must(200, "POST", "/api/v1/logout", reply{})
	if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a follow after its session logged out: %v; want unauthenticated, saying the token was revoked", err)
	}
}

// TestEventsArePagedOverRESTAndGRPC: the timeline is a declared list like
// the others: pageSize and nextPageToken walk it, oldest first, and gRPC
// answers the same.
func TestEventsArePagedOverRESTAndGRPC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	in := e.instance("timeline", e.template("t"), e.network("n"))
	id := in["id"].(string)
	version := in["version"].(string)
	for i := range 4 {
		got := e.must(200, "PATCH", "/api/v1/instances/"+id, map[string]any{"version": version, "name": fmt.Sprintf("timeline-%d", i)})
		version = got["version"].(string)
	}
	// The events reach the stream through the outbox, shortly after the
	// writes: wait for the fifth.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		all := e.must(200, "GET", "/api/v1/instances/"+id+"/events", nil)
		if len(all["events"].([]any)) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the timeline never held 5 events: %v", all)
		}
	}
	var types []string
	token, pages := "", 0
	for {
		page := e.must(200, "GET", "/api/v1/instances/"+id+"/events?pageSize=2&pageToken="+token, nil)
		pages++
		for _, x := range page["events"].([]any) {
			types = append(types, x.(reply)["type"].(string))
		}
		if token, _ = page["nextPageToken"].(string); token == "" || pages > 10 {
			break
		}
	}
	want := "instance.created,instance.updated,instance.updated,instance.updated,instance.updated"
	if strings.Join(types, ",") != want || pages != 3 {
		t.Fatalf("timeline over %d pages: %v; want %s over 3", pages, types, want)
	}
	if code := e.call("GET", "/api/v1/instances/"+id+"/events?pageSize=20000", nil, &reply{}, ""); code != 400 {
		t.Errorf("pageSize 20000: %d, want 400", code)
	}

	conn, ctx := e.grpcConn(t.Context())
	resp, err := inventoryv1.NewInstanceServiceClient(conn).ListInstanceEvents(ctx, &inventoryv1.ListInstanceEventsRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEvents()) != 5 || resp.GetEvents()[0].GetEntityId() != id || resp.GetNextPageToken() != "" {
		t.Errorf("over gRPC: %d events, next %q", len(resp.GetEvents()), resp.GetNextPageToken())
	}
}
