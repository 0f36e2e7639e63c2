package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/datadir"
)

// TestUpTrustsTheProxiesItsSettingsName: behind a reverse proxy that
// trustedProxies names, `flotilla up` takes the client from the proxy's
// X-Forwarded-For (the audit record of a failed login names it); a bad
// entry is refused at start, naming the setting, before anything starts.
func TestUpTrustsTheProxiesItsSettingsName(t *testing.T) {
	t.Parallel()
	dir, base := dataDir(t), freeBase(t)
	d := datadir.Dir(dir)
	s, err := datadir.Prepare(d, datadir.Overrides{BasePort: base})
	if err != nil {
		t.Fatal(err)
	}
	s.TrustedProxies = []string{"10.0.0.0/8", "proxy.example"}
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "up", "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "trustedProxies") || !strings.Contains(string(out), "proxy.example") {
		t.Fatalf("up with a host name among the trusted proxies: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
		t.Error("the refused start created the database")
	}
	s.TrustedProxies = []string{"127.0.0.1"} // the test is the proxy
	// The fleet overview's window for node certificates: a Go duration.
	s.CertificateWarning = "30d"
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(binary, "up", "--data-dir", dir).CombinedOutput(); err == nil || !strings.Contains(string(out), `certificateWarning: "30d"`) {
		t.Fatalf("up with certificateWarning 30d: %v\n%s", err, out)
	}
	s.CertificateWarning = "720h"
	if err := datadir.Save(d, s); err != nil {
		t.Fatal(err)
	}
	u := startUpFree(t, dir, nil)
	defer u.stop(t)
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	req, _ := http.NewRequest("POST", u.url("/api/v1/login"), strings.NewReader(`{"username":"admin","password":"not-the-password"}`))
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	resp, err := u.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("a wrong password: %d", resp.StatusCode)
	}
	token := u.login(t)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, ov := u.do(t, "GET", "/api/v1/overview", token, "")
		if code == 200 {
			if ov["certificateWarning"] != "2592000s" {
				t.Fatalf("the overview's window with certificateWarning 720h: %v", ov["certificateWarning"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("overview: %d %v", code, ov)
		}
	}
	var sources []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		code, out := u.do(t, "GET", "/api/v1/audit?user=admin", token, "")
		if code != 200 {
			t.Fatalf("audit: %d %v", code, out)
		}
		b, _ := json.Marshal(out["records"])
		var recs []struct{ Action, Source string }
		_ = json.Unmarshal(b, &recs)
		sources = sources[:0]
		for _, r := range recs {
			if r.Action == "login-failed" {
				sources = append(sources, r.Source)
			}
		}
		if len(sources) > 0 {
			break
		}
	}
	if len(sources) != 1 || sources[0] != "203.0.113.7" {
		t.Fatalf("failed logins' sources %v: want the forwarded address 203.0.113.7", sources)
	}
}
