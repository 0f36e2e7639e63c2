package testkit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"flotilla.dev/flotilla/libs/pgmanaged"
)

const (
	// pgStartTimeout bounds initdb plus start of the package's server.
	pgStartTimeout = 2 * time.Minute
	// pgStopTimeout bounds Postgres.Stop.
	pgStopTimeout = 90 * time.Second
	// dropTimeout bounds the DROP DATABASE run when a test ends.
	dropTimeout = 30 * time.Second
	// startAttempts retries a start that lost its port to another process.
	startAttempts = 3
)

// watchdogScript waits for its stdin to close, which happens when the test
// process exits however it exits, then stops the postmaster whose data
// directory is $1 (SIGINT is PostgreSQL's fast shutdown) and removes $2.
// After a normal Stop both are already gone and it does nothing.
const watchdogScript = `
read _ || true
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && grep -q postgres "/proc/$pid/cmdline" 2>/dev/null; then
	kill -INT "$pid" 2>/dev/null
	i=0
	while [ -e "$1/postmaster.pid" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
fi
rm -rf "$2"
`

// Postgres is an ephemeral PostgreSQL server for one test package: its
// cluster lives in a temp dir that Stop removes. Tests get databases of
// their own from NewDatabase.
type Postgres struct {
	srv      *pgmanaged.Server
	base     string // temp dir holding the cluster
	admin    *pgxpool.Pool
	watchdog *exec.Cmd
	release  io.Closer // closing it wakes the watchdog
	seq      atomic.Int64
}

// StartPostgres initializes a cluster in a new temp dir and starts it on a
// free port of 127.0.0.1, with durability traded for speed. The caller must
// Stop it; TestMain usually leaves that to Main. It returns an error wrapping
// pgmanaged.ErrBinariesNotFound when PostgreSQL is not installed.
func StartPostgres(ctx context.Context) (*Postgres, error) {
	base, err := os.MkdirTemp("", "flotilla-testkit-pg-")
	if err != nil {
		return nil, fmt.Errorf("create PostgreSQL temp dir: %w", err)
	}
	p, err := startPostgresIn(ctx, base)
	if err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	return p, nil
}

func startPostgresIn(ctx context.Context, base string) (*Postgres, error) {
	// The postgres system user, when this runs as root, must get through
	// base to the cluster directory it owns.
	if err := os.Chmod(base, 0o711); err != nil {
		return nil, fmt.Errorf("open PostgreSQL temp dir to its system user: %w", err)
	}
	opts := pgmanaged.Options{
		Dir:      filepath.Join(base, "data"),
		Password: rand.Text(),
		Database: "postgres",
		NoSync:   true,
		Settings: map[string]string{"max_connections": "300"},
	}
	var srv *pgmanaged.Server
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			return nil, err
		}
		opts.Port = ports[0]
		if srv, err = pgmanaged.Init(ctx, opts); err != nil {
			return nil, fmt.Errorf("start test PostgreSQL: %w", err)
		}
		err = srv.Start(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, pgmanaged.ErrPortInUse) || attempt == startAttempts {
			return nil, fmt.Errorf("start test PostgreSQL: %w", err)
		}
	}

	p := &Postgres{srv: srv, base: base}
	if err := p.startWatchdog(); err != nil {
		return nil, errors.Join(err, p.stopServer())
	}
	admin, err := pgxpool.New(ctx, srv.URL())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("connect to test PostgreSQL: %w", err), p.Stop())
	}
	p.admin = admin
	return p, nil
}

// startWatchdog starts a shell in a session of its own (so a Ctrl-C sent to
// the test's process group spares it) that cleans up if this process dies.
func (p *Postgres) startWatchdog() error {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "testkit-pg-watchdog", p.srv.Options().Dir, p.base)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("start PostgreSQL watchdog: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start PostgreSQL watchdog: %w", err)
	}
	p.watchdog, p.release = cmd, stdin
	return nil
}

// URL is the superuser's URL of the server's "postgres" database.
func (p *Postgres) URL() string {
	return p.srv.URL()
}

// Server is the pgmanaged server behind p.
func (p *Postgres) Server() *pgmanaged.Server {
	return p.srv
}

// Stop drops the admin connections, stops the server, removes its temp dir
// and ends the watchdog.
func (p *Postgres) Stop() error {
	if p.admin != nil {
		p.admin.Close()
	}
	err := p.stopServer()
	if rerr := os.RemoveAll(p.base); rerr != nil {
		err = errors.Join(err, fmt.Errorf("remove test PostgreSQL dir: %w", rerr))
	}
	if p.watchdog != nil {
		p.release.Close()
		if werr := p.watchdog.Wait(); werr != nil {
			err = errors.Join(err, fmt.Errorf("PostgreSQL watchdog: %w", werr))
		}
	}
	return err
}

func (p *Postgres) stopServer() error {
	ctx, cancel := context.WithTimeout(context.Background(), pgStopTimeout)
	defer cancel()
	return p.srv.Stop(ctx)
}

// NewDatabase creates a database no other test uses, named after the test,
// drops it when tb ends, and returns its URL (superuser, sslmode=disable).
func (p *Postgres) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := databaseName(tb.Name(), p.seq.Add(1))
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := p.admin.Exec(tb.Context(), "CREATE DATABASE "+ident); err != nil {
		tb.Fatalf("testkit: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
		defer cancel()
		if _, err := p.admin.Exec(ctx, "DROP DATABASE "+ident+" WITH (FORCE)"); err != nil {
			tb.Errorf("testkit: drop database %s: %v", name, err)
		}
	})
	return p.srv.DatabaseURL(name)
}

// databaseName makes a PostgreSQL identifier of at most 63 bytes from the
// test name, unique through seq.
func databaseName(testName string, seq int64) string {
	suffix := fmt.Sprintf("_%d", seq)
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(testName) {
		if b.Len()+len(suffix) >= 63 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteString(suffix)
	return b.String()
}

// mainPostgres is the package's server, set up by Main and started by the
// first NewDatabase.
type mainPostgres struct {
	once sync.Once
	pg   *Postgres
	err  error
}

var current atomic.Pointer[mainPostgres]

// errTestsOver keeps a server from starting once m.Run has returned.
var errTestsOver = errors.New("tests are over")

// Main runs the package's tests with a PostgreSQL server that NewDatabase
// starts on first use, then stops the server and removes its directory, even
// when tests fail, and exits with the tests' status (1 if stopping failed).
// Call it from TestMain; it does not return.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit: it returns the exit code, for a TestMain
// that has its own cleaning up to do afterwards.
func Run(m *testing.M) int {
	mp := &mainPostgres{}
	current.Store(mp)
	code := m.Run()
	removeBuilt()
	mp.once.Do(func() { mp.err = errTestsOver })
	if mp.pg != nil {
		if err := mp.pg.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testkit: stop test PostgreSQL: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// NewDatabase is Postgres.NewDatabase on the package's server, started on
// first use. It fails tb if the package's TestMain does not call Main or the
// server cannot start (PostgreSQL not installed, say).
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	mp := current.Load()
	if mp == nil {
		tb.Fatal("testkit.NewDatabase: this package has no test PostgreSQL: add func TestMain(m *testing.M) { testkit.Main(m) }")
	}
	mp.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout)
		defer cancel()
		mp.pg, mp.err = StartPostgres(ctx)
	})
	if mp.err != nil {
		tb.Fatalf("testkit: %v", mp.err)
	}
	return mp.pg.NewDatabase(tb)
}
