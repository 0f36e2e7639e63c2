package apiclient_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/loadtest/apiclient"
)

// TestTheClientLogsInAndNamesErrorAnswers: Login keeps the token and sends
// it; an error answer is an *Error with its status, reason and message.
func TestTheClientLogsInAndNamesErrorAnswers(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/login":
			_, _ = w.Write([]byte(`{"token":"flt_x"}`))
		case r.Header.Get("Authorization") != "Bearer flt_x":
			w.WriteHeader(http.StatusUnauthorized)
		default:
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"reason":"version_mismatch","message":"stale"}`))
		}
	}))
	defer srv.Close()
	c := apiclient.New(srv.URL, 2, 5*time.Second)
	if err := c.Login(t.Context(), "admin", "pw"); err != nil || c.Token != "flt_x" {
		t.Fatalf("login: %v, token %q", err, c.Token)
	}
	err := c.Do(t.Context(), "PATCH", "/api/v1/networks/x", map[string]string{"version": "1"}, nil)
	if apiclient.StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "version_mismatch: stale") {
		t.Fatalf("error answer: %v (status %d)", err, apiclient.StatusOf(err))
	}
}

func TestLoadGoesOnlyToThisMachine(t *testing.T) {
	t.Parallel()
	for target, ok := range map[string]bool{"http://127.0.0.1:7700": true, "localhost": true, "127.0.0.9": true,
		"http://192.0.2.1:7700": false, "example.com": false} {
		if err := apiclient.Loopback("-api", target); (err == nil) != ok {
			t.Errorf("%s: %v", target, err)
		}
	}
}
