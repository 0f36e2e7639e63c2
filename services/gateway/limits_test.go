package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/internal/stack"
)

// TestInputIsBounded: a body over the cap answers 413, one sent too slowly
// 408, a NUL byte or an over-large resource 400 naming the field; nothing is
// written by any of them, and the server goes on serving.
func TestInputIsBounded(t *testing.T) {
	t.Parallel()
	const maxBody = 64 << 10
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) {
		c.MaxRequestBytes, c.RequestReadTimeout = maxBody, time.Second
	}})
	big := reply{"name": "big", "provider": "local", "dataDiskGb": 1,
		"setupActions": []reply{{"type": "file", "path": "f", "mode": "0644", "content": strings.Repeat("x", maxBody)}}}
	out := reply{}
	if code := e.call("POST", "/api/v1/templates", big, &out, ""); code != 413 || out["reason"] != "too_large" || !strings.Contains(out["message"].(string), "65536 bytes") {
		t.Errorf("body over the cap: %d %v", code, out)
	}
	// Without a Content-Length the cap is found while reading.
	req, _ := http.NewRequest("POST", e.base+"/api/v1/templates", io.MultiReader(strings.NewReader(`{"name":"`), strings.NewReader(strings.Repeat("y", 2*maxBody))))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.ContentLength = -1
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 413 {
		t.Errorf("chunked body over the cap: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// A client that stops sending its body is answered 408.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/networks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":", e.token)
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 408 || !strings.Contains(string(body), `"reason":"request_timeout"`) {
		t.Errorf("slow body: %d %s", resp.StatusCode, body)
	}

	// NUL bytes are refused wherever they are, naming the field.
	for body, field := range map[string]string{
		`{"name":"lab\u0000","provider":"local","httpsStrategy":"none"}`:                             "name",
		`{"name":"lab","provider":"local","httpsStrategy":"none","dns":{"privateZoneId":"a\u0000"}}`: "dns.privateZoneId",
	} {
		out := reply{}
		if code := e.call("POST", "/api/v1/networks", body, &out, ""); code != 400 || out["reason"] != "invalid_field" || out["field"] != field {
			t.Errorf("NUL in %s: %d %v", field, code, out)
		}
	}
	if got := e.must(200, "GET", "/api/v1/networks", nil); len(got["networks"].([]any)) != 0 {
		t.Errorf("refused requests wrote %v", got)
	}

	// gRPC has the same cap on a message.
	gc, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e.token)
	_, err = inventoryv1.NewTemplateServiceClient(gc).CreateTemplate(ctx, &inventoryv1.CreateTemplateRequest{Template: &inventoryv1.Template{
		Name: "big", Provider: "local", DataDiskGb: 1, SetupActions: []*inventoryv1.SetupAction{{Type: "script", Script: strings.Repeat("z", maxBody)}}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("gRPC message over the cap: %v", err)
	}
	e.network("still-serving")
}

// TestAResourceMustFitTheBus: under the default 1 MiB body cap, a template
// larger than a resource may be is refused naming its largest field.
func TestAResourceMustFitTheBus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	out := reply{}
	code := e.call("POST", "/api/v1/templates", reply{"name": "big", "provider": "local", "dataDiskGb": 1,
		"setupActions": []reply{{"type": "script", "script": "echo hi"}, {"type": "file", "path": "f", "mode": "0644", "content": strings.Repeat("x", 600<<10)}}}, &out, "")
	if code != 400 || out["reason"] != "too_large" || out["field"] != "setupActions[1].content" {
		t.Errorf("oversized template: %d %v", code, out)
	}
}
