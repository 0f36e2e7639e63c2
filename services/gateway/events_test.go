package gateway_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/services/inventory/app"
)

// events reads every message on the events stream matching filter.
func (e *env) events(t *testing.T, filter string) []jetstream.Msg {
	t.Helper()
	return e.read(t, "FLOTILLA_EVENTS", filter)
}

// read returns the messages of a stream on the filter subject, once the
// outbox has drained.
func (e *env) read(t *testing.T, stream, filter string) []jetstream.Msg {
	t.Helper()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Give the forwarder a moment to drain the outbox.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM outbox_messages").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			return out
		}
	}
}

func TestEveryChangeReachesTheEventsStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	n := e.network("lab")
	id := n["id"].(string)
	e.must(200, "PATCH", "/api/v1/networks/"+id, reply{"version": "1", "name": "lab-2"})
	e.must(200, "DELETE", "/api/v1/networks/"+id, nil)
	msgs := e.events(t, "flotilla.evt.network."+id+".*")
	if len(msgs) != 3 {
		t.Fatalf("%d events for the network, want 3", len(msgs))
	}
	for i, verb := range []string{"created", "updated", "deleted"} {
		m := msgs[i]
		if m.Subject() != "flotilla.evt.network."+id+"."+verb {
			t.Errorf("event %d subject %s", i, m.Subject())
		}
		h := m.Headers()
		for _, k := range []string{bus.HeaderMsgID, bus.HeaderActor, bus.HeaderTime, bus.HeaderSchemaVersion, "traceparent"} {
			if h.Get(k) == "" {
				t.Errorf("event %d lacks header %s: %v", i, k, h)
			}
		}
		ev, err := bus.DecodeEvent(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		net := &inventoryv1.Network{}
		if err := ev.GetData().UnmarshalTo(net); err != nil {
			t.Fatal(err)
		}
		if ev.GetType() != "network."+verb || ev.GetActor() != "user:admin" || ev.GetId() != h.Get(bus.HeaderMsgID) ||
			ev.GetEntityId() != id || net.GetName() != []string{"lab", "lab-2", "lab-2"}[i] || ev.GetEntityVersion() != int64(min(i+1, 2)) {
			t.Errorf("event %d: %v", i, ev)
		}
	}
}

var errInjected = errors.New("injected failure after the write")

func TestARolledBackChangeNeverReachesTheStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{appOptions: []app.Option{app.WithAfterWrite(func(ctx context.Context, tx pgx.Tx) error {
		var doomed bool
		err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM networks WHERE name LIKE 'doomed%')").Scan(&doomed)
		if err == nil && doomed {
			return errInjected
		}
		return err
	})}})
	out := reply{}
	if code := e.call("POST", "/api/v1/networks", reply{"name": "doomed", "provider": "local", "httpsStrategy": "none"}, &out, ""); code != 500 {
		t.Fatalf("failing write: %d %v", code, out)
	}
	msg := out["message"].(string)
	if !strings.Contains(msg, "error id") || strings.Contains(msg, "injected") {
		t.Fatalf("500 message must carry an error id and no detail: %q", msg)
	}
	e.network("kept")
	if l := e.must(200, "GET", "/api/v1/networks", nil); len(l["networks"].([]any)) != 1 {
		t.Fatalf("rolled-back network is listed: %v", l)
	}
	for _, m := range e.events(t, "flotilla.evt.network.>") {
		ev, _ := bus.DecodeEvent(m.Data())
		net := &inventoryv1.Network{}
		_ = ev.GetData().UnmarshalTo(net)
		if net.GetName() == "doomed" {
			t.Fatalf("rolled-back change reached the stream: %v", ev)
		}
		if net.GetName() != "kept" {
			t.Fatalf("unexpected event %v", ev)
		}
	}
}
