package pgmanaged_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla.dev/flotilla/libs/pgmanaged"
)

// baseDir is a temp dir the postgres system user can enter when the tests
// run as root (t.TempDir makes 0700 root-owned directories).
func baseDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		for _, d := range []string{dir, filepath.Dir(dir)} {
			if err := os.Chmod(d, 0o711); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func testOptions(t *testing.T) pgmanaged.Options {
	t.Helper()
	return pgmanaged.Options{
		Dir:      filepath.Join(baseDir(t), "postgres"),
		Port:     freePort(t),
		Password: "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "'\"@/?#",
		Database: "flotilla",
		NoSync:   true,
	}
}

// initServer runs Init and makes sure the server is stopped when the test
// ends, before its directory is removed.
func initServer(t *testing.T, opts pgmanaged.Options) *pgmanaged.Server {
	t.Helper()
	srv, err := pgmanaged.Init(t.Context(), opts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(context.Background()); err != nil {
			t.Errorf("Stop in cleanup: %v", err)
		}
	})
	return srv
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestStartStopStartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := initServer(t, testOptions(t))
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !srv.Running() {
		t.Fatal("Running() = false after Start")
	}

	conn := connect(t, srv.URL())
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "flotilla" {
		t.Fatalf("current_database() = %q, %v; want flotilla", db, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE ships (name text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO ships VALUES ('argo')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	if err := srv.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if srv.Running() {
		t.Fatal("Running() = true after Stop")
	}
	if _, err := pgx.Connect(ctx, srv.URL()); err == nil {
		t.Fatal("connected to a stopped server")
	}

	if err := srv.Start(ctx); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	conn = connect(t, srv.URL())
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM ships").Scan(&name); err != nil || name != "argo" {
		t.Fatalf("after restart: name = %q, %v; want argo", name, err)
	}
}

func TestStopLeavesNoProcess(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := initServer(t, testOptions(t))
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	st, err := srv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.PID <= 0 || st.Port != srv.Options().Port {
		t.Fatalf("Status = %+v; want running on port %d", st, srv.Options().Port)
	}
	pids := append([]int{st.PID}, childrenOf(t, st.PID)...)
	if len(pids) < 2 {
		t.Fatalf("found no children of postmaster %d", st.PID)
	}

	if err := srv.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still alive after Stop", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(srv.Options().Dir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid still there after Stop: %v", err)
	}
	if err := srv.Stop(ctx); err != nil {
		t.Errorf("Stop on a stopped server: %v", err)
	}
}

func TestSecondInitIsNoOp(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts := testOptions(t)
	initServer(t, opts)
	versionFile := filepath.Join(opts.Dir, "PG_VERSION")
	before, err := os.Stat(versionFile)
	if err != nil {
		t.Fatal(err)
	}

	// Init again with another password: the cluster must be left as is, so
	// only the first password logs in.
	again := opts
	again.Password = "another password"
	srv2 := initServer(t, again)
	after, err := os.Stat(versionFile)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("PG_VERSION rewritten by second Init")
	}

	err = srv2.Start(ctx)
	t.Logf("Start: %v", err)
	if err == nil || !strings.Contains(err.Error(), "password") {
		t.Fatalf("Start with a password other than the one given to initdb: %v; want a password error", err)
	}
	if srv2.Running() {
		t.Fatal("server left running after a failed Start")
	}

	srv := initServer(t, opts)
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start with the original password: %v", err)
	}
}

func TestStartOnPortInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	opts := testOptions(t)
	opts.Port = ln.Addr().(*net.TCPAddr).Port
	srv := initServer(t, opts)

	err = srv.Start(t.Context())
	t.Logf("Start: %v", err)
	if !errors.Is(err, pgmanaged.ErrPortInUse) {
		t.Fatalf("Start = %v; want ErrPortInUse", err)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", opts.Port); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	if srv.Running() {
		t.Error("Running() = true after a failed Start")
	}
}

func TestStartReusesRunningServerOnSamePort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts := testOptions(t)
	srv := initServer(t, opts)
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	st, err := srv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A second manager of the same directory, as after a crash of the
	// process that started the server.
	same, err := pgmanaged.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := same.Start(ctx); err != nil {
		t.Fatalf("Start on a server already running on the same port: %v", err)
	}
	if st2, err := same.Status(ctx); err != nil || st2.PID != st.PID {
		t.Fatalf("Status = %+v, %v; want the same postmaster %d", st2, err, st.PID)
	}

	other := opts
	other.Port = freePort(t)
	moved, err := pgmanaged.New(other)
	if err != nil {
		t.Fatal(err)
	}
	err = moved.Start(ctx)
	t.Logf("Start: %v", err)
	if err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("Start on another port while running = %v; want an already-running error", err)
	}
}

func TestStartLogTailOnFailure(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	opts.Settings = map[string]string{"shared_buffers": "not-a-size"}
	srv := initServer(t, opts)
	err := srv.Start(t.Context())
	t.Logf("Start: %v", err)
	if err == nil {
		t.Fatal("Start with an invalid setting succeeded")
	}
	if !strings.Contains(err.Error(), "shared_buffers") || !strings.Contains(err.Error(), "last lines of") {
		t.Fatalf("error does not carry the log tail naming the bad setting:\n%v", err)
	}
}

func TestMissingBinaries(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	opts.BinDir = t.TempDir()
	_, err := pgmanaged.Init(t.Context(), opts)
	if !errors.Is(err, pgmanaged.ErrBinariesNotFound) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Fatalf("Init with an empty BinDir = %v; want ErrBinariesNotFound naming the package", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	err := pgmanaged.Options{Port: 70000, Settings: map[string]string{"port": "1"}}.Validate()
	if err == nil {
		t.Fatal("Validate accepted empty options")
	}
	for _, field := range []string{"Dir", "Port", "Password", `Settings["port"]`} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("Validate error does not name %s: %v", field, err)
		}
	}
}

func TestURLEscapesPassword(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	srv, err := pgmanaged.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != opts.Password || cfg.User != pgmanaged.Superuser || cfg.Port != uint16(opts.Port) || cfg.Database != "flotilla" {
		t.Fatalf("URL %q parses to user %q password %q port %d db %q", srv.URL(), cfg.User, cfg.Password, cfg.Port, cfg.Database)
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var children []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ..."
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			children = append(children, p)
		}
	}
	return children
}

// alive reports whether pid is a running process; a zombie left for an init
// that does not reap counts as gone.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	state := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))[0]
	return state != "Z" && state != "X"
}
