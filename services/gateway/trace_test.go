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
	req, _ := http.NewRequest("POST", e.base+"/api/v1/networks", strings.NewReader(`{"name":"traced","provider":"local","httpsStrategy":"none"}`))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
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
