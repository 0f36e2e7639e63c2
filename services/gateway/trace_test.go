package gateway_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

func TestOneTraceSpansGatewayBusInventoryAndPostgres(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	e.traced("POST", "/api/v1/networks", `{"name":"traced","provider":"local","httpsStrategy":"none"}`, traceID)
	want := map[string]trace.SpanKind{
		"POST /api/v1/networks":                              trace.SpanKindServer,
		"nats.request flotilla.svc.inventory.network.create": trace.SpanKindClient,
		"inventory CreateNetworkRequest":                     trace.SpanKindServer,
		"INSERT":                                             trace.SpanKindClient,
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		seen := map[string]bool{}
		for _, s := range e.spans.Ended() {
			if s.SpanContext().TraceID().String() != traceID {
				continue
			}
			for name, kind := range want {
				if strings.HasPrefix(s.Name(), name) && s.SpanKind() == kind {
					seen[name] = true
				}
			}
		}
		if len(seen) == len(want) {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, s := range e.spans.Ended() {
				names = append(names, s.Name()+"@"+s.SpanContext().TraceID().String()[:8])
			}
			t.Fatalf("trace %s has %v of %v; spans: %v", traceID, seen, want, names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOneTraceSpansRequestOutboxStreamAndConsumer follows a deletion from
// the HTTP request through the inventory's transaction and outbox, the
// events stream, to the secret broker's consumer that removes the
// instance's secrets: one trace.
func TestOneTraceSpansRequestOutboxStreamAndConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	in := e.instance("traced-1", e.template("t"), e.network("n"))
	id := in["id"].(string)
	const traceID = "5cf92f3577b34da6a3ce929d0e0e4799"
	e.traced("DELETE", "/api/v1/instances/"+id, "", traceID)
	consumer := "secrets-instance-deleted process flotilla.evt.instance." + id + ".deleted"
	deadline := time.Now().Add(10 * time.Second)
	for {
		var inventorySpan, consumerSpan trace.SpanContext
		var consumerParent trace.SpanID
		for _, s := range e.spans.Ended() {
			if s.SpanContext().TraceID().String() != traceID {
				continue
			}
			switch {
			case s.Name() == "inventory DeleteInstanceRequest" && s.SpanKind() == trace.SpanKindServer:
				inventorySpan = s.SpanContext()
			case s.Name() == consumer && s.SpanKind() == trace.SpanKindConsumer:
				consumerSpan, consumerParent = s.SpanContext(), s.Parent().SpanID()
			}
		}
		if inventorySpan.IsValid() && consumerSpan.IsValid() {
			if consumerParent != inventorySpan.SpanID() {
				t.Fatalf("the consumer's span is a child of %s, not of the inventory's span %s", consumerParent, inventorySpan.SpanID())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: inventory span %v, consumer span %v", traceID, inventorySpan, consumerSpan)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// traced sends an authenticated request that continues trace traceID and
// expects 200.
func (e *env) traced(method, path, body, traceID string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("%s %s: status %d", method, path, resp.StatusCode)
	}
}
