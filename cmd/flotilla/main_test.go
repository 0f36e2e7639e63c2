package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/testkit"
)

// These tests run the real binary, as an operator would.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-bin")
	if err != nil {
		panic(err)
	}
	// Local VMs run as users of their own when the tests run as root: they
	// must be able to run the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "flotilla")
	// The client commands the tests run read no developer's login: an
	// empty configuration unless a test names its own.
	os.Setenv(configEnv, filepath.Join(dir, "no-config.yaml"))
	for _, v := range []string{serverEnv, tokenEnv, caFileEnv} {
		os.Unsetenv(v)
	}
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	code := testkit.Run(m)
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// dataDir returns a fresh data directory the postgres user can reach.
func dataDir(t *testing.T) string {
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(d, "data")
}

// freeBase finds a base port whose six consecutive ports are free, below
// the kernel's ephemeral range: there no connection or ":0" listener of
// another test takes one between the choice and flotilla up's bind (one
// did, at 48566).
func freeBase(t *testing.T) int {
	t.Helper()
	ephemeral := testkit.EphemeralLow()
	for range 100 {
		base := 10000 + rand.IntN(ephemeral-6-10000)
		ok := true
		for p := base; p < base+6 && ok; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no six consecutive free ports")
	return 0
}

type upProc struct {
	cmd  *exec.Cmd
	out  *testkit.Buffer
	base int
	// tls: the API is served over TLS, verified with caFile (the data
	// directory's fleet CA unless a test says otherwise).
	tls    bool
	caFile string
	// done is closed when the process has exited; err is then its Wait error.
	done chan struct{}
	err  error
}

func startUp(t *testing.T, dir string, base int, env ...string) *upProc {
	t.Helper()
	return startUpWith(t, dir, base, nil, env...)
}

// startUpWith starts flotilla up with more arguments; with --tls the API
// is reached over HTTPS.
func startUpWith(t *testing.T, dir string, base int, args []string, env ...string) *upProc {
	t.Helper()
	u, err := launchUp(t, dir, base, args, env...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// startUpFree starts flotilla up on a free base port, and on another if
// one of its ports was taken meanwhile (freeBase only found them free).
func startUpFree(t *testing.T, dir string, args []string, env ...string) *upProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		u, err := launchUp(t, dir, freeBase(t), args, env...)
		if err == nil {
			return u
		}
		if attempt == 5 || !strings.Contains(u.out.String(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("flotilla up on base port %d: a port was taken meanwhile; trying another", u.base)
	}
}

// launchUp starts flotilla up and waits until its API answers; an error
// says why it did not (its output included).
func launchUp(t *testing.T, dir string, base int, args []string, env ...string) (*upProc, error) {
	t.Helper()
	return launchUpOf(t, binary, dir, base, args, env...)
}

// launchUpOf is launchUp with the flotilla binary bin.
func launchUpOf(t *testing.T, bin, dir string, base int, args []string, env ...string) (*upProc, error) {
	t.Helper()
	u := &upProc{out: &testkit.Buffer{}, base: base, tls: slices.Contains(args, "--tls") || slices.Contains(args, "--tls-cert"),
		caFile: filepath.Join(dir, "ca", "ca.crt"), done: make(chan struct{})}
	if i := slices.Index(args, "--tls-cert"); i >= 0 {
		u.caFile = args[i+1] // the operator's chain: trusted as it is
	}
	u.cmd = exec.Command(bin, append([]string{"up", "--data-dir", dir, "--port", strconv.Itoa(base)}, args...)...)
	u.cmd.Env = append(os.Environ(), env...)
	u.cmd.Stdout, u.cmd.Stderr = u.out, u.out
	if err := u.cmd.Start(); err != nil {
		return u, err
	}
	go func() { u.err = u.cmd.Wait(); close(u.done) }()
	t.Cleanup(func() {
		select {
		case <-u.done:
		default:
			_ = u.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-u.done:
			case <-time.After(60 * time.Second):
				_ = u.cmd.Process.Kill()
			}
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := u.client().Get(u.url("/api/v1/status"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return u, nil
			}
		}
		select {
		case <-u.done:
			return u, fmt.Errorf("flotilla up exited: %v\n%s", u.err, u.out)
		default:
		}
		if time.Now().After(deadline) {
			return u, fmt.Errorf("flotilla up not ready:\n%s", u.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (u *upProc) url(path string) string {
	scheme := "http"
	if u.tls {
		scheme = "https"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, u.base, path)
}

// client reaches the API: over TLS, trusting only the data directory's
// fleet CA (none until it exists).
func (u *upProc) client() *http.Client {
	if !u.tls {
		return http.DefaultClient
	}
	pool := x509.NewCertPool()
	if pem, err := os.ReadFile(u.caFile); err == nil {
		pool.AppendCertsFromPEM(pem)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// stop sends SIGTERM and requires a clean exit.
func (u *upProc) stop(t *testing.T) {
	t.Helper()
	if err := u.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.done:
		if u.err != nil {
			t.Fatalf("flotilla up exited with %v:\n%s", u.err, u.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("flotilla up did not stop on SIGTERM:\n%s", u.out)
	}
}

func (u *upProc) do(t *testing.T, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, u.url(path), strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := u.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (u *upProc) login(t *testing.T) string {
	t.Helper()
	code, out := u.do(t, "POST", "/api/v1/login", "", `{"username":"admin","password":"S3cret-pass"}`)
	if code != 200 {
		t.Fatalf("login: %d %v", code, out)
	}
	return out["token"].(string)
}

func admin(dir string, args ...string) (string, error) {
	cmd := exec.Command(binary, append([]string{"admin", "initial-setup"}, append(args, "--data-dir", dir)...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "postgres", "postmaster.pid"))
	if err != nil {
		t.Fatalf("managed PostgreSQL not running: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// gone reports whether pid no longer runs (a zombie awaiting its reaper counts as gone).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

func TestUpServesRestartsWithItsDataAndStopsCleanly(t *testing.T) {
	t.Parallel()
	dir, base := dataDir(t), freeBase(t)
	up := startUp(t, dir, base)

	settings, err := os.ReadFile(filepath.Join(dir, "config", "settings.json"))
	if err != nil || !strings.Contains(string(settings), `"databaseURL"`) {
		t.Fatalf("settings.json: %v %s", err, settings)
	}
	if strings.Contains(string(settings), "natsToken") {
		t.Error("settings.json holds a shared bus token")
	}
	// The services connect to the managed PostgreSQL as a role that only
	// reads and writes rows; the superuser only migrated.
	var st datadir.Settings
	if err := json.Unmarshal(settings, &st); err != nil {
		t.Fatal(err)
	}
	pg, err := pgx.Connect(t.Context(), st.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	var roles []string
	rows, _ := pg.Query(t.Context(), `SELECT DISTINCT a.usename || ':' || r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename
		WHERE a.datname = 'flotilla' AND a.application_name = 'flotilla'`)
	for rows.Next() {
		var r string
		_ = rows.Scan(&r)
		roles = append(roles, r)
	}
	pg.Close(t.Context())
	if !slices.Equal(roles, []string{datadir.ServiceRole + ":false"}) {
		t.Errorf("the services connect to PostgreSQL as %v, want only %s, not a superuser", roles, datadir.ServiceRole)
	}
	// Every service's own bus credentials, readable by Flotilla alone.
	for _, id := range busauth.Identities() {
		fi, err := os.Stat(filepath.Join(dir, "config", "bus", id+".creds"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("bus credentials of %s: %v %v", id, fi, err)
		}
	}
	for _, sub := range []string{"logs", "postgres", "nats"} {
		if _, err := os.Stat(filepath.Join(dir, sub)); err != nil {
			t.Errorf("data dir lacks %s: %v", sub, err)
		}
	}
	if code, out := up.do(t, "GET", "/api/v1/networks", "", ""); code != 401 {
		t.Fatalf("no token: %d %v", code, out)
	}
	// Prometheus metrics on base+5.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", base+5))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(metrics), "go_goroutines") {
		t.Fatalf("metrics: %d %.200s", resp.StatusCode, metrics)
	}
	// initial-setup works while up runs, and only once.
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil || !strings.Contains(out, fmt.Sprintf("log in with: flotilla login --server http://127.0.0.1:%d --username admin", base)) {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	out, err := admin(dir, "admin", "Other-pass1")
	if err == nil || !strings.Contains(out, "initial setup has already been done") {
		t.Fatalf("second initial-setup: %v\n%s", err, out)
	}
	token := up.login(t)
	if code, out := up.do(t, "POST", "/api/v1/networks", token, `{"name":"lab","provider":"local","httpsStrategy":"none"}`); code != 200 {
		t.Fatalf("create network: %d %v", code, out)
	}
	// flotilla up is one manager process running six services, one NATS
	// server leading alone, one standalone database.
	var cl struct {
		Managers []managerJSON
		Brokers  []struct {
			Name       string
			MetaLeader bool
		}
		Databases []struct{ Role string }
	}
	status := flotillaCLI(t, nil, "cluster", "status", "-o", "json", "--server", up.url(""), "--token", token)
	if err := json.Unmarshal([]byte(status), &cl); err != nil {
		t.Fatal(err)
	}
	if len(cl.Managers) != 6 || cl.Managers[0].Pid != up.cmd.Process.Pid || len(cl.Brokers) != 1 || cl.Brokers[0].Name != "flotilla" ||
		!cl.Brokers[0].MetaLeader || len(cl.Databases) != 1 || cl.Databases[0].Role != "standalone" {
		t.Fatalf("flotilla up's cluster status:\n%s", status)
	}
	// brokers list: the NATS server, then every stream's replicas.
	brokers := flotillaCLI(t, nil, "cluster", "brokers", "list", "-o", "table", "--server", up.url(""), "--token", token)
	if lines := strings.Split(brokers, "\n"); len(lines) < 4 || !strings.HasPrefix(lines[0], "NAME") ||
		!strings.HasPrefix(lines[1], "flotilla ") || !strings.Contains(brokers, "STREAMS") || !strings.Contains(brokers, "FLOTILLA_EVENTS") {
		t.Fatalf("flotilla up's brokers list:\n%s", brokers)
	}

	// A follower (the console's live pages, flotilla logs -f) is told to
	// follow again, and does not hold the stop up.
	req, _ := http.NewRequest("GET", up.url("/api/v1/events?follow=true"), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	feed, err := up.client().Do(req)
	if err != nil || feed.StatusCode != 200 {
		t.Fatalf("follow the events: %v %v", feed, err)
	}
	told := make(chan string, 1)
	go func() {
		defer feed.Body.Close()
		rest, _ := io.ReadAll(feed.Body)
		told <- string(rest)
	}()

	pid := postmasterPID(t, dir)
	stopping := time.Now()
	up.stop(t)
	if took := time.Since(stopping); took > 8*time.Second {
		t.Errorf("flotilla up took %v to stop with a follower: it waited for the follow to end", took)
	}
	if rest := <-told; !strings.Contains(rest, ": the gateway is stopping: follow again") {
		t.Errorf("the follower was not told to follow again; it read:\n%s", rest)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL (pid %d) still running after flotilla stopped", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for p := base; p < base+6; p++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Errorf("port %d still in use after stop: %v", p, err)
			continue
		}
		l.Close()
	}
	if !strings.Contains(up.out.String(), "Flotilla is up") || !strings.Contains(up.out.String(), fmt.Sprintf("127.0.0.1:%d", base)) {
		t.Errorf("log does not say where Flotilla listens:\n%s", up.out)
	}

	// A restart on the same data dir keeps every record.
	again := startUp(t, dir, base)
	token = again.login(t)
	code, list := again.do(t, "GET", "/api/v1/networks", token, "")
	if code != 200 || !strings.Contains(fmt.Sprint(list["networks"]), "name:lab") {
		t.Fatalf("after restart: %d %v", code, list)
	}
	again.stop(t)

	// A copy of the stopped directory is a backup (README, "Backing up"):
	// Flotilla starts on it elsewhere, on other ports, with every record.
	restoredDir := dataDir(t)
	if out, err := exec.Command("cp", "-a", dir, restoredDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the data directory: %v\n%s", err, out)
	}
	restored := startUp(t, restoredDir, freeBase(t))
	token = restored.login(t)
	if code, list := restored.do(t, "GET", "/api/v1/networks", token, ""); code != 200 || !strings.Contains(fmt.Sprint(list["networks"]), "name:lab") {
		t.Fatalf("on a copy of the data directory: %d %v", code, list)
	}
	restored.stop(t)
}

// TestASecondUpOnTheDirectoryIsRefused: flotilla up started again on a
// data directory another up serves (a second terminal) says so and stops,
// touching nothing: it once took the running PostgreSQL for one of its own
// and stopped it on its way out, and opened the same NATS store.
func TestASecondUpOnTheDirectoryIsRefused(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	up := startUpFree(t, dir, nil)
	// A command on the database while up runs uses up's PostgreSQL.
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup while up runs: %v\n%s", err, out)
	}
	token := up.login(t)
	second := exec.Command(binary, "up", "--data-dir", dir, "--port", strconv.Itoa(up.base))
	out, err := second.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("a second up on the directory: %v, want a non-zero exit\n%s", err, out)
	}
	want := fmt.Sprintf("the data directory is in use: pid %d, flotilla up holds %s", up.cmd.Process.Pid, dir)
	if !strings.Contains(string(out), want) {
		t.Fatalf("a second up on the directory said:\n%s\nwant %q", out, want)
	}
	if strings.Contains(string(out), "PostgreSQL started") {
		t.Fatalf("the second up started PostgreSQL before it was refused:\n%s", out)
	}
	// The first serves on, with its PostgreSQL.
	for range 3 {
		if code, body := up.do(t, "GET", "/api/v1/networks", token, ""); code != 200 {
			t.Fatalf("the first up after a second was refused: %d %v", code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Another directory on the same base port: refused before anything
	// starts, naming the port, what it is for, and the ports up takes.
	other := dataDir(t)
	out, err = exec.Command(binary, "up", "--data-dir", other, "--port", strconv.Itoa(up.base+3)).CombinedOutput()
	wantPorts := fmt.Sprintf("flotilla up takes the 6 ports %d-%d", up.base+3, up.base+8)
	if err == nil || !strings.Contains(string(out), fmt.Sprintf("127.0.0.1:%d (the HTTP API, base port + 0)", up.base+3)) ||
		!strings.Contains(string(out), wantPorts) || !strings.Contains(string(out), "--port") || strings.Contains(string(out), "PostgreSQL started") {
		t.Fatalf("up on a base whose ports another up holds: %v\n%s", err, out)
	}
	up.stop(t)
	// Once it stopped, the directory is free again.
	up = startUpFree(t, dir, nil)
	up.login(t)
	up.stop(t)
}

func TestInitialSetupWithoutUpLeavesNothingRunning(t *testing.T) {
	t.Parallel()
	dir, base := dataDir(t), freeBase(t)
	if out, err := admin(dir, "admin", "short", "--port", strconv.Itoa(base)); err == nil || !strings.Contains(out, "password: must be at least 8 characters") {
		t.Fatalf("short password: %v\n%s", err, out)
	}
	// The password from standard input keeps it out of ps.
	setup := exec.Command(binary, "admin", "initial-setup", "admin", "--password-stdin", "--data-dir", dir)
	setup.Stdin = strings.NewReader("S3cret-pass\n")
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("initial-setup --password-stdin: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres", "postmaster.pid")); err == nil {
		t.Fatal("initial-setup left PostgreSQL running")
	}
	up := startUp(t, dir, base)
	up.login(t)
	up.stop(t)
}
