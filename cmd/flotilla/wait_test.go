package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// waitServer answers a wait's requests: the instance's events as
// server-sent events (refused with 404 when feed is false), and the
// instance itself at each read, one view after the other.
func waitServer(t *testing.T, feed bool, events []*eventsv1.Event, reads []*inventoryv1.Instance) (*session, *atomic.Int32) {
	t.Helper()
	var nreads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/events" && feed:
			if q := r.URL.Query(); q.Get("id") != "i-1" || q.Get("follow") != "true" || q.Get("since") == "" {
				http.Error(w, "bad query "+r.URL.RawQuery, http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "text/event-stream")
			for i, e := range events {
				b, _ := protojson.Marshal(e)
				fmt.Fprintf(w, "id: %d\nevent: event\ndata: %s\n\n", i+1, b)
			}
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case r.URL.Path == "/api/v1/instances/i-1":
			n := int(nreads.Add(1)) - 1
			if n >= len(reads) {
				http.Error(w, `{"code":5,"reason":"not_found","message":"no instance"}`, http.StatusNotFound)
				return
			}
			b, _ := protojson.Marshal(reads[n])
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(b)
		default:
			http.Error(w, `{"code":5,"reason":"not_found","message":"not here"}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	h, err := httpClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &session{apiClient: &apiClient{server: srv.URL, token: "t", http: h}}, &nreads
}

// at is the instance in state and step, changed at start+ms.
func at(start time.Time, ms int, state, detail string) *inventoryv1.Instance {
	return &inventoryv1.Instance{Id: "i-1", Name: "web-1", State: state, StateDetail: detail, DesiredState: "provisioned",
		UpdateTime: timestamppb.New(start.Add(time.Duration(ms) * time.Millisecond))}
}

func event(t *testing.T, verb string, in *inventoryv1.Instance) *eventsv1.Event {
	t.Helper()
	data, err := anypb.New(in)
	if err != nil {
		t.Fatal(err)
	}
	return &eventsv1.Event{Type: "instance." + verb, EntityId: in.GetId(), Time: in.GetUpdateTime(), Data: data}
}

// TestAWaitFollowsTheInstancesEvents: each step is shown as it starts and
// ends, timed by the server's clock; an event older than the view shown (or
// than the action's answer) is passed over; the wait ends with the event
// that ends it, reading nothing.
func TestAWaitFollowsTheInstancesEvents(t *testing.T) {
	t.Parallel()
	start := time.Now().Add(-time.Hour)
	asked := at(start, 0, "provisioning", "queued")
	events := []*eventsv1.Event{
		event(t, "running", at(start, -1000, "running", "")), // an earlier action's, within the margin asked
		event(t, "provision-requested", asked),
		event(t, "step-started", at(start, 40, "provisioning", "allocating-disk")),
		event(t, "disk-allocated", at(start, 52, "provisioning", "launching-vm")),
		event(t, "updated", at(start, 45, "provisioning", "allocating-disk")), // older than what is shown
		event(t, "vm-launched", at(start, 61, "provisioning", "waiting-for-agent")),
		event(t, "step-started", at(start, 1561, "provisioning", "running-setup")),
		event(t, "progress", at(start, 2000, "provisioning", "installing")),
		event(t, "progress", at(start, 2100, "provisioning", "starting")),
		event(t, "running", at(start, 2125, "running", "")),
	}
	s, reads := waitServer(t, true, events, nil)
	var out bytes.Buffer
	if err := waitFor(t.Context(), s, asked, vocab.ActionProvision, waitOptions{wait: true, timeout: time.Minute}, &out); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	want := "Provisioning web-1\n" +
		"web-1: queued ...\nweb-1: queued done in 40ms\n" +
		"web-1: allocating-disk ...\nweb-1: allocating-disk done in 12ms\n" +
		"web-1: launching-vm ...\nweb-1: launching-vm done in 9ms\n" +
		"web-1: waiting-for-agent ...\nweb-1: waiting-for-agent done in 1.5s\n" +
		"web-1: running-setup ...\nweb-1: running-setup done in 439ms\n" +
		"web-1: installing ...\nweb-1: installing done in 100ms\n" +
		"web-1: starting ...\nweb-1: starting done in 25ms\n" +
		"web-1: running\n"
	if out.String() != want {
		t.Errorf("the wait showed\n%s\nwant\n%s", &out, want)
	}
	if n := reads.Load(); n != 0 {
		t.Errorf("the wait read the instance %d times while its events came", n)
	}
}

// TestAWaitReadsTheInstanceWithoutItsEvents: a server that does not send
// the instance's events is read instead; a deletion followed by its
// events ends with instance.deleted, at its time.
func TestAWaitReadsTheInstanceWithoutItsEvents(t *testing.T) {
	t.Parallel()
	start := time.Now().Add(-time.Hour)
	asked := at(start, 0, "deprovisioning", "queued")
	asked.DesiredState = "deprovisioned"
	views := []*inventoryv1.Instance{at(start, 300, "deprovisioning", "stopping-vm"), at(start, 900, "deprovisioned", "")}
	for _, v := range views {
		v.DesiredState = "deprovisioned"
	}
	s, reads := waitServer(t, false, nil, views)
	var out bytes.Buffer
	if err := waitFor(t.Context(), s, asked, vocab.ActionDeprovision, waitOptions{wait: true, timeout: time.Minute}, &out); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if want := "web-1: stopping-vm done in 600ms\nweb-1: deprovisioned\n"; !strings.HasSuffix(out.String(), want) || reads.Load() != 2 {
		t.Errorf("without events, after %d reads:\n%s\nwant the end\n%s", reads.Load(), &out, want)
	}

	// A deletion followed by its events ends with instance.deleted.
	deleting := at(start, 0, "deleting", "queued")
	deleting.DesiredState, deleting.DataDisk = "deleted", &inventoryv1.DataDisk{Id: "disk-1"}
	gone := at(start, 80, "deleting", "deleting-disk")
	gone.DesiredState = "deleted"
	deleted := event(t, "deleted", gone) // the instance as it was, at the deletion's time
	deleted.Time = timestamppb.New(start.Add(95 * time.Millisecond))
	s, reads = waitServer(t, true, []*eventsv1.Event{event(t, "step-started", gone), deleted}, nil)
	out.Reset()
	if err := waitFor(t.Context(), s, deleting, vocab.ActionDelete, waitOptions{wait: true, timeout: time.Minute}, &out); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if want := "web-1: deleting-disk ...\nweb-1: deleting-disk done in 15ms\nweb-1: deleted\n"; !strings.HasSuffix(out.String(), want) || reads.Load() != 0 {
		t.Errorf("delete, after %d reads:\n%s\nwant the end\n%s", reads.Load(), &out, want)
	}

	// A provision the instance's deletion overtook ends saying so.
	asked = at(start, 0, "provisioning", "queued")
	s, _ = waitServer(t, true, []*eventsv1.Event{deleted}, nil)
	err := waitFor(t.Context(), s, asked, vocab.ActionProvision, waitOptions{wait: true, timeout: time.Minute}, &bytes.Buffer{})
	if err == nil || err.Error() != "provision of web-1 was superseded: the instance was deleted" {
		t.Errorf("a provision whose instance was deleted: %v", err)
	}
}

// TestAForcedDeletesWaitEndsWithWhatItLeft: waiting on a forced delete
// passes over the failure of the unforced attempt before it (the forced
// one is queued behind it), and ends naming what was left in the cloud.
func TestAForcedDeletesWaitEndsWithWhatItLeft(t *testing.T) {
	t.Parallel()
	start := time.Now().Add(-time.Hour)
	forced := func(in *inventoryv1.Instance) *inventoryv1.Instance {
		in.DesiredState, in.DeleteForced, in.VmId = "deleted", true, "i-0ab"
		return in
	}
	asked := forced(at(start, 0, "deleting", "stopping-vm"))
	left := "forced: left in the cloud: vm i-0ab (stopping-vm: connection refused)"
	events := []*eventsv1.Event{
		event(t, "failed", forced(at(start, 200, "failed", "stopping-vm: connection refused"))),
		event(t, "step-started", forced(at(start, 300, "deleting", "stopping-vm"))),
		event(t, "deleted", forced(at(start, 900, "deleted", left))),
	}
	s, _ := waitServer(t, true, events, nil)
	var out bytes.Buffer
	if err := waitFor(t.Context(), s, asked, vocab.ActionDelete, waitOptions{wait: true, timeout: time.Minute}, &out); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	// Outside a terminal the step refused does not read as done: its end
	// is "ended", then a line says it failed, before the last line.
	if want := "web-1: stopping-vm ...\nweb-1: stopping-vm ended in 900ms\nweb-1: stopping-vm failed: left in the cloud\nweb-1: deleted (" + left + ")\n"; !strings.HasSuffix(out.String(), want) {
		t.Errorf("the wait showed\n%s\nwant the end\n%s", &out, want)
	}
	if strings.Contains(out.String(), "stopping-vm done") {
		t.Errorf("the wait shows stopping-vm done:\n%s", &out)
	}
}

// TestAForcedDeleteShowsTheStepsItLeftOnATerminal: on a terminal, the
// lines of the steps whose resource a forced delete left in the cloud end
// marked failed, not done; the others done.
func TestAForcedDeleteShowsTheStepsItLeftOnATerminal(t *testing.T) {
	t.Parallel()
	in := &inventoryv1.Instance{Id: "i-1", Name: "web-1", VmId: "i-0ab", DataDisk: &inventoryv1.DataDisk{Id: "vol-1"}}
	var out bytes.Buffer
	p := newProgress(&out, true, in, vocab.ActionDelete)
	now := time.Now()
	p.at(vocab.StepStoppingVM, now)
	p.at(vocab.StepDeletingDisk, now.Add(time.Second))
	p.gone(now.Add(2*time.Second), vocab.LeftInCloud([]vocab.Left{{What: "vm i-0ab", Step: vocab.StepStoppingVM, Why: "connection refused"}}))
	p.draw(now.Add(2 * time.Second))
	screen := out.String() // one drawing
	for _, want := range []string{"✗ stopping-vm        left in the cloud", "✓ deleting-disk", "web-1 is deleted (forced: left in the cloud: vm i-0ab (stopping-vm: connection refused))"} {
		if !strings.Contains(screen, want) {
			t.Errorf("the terminal shows\n%s\nwithout %q", screen, want)
		}
	}
	if strings.Contains(screen, "✓ stopping-vm") {
		t.Errorf("the terminal shows stopping-vm done:\n%s", screen)
	}
}

// TestAWaitReadsTheInstanceWhenItsEventsGoQuiet: a feed that is up but
// brings nothing (an event lost to a broken stream) does not hold the
// wait: after quiet, the instance is read, and the wait ends with it.
func TestAWaitReadsTheInstanceWhenItsEventsGoQuiet(t *testing.T) {
	t.Parallel()
	start := time.Now().Add(-time.Hour)
	asked := at(start, 0, "provisioning", "queued")
	s, reads := waitServer(t, true, nil, []*inventoryv1.Instance{at(start, 2100, "running", "")})
	var out bytes.Buffer
	began := time.Now()
	if err := waitFor(t.Context(), s, asked, vocab.ActionProvision, waitOptions{wait: true, timeout: time.Minute, quiet: 300 * time.Millisecond}, &out); err != nil {
		t.Fatalf("%v\n%s", err, &out)
	}
	if !strings.HasSuffix(out.String(), "web-1: running\n") || reads.Load() != 1 {
		t.Errorf("after %d reads:\n%s\nwant it to end running, read once", reads.Load(), &out)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("the instance was read after %v, before the feed was quiet for 300ms", took)
	}
}
