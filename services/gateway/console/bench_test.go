package console_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkTheInstancesPage measures a view of the instances page (a
// middle page, by name; a search many match, and one that finds one) with FLOTILLA_BENCH_INSTANCES
// instances (default 1 000), beside its reference in the same run: the
// API's own read of one page of 100 instances, which the page view
// makes, with the page's other reads and its rendering on top; and the
// API's own search for one instance. The API's middle page oldest first
// (its default order) is measured too.
func BenchmarkTheInstancesPage(b *testing.B) {
	n := 1000
	if v := os.Getenv("FLOTILLA_BENCH_INSTANCES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("FLOTILLA_BENCH_INSTANCES=%q: want a count", v)
		}
	}
	e := newEnv(b, false)
	token := e.fill(n)
	page := (n/100)/2 + 1
	for _, c := range []struct{ name, path string }{
		{"page", fmt.Sprintf("/instances?page=%d", page)},
		{"search", "/instances?q=bench-00"},
		{"search-one", fmt.Sprintf("/instances?q=bench-%05d", n/2)},
		{"api-page-reference", fmt.Sprintf("/api/v1/instances?orderBy=name&pageSize=100&skip=%d", (page-1)*100)},
		{"api-page-oldest-first", fmt.Sprintf("/api/v1/instances?pageSize=100&skip=%d", (page-1)*100)},
		{"api-search-one", fmt.Sprintf("/api/v1/instances?orderBy=name&pageSize=100&query=bench-%05d", n/2)},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequestWithContext(b.Context(), "GET", e.base+c.path, nil)
				if strings.HasPrefix(c.name, "api-") {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				resp, err := e.client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				var body bytes.Buffer
				_, _ = body.ReadFrom(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("%s: %d %s", c.path, resp.StatusCode, body.String())
				}
			}
		})
	}
}

// fill logs in and creates n instances through the API (8 at a time),
// and returns the API token.
func (e *env) fill(n int) string {
	e.t.Helper()
	e.login(adminUser, adminPass).must(e.t, http.StatusSeeOther, "log in")
	var login struct{ Token string }
	e.apiJSON("", "POST", "/api/v1/login", map[string]string{"username": adminUser, "password": adminPass}, &login)
	var net, tpl struct{ ID string }
	e.apiJSON(login.Token, "POST", "/api/v1/networks", map[string]any{"name": "bench", "provider": "local", "httpsStrategy": "none"}, &net)
	e.apiJSON(login.Token, "POST", "/api/v1/templates", map[string]any{"name": "bench", "provider": "local", "dataDiskGb": 1}, &tpl)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				e.apiJSON(login.Token, "POST", "/api/v1/instances", map[string]any{"name": fmt.Sprintf("bench-%05d", i), "kind": "design",
					"templateId": tpl.ID, "networkId": net.ID}, nil)
			}
		})
	}
	wg.Wait()
	return login.Token
}

// apiJSON calls the REST API with a bearer token (none: "") and decodes
// the answer into out (if not nil); anything but 200 fails the test.
func (e *env) apiJSON(token, method, path string, in, out any) {
	body, _ := json.Marshal(in)
	req, _ := http.NewRequestWithContext(e.t.Context(), method, e.base+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Error(err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		e.t.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b.String())
		return
	}
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
}
