package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
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

// TestAnApplyOfNewSSLSettingsSaysHowTheyReachTheNode: on a provisioned
// instance, new SANs, a new certificate or new ACME domains take a
// refresh; at rest, or with the same settings, nothing is said. A
// network's new ACME settings take a refresh of each instance.
func TestAnApplyOfNewSSLSettingsSaysHowTheyReachTheNode(t *testing.T) {
	t.Parallel()
	in := func(state string, ssl *inventoryv1.SslSettings) *inventoryv1.Instance {
		return &inventoryv1.Instance{Name: "web-1", State: state, Ssl: ssl}
	}
	sans := &inventoryv1.SslSettings{Sans: []string{"web-1.lab.test"}}
	for _, tc := range []struct {
		name          string
		before, after *inventoryv1.Instance
		want          string
	}{
		{"new SANs", in("running", sans), in("running", &inventoryv1.SslSettings{Sans: []string{"web-1.lab.test", "www.lab.test"}}), "refresh-certificate web-1"},
		{"new ACME domains", in("running", nil), in("running", &inventoryv1.SslSettings{Domains: []string{"web.example.com"}}), "refresh-certificate web-1"},
		{"at rest", in("deprovisioned", nil), in("deprovisioned", sans), ""},
		{"the same", in("running", sans), in("running", sans), ""},
	} {
		if got := instanceChanged(tc.before, tc.after); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want it to say %q", tc.name, got, tc.want)
		}
	}
	acme := func(contact string) *inventoryv1.Network {
		return &inventoryv1.Network{Name: "pub", HttpsStrategy: "acme", Acme: &inventoryv1.AcmeSettings{ContactEmail: contact}}
	}
	if got := networkChanged(acme("a@x.test"), acme("b@x.test")); !strings.Contains(got, "refresh-certificate") || !strings.Contains(got, "--network pub") {
		t.Errorf("a network's new ACME contact: %q", got)
	}
	if got := networkChanged(acme("a@x.test"), acme("a@x.test")); got != "" {
		t.Errorf("a network's ACME settings unchanged: %q", got)
	}
}
