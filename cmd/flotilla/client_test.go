package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestTheCLIKeepsTheGatewaysCookie: a command's requests carry the cookie
// its first answer set, as HAProxy's FLOTILLA_GATEWAY cookie needs to keep
// them on one gateway.
func TestTheCLIKeepsTheGatewaysCookie(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var sent []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		c, err := r.Cookie("FLOTILLA_GATEWAY")
		if err != nil {
			sent = append(sent, "")
			http.SetCookie(w, &http.Cookie{Name: "FLOTILLA_GATEWAY", Value: "gw-2", Path: "/"})
		} else {
			sent = append(sent, c.Value)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	h, err := httpClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &apiClient{server: srv.URL, token: "t", http: h}
	for range 3 {
		if _, err := c.send(t.Context(), http.MethodGet, "/api/v1/instances/i-1", nil); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 3 || sent[0] != "" || sent[1] != "gw-2" || sent[2] != "gw-2" {
		t.Fatalf("cookies sent: %q; want none first, then the one set", sent)
	}
}
