package gateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// sse is a server-sent event stream a test reads.
type sse struct {
	t    *testing.T
	resp *http.Response
	sc   *bufio.Scanner
}

// follow opens path as an event stream with the given extra headers.
func (e *env) follow(path string, header map[string]string) *sse {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), "GET", e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		e.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &sse{t: e.t, resp: resp, sc: bufio.NewScanner(resp.Body)}
}

// next returns the next event's id and decoded data.
func (s *sse) next() (string, reply) {
	s.t.Helper()
	id, data := "", ""
	done := make(chan struct{})
	timer := time.AfterFunc(20*time.Second, func() { s.resp.Body.Close() })
	defer timer.Stop()
	defer close(done)
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && data != "":
			out := reply{}
			if err := json.Unmarshal([]byte(data), &out); err != nil {
				s.t.Fatalf("event data %q: %v", data, err)
			}
			return id, out
		}
	}
	s.t.Fatalf("the event stream ended: %v", s.sc.Err())
	return "", nil
}

// The fleet's feed answers the newest events of a kind of entity, and
// follows them as server-sent events that resume where a reconnecting
// client stopped.
func TestFleetEventsFeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{"ca", "secrets", "agentgw"}})
	tmpl, net := e.template("tmpl"), e.network("net")
	var ids []string
	for i := range 3 {
		ids = append(ids, e.instance(fmt.Sprintf("i%d", i), tmpl, net)["id"].(string))
	}
	e.events(t, "flotilla.evt.>") // the outbox has drained

	list := e.must(200, "GET", "/api/v1/events?limit=2", nil)["events"].([]any)
	if len(list) != 2 || list[0].(reply)["entityId"] != ids[1] || list[1].(reply)["entityId"] != ids[2] {
		t.Fatalf("the newest 2 instance events, oldest first: %v", list)
	}
	if d := list[1].(reply)["data"].(reply); d["name"] != "i2" || d["state"] != "created" {
		t.Fatalf("an event carries the instance: %v", d)
	}
	nets := e.must(200, "GET", "/api/v1/events?entity=network", nil)["events"].([]any)
	if len(nets) != 1 || nets[0].(reply)["type"] != "network.created" {
		t.Fatalf("network events: %v", nets)
	}
	for _, q := range []string{"entity=user", "limit=-1", "limit=5000", "follow=maybe", "lastEventId=3"} {
		out := reply{}
		if code := e.call("GET", "/api/v1/events?"+q, nil, &out, ""); code != 400 || out["reason"] != "invalid_field" {
			t.Errorf("GET /api/v1/events?%s: %d %v", q, code, out)
		}
	}

	// A follow starts with the newest event, then goes on.
	s := e.follow("/api/v1/events?follow=true&limit=1", nil)
	first, ev := s.next()
	if ev["entityId"] != ids[2] {
		t.Fatalf("the follow started with %v", ev)
	}
	e.must(200, "POST", "/api/v1/instances/"+ids[0]+":provision", "{}")
	_, ev = s.next()
	if ev["entityId"] != ids[0] || ev["type"] != "instance.provision-requested" {
		t.Fatalf("the next event followed: %v", ev)
	}
	// A reconnecting EventSource resumes after the last id it saw.
	_, ev = e.follow("/api/v1/events?follow=true", map[string]string{"Last-Event-ID": first}).next()
	if ev["type"] != "instance.provision-requested" {
		t.Fatalf("resumed after %s with %v", first, ev)
	}

	// One instance's events, followed too.
	s = e.follow("/api/v1/events?id="+ids[0]+"&follow=true&limit=5", nil)
	for _, want := range []string{"instance.created", "instance.provision-requested"} {
		if _, ev := s.next(); ev["type"] != want {
			t.Fatalf("timeline event %v, want %s", ev, want)
		}
	}
	if out := (reply{}); e.call("GET", "/api/v1/events?id=nope", nil, &out, "") != 400 || out["field"] != "id" {
		t.Fatalf("a malformed id: %v", out)
	}
}
