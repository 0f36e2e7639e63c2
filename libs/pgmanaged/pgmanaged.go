package pgmanaged

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Superuser is the PostgreSQL role initdb creates; Options.Password is its
// password.
const Superuser = "flotilla"

// DefaultDatabase is the database Start creates when Options.Database is
// empty.
const DefaultDatabase = "flotilla"

// ErrPortInUse is returned by Start when something else already listens on
// 127.0.0.1:Port.
var ErrPortInUse = errors.New("port already in use")

const (
	// pgCtlTimeout is pg_ctl's -t: how long start and stop may take.
	pgCtlTimeout = 60 * time.Second
	// readyTimeout bounds the wait for a first real connection after start.
	readyTimeout = 30 * time.Second
	// statusTimeout bounds Running, which takes no context.
	statusTimeout = 10 * time.Second
	// logTailLines is how much of the server log a failed start reports.
	logTailLines = 30
	// pgVersionFile marks an initialized data directory.
	pgVersionFile = "PG_VERSION"
	// pidFile is the postmaster's lock file in the data directory.
	pidFile = "postmaster.pid"
)

// Options describe one managed PostgreSQL instance.
type Options struct {
	// Dir is the data directory (the cluster). Required. Made absolute.
	Dir string
	// LogFile receives the server's output. Default: Dir/postgresql.log.
	LogFile string
	// Port is the TCP port on 127.0.0.1 the server listens on. Required.
	Port int
	// Password is the password of the Superuser role, set by Init and used
	// by Start and URL. Required.
	Password string
	// Database is created by Start if missing and named by URL.
	// Default: DefaultDatabase.
	Database string
	// OSUser is the system account every PostgreSQL program runs as.
	// Default: "postgres" when this process is root (PostgreSQL refuses to
	// run as root), else the current user.
	OSUser string
	// BinDir holds initdb, pg_ctl and postgres. Default: FindBinDir.
	BinDir string
	// NoSync trades crash safety for speed: initdb --no-sync, and the
	// server runs with fsync, synchronous_commit and full_page_writes off.
	// For tests and throwaway clusters only.
	NoSync bool
	// Settings are extra server settings, passed as -c name=value at start.
	Settings map[string]string
}

// settingName is what PostgreSQL accepts as a parameter name.
var settingName = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)

// reservedSettings are set by Start itself.
var reservedSettings = []string{"port", "listen_addresses", "unix_socket_directories"}

// Validate reports every problem with the options at once, naming the field.
func (o Options) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("option Dir: required"))
	}
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("option Port: must be between 1 and 65535, got %d", o.Port))
	}
	if o.Password == "" {
		errs = append(errs, errors.New("option Password: required"))
	}
	if strings.ContainsAny(o.Password, "\r\n\x00") {
		errs = append(errs, errors.New("option Password: must not contain line breaks or NUL"))
	}
	if len(o.Database) > 63 {
		errs = append(errs, fmt.Errorf("option Database: at most 63 bytes, got %d", len(o.Database)))
	}
	if strings.ContainsRune(o.Database, 0) {
		errs = append(errs, errors.New("option Database: must not contain NUL"))
	}
	for name := range o.Settings {
		switch {
		case !settingName.MatchString(name):
			errs = append(errs, fmt.Errorf("option Settings[%q]: not a PostgreSQL parameter name", name))
		case slices.Contains(reservedSettings, name):
			errs = append(errs, fmt.Errorf("option Settings[%q]: set by pgmanaged itself", name))
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills the defaults that need no system lookups.
func (o Options) withDefaults() (Options, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return o, fmt.Errorf("option Dir %q: %w", o.Dir, err)
	}
	o.Dir = dir
	if o.LogFile == "" {
		o.LogFile = filepath.Join(o.Dir, "postgresql.log")
	}
	if o.LogFile, err = filepath.Abs(o.LogFile); err != nil {
		return o, fmt.Errorf("option LogFile %q: %w", o.LogFile, err)
	}
	if o.Database == "" {
		o.Database = DefaultDatabase
	}
	o.Settings = maps.Clone(o.Settings)
	return o, nil
}

// Server is a PostgreSQL instance living in Options.Dir. Its methods are safe
// for concurrent use.
type Server struct {
	opts Options
	bin  string
	user osUser
	mu   sync.Mutex // serializes Init, Start and Stop
}

// New checks the options, finds the PostgreSQL binaries and resolves the
// system user. It touches nothing on disk: use it to query or stop an
// existing cluster; use Init to create one.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("pgmanaged options: %w", err)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("pgmanaged options: %w", err)
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	} else if err := checkBinDir(opts.BinDir); err != nil {
		return nil, err
	}
	if opts.OSUser == "" {
		if opts.OSUser, err = defaultOSUser(); err != nil {
			return nil, err
		}
	}
	u, err := lookupOSUser(opts.OSUser)
	if err != nil {
		return nil, err
	}
	return &Server{opts: opts, bin: opts.BinDir, user: u}, nil
}

// Init returns the Server for opts after creating its cluster with initdb if
// Dir has no PG_VERSION yet: SCRAM authentication for local and host
// connections, superuser Superuser with opts.Password, UTF8, locale C. An
// initialized Dir is left as it is (its password is not changed).
func Init(ctx context.Context, opts Options) (*Server, error) {
	s, err := New(opts)
	if err != nil {
		return nil, err
	}
	if err := s.init(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Options returns the options with every default filled in.
func (s *Server) Options() Options {
	o := s.opts
	o.Settings = maps.Clone(o.Settings)
	return o
}

// URL returns the connection URL of Options.Database:
// postgres://flotilla:<password>@127.0.0.1:<port>/<database>?sslmode=disable.
func (s *Server) URL() string {
	return s.DatabaseURL(s.opts.Database)
}

// DatabaseURL is URL for another database on the same server.
func (s *Server) DatabaseURL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(Superuser, s.opts.Password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.opts.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

func (s *Server) initialized() bool {
	_, err := os.Stat(filepath.Join(s.opts.Dir, pgVersionFile))
	return err == nil
}

func (s *Server) init(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := s.opts.Dir
	if s.initialized() {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("check data directory %s: %w", dir, err)
		}
		if !s.user.ownedBy(fi) {
			return fmt.Errorf("data directory %s is not owned by system user %s, which runs PostgreSQL", dir, s.user.name)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create parent of data directory %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create data directory %s: %w", dir, err)
	}
	if err := s.user.chown(dir); err != nil {
		return err
	}
	if err := s.user.checkTraversable(dir); err != nil {
		return err
	}

	// initdb needs an empty Dir, so the password file goes next to it when
	// another user must read it, else to the usual temp directory.
	pwDir := ""
	if s.user.switching {
		pwDir = filepath.Dir(dir)
	}
	pw, err := os.CreateTemp(pwDir, ".pgmanaged-pw-*")
	if err != nil {
		return fmt.Errorf("create initdb password file: %w", err)
	}
	defer os.Remove(pw.Name())
	_, werr := io.WriteString(pw, s.opts.Password+"\n")
	cerr := pw.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write initdb password file: %w", err)
	}
	if err := s.user.chown(pw.Name()); err != nil {
		return err
	}

	args := []string{
		"-D", dir,
		"--auth-local=scram-sha-256",
		"--auth-host=scram-sha-256",
		"--username=" + Superuser,
		"--pwfile=" + pw.Name(),
		"--encoding=UTF8",
		"--locale=C",
	}
	if s.opts.NoSync {
		args = append(args, "--no-sync")
	}
	if out, err := s.run(ctx, "initdb", args...); err != nil {
		return fmt.Errorf("initdb %s: %w%s", dir, err, outputSuffix(out))
	}
	return nil
}

// Status is what Server.Status found.
type Status struct {
	// Running is true when a postmaster for the data directory is alive.
	Running bool
	// PID is the postmaster's process id, when Running.
	PID int
	// Port is the port the running server listens on, when Running.
	Port int
}

// Status asks pg_ctl whether a server runs on the data directory and reads
// its pid and port from postmaster.pid.
func (s *Server) Status(ctx context.Context) (Status, error) {
	out, err := s.run(ctx, "pg_ctl", "-D", s.opts.Dir, "status")
	if err != nil {
		var exit *exec.ExitError
		// 3: not running; 4: no accessible data directory (so not running).
		if errors.As(err, &exit) && (exit.ExitCode() == 3 || exit.ExitCode() == 4) {
			return Status{}, nil
		}
		return Status{}, fmt.Errorf("pg_ctl status %s: %w%s", s.opts.Dir, err, outputSuffix(out))
	}
	st := Status{Running: true}
	data, err := os.ReadFile(filepath.Join(s.opts.Dir, pidFile))
	if err != nil {
		return st, fmt.Errorf("read %s: %w", pidFile, err)
	}
	// Line 1 is the postmaster pid, line 4 its port.
	lines := strings.Split(string(data), "\n")
	if len(lines) >= 1 {
		st.PID, _ = strconv.Atoi(strings.TrimSpace(lines[0]))
	}
	if len(lines) >= 4 {
		st.Port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
	}
	return st, nil
}

// Running reports whether a server runs on the data directory. It treats a
// failure to find out as not running.
func (s *Server) Running() bool {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	st, err := s.Status(ctx)
	return err == nil && st.Running
}

// Start starts the server on 127.0.0.1:Port (TCP only, no unix socket) and
// returns once a connection with the password works and Options.Database
// exists. A server already running on the data directory is reused when it
// listens on Port, and reported as an error otherwise; a stale postmaster.pid
// is left to PostgreSQL. If Start fails after launching the server, it stops
// it again. A failed start's error ends with the tail of the server log.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir, port := s.opts.Dir, s.opts.Port
	if !s.initialized() {
		return fmt.Errorf("start PostgreSQL: data directory %s is not initialized (no %s): run Init first", dir, pgVersionFile)
	}
	st, err := s.Status(ctx)
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	if st.Running {
		if st.Port != port {
			return fmt.Errorf("start PostgreSQL: a server (pid %d) already runs on data directory %s with port %d, not the requested port %d: stop it first", st.PID, dir, st.Port, port)
		}
		if err := s.waitReadyAndCreateDB(ctx); err != nil {
			return fmt.Errorf("start PostgreSQL: reuse running server (pid %d): %w", st.PID, err)
		}
		return nil
	}

	if err := checkPortFree(port); err != nil {
		return fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
	}
	if err := s.prepareLogFile(); err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	out, err := s.run(ctx, "pg_ctl",
		"-D", dir,
		"-l", s.opts.LogFile,
		"-w", "-t", strconv.Itoa(int(pgCtlTimeout.Seconds())),
		"-o", s.serverArgs(),
		"start")
	if err != nil {
		tail := logTail(s.opts.LogFile, logTailLines)
		err = fmt.Errorf("start PostgreSQL in %s on 127.0.0.1:%d: pg_ctl start: %w%s%s", dir, port, err, outputSuffix(out), tailSuffix(s.opts.LogFile, tail))
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", ErrPortInUse, err)
		}
		return errors.Join(err, s.stopAfterFailedStart())
	}
	if err := s.waitReadyAndCreateDB(ctx); err != nil {
		err = fmt.Errorf("start PostgreSQL in %s on 127.0.0.1:%d: %w%s", dir, port, err, tailSuffix(s.opts.LogFile, logTail(s.opts.LogFile, logTailLines)))
		return errors.Join(err, s.stopAfterFailedStart())
	}
	return nil
}

// stopAfterFailedStart stops a server Start launched but could not finish
// with, even when Start's context is done.
func (s *Server) stopAfterFailedStart() error {
	ctx, cancel := context.WithTimeout(context.Background(), pgCtlTimeout+10*time.Second)
	defer cancel()
	if err := s.stop(ctx); err != nil {
		return fmt.Errorf("stop after failed start: %w", err)
	}
	return nil
}

// serverArgs is pg_ctl's -o: a shell fragment handed to postgres.
func (s *Server) serverArgs() string {
	args := []string{
		"-p", strconv.Itoa(s.opts.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=''",
	}
	if s.opts.NoSync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	names := make([]string, 0, len(s.opts.Settings))
	for name := range s.opts.Settings {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		args = append(args, "-c", shellQuote(name+"="+s.opts.Settings[name]))
	}
	return strings.Join(args, " ")
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// checkPortFree fails early, with a clear error, when the port is taken.
func checkPortFree(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%s: %w by another process: choose another port or stop what listens there", addr, ErrPortInUse)
		}
		return fmt.Errorf("check port %s: %w", addr, err)
	}
	if err := ln.Close(); err != nil {
		return fmt.Errorf("check port %s: %w", addr, err)
	}
	return nil
}

// prepareLogFile creates the log file so the system user can append to it.
func (s *Server) prepareLogFile() error {
	path := s.opts.LogFile
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create directory of log file %s: %w", path, err)
	}
	if err := s.user.checkTraversable(filepath.Dir(path)); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create log file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create log file: %w", err)
	}
	return s.user.chown(path)
}

// waitReadyAndCreateDB waits until the superuser can log in over TCP, then
// creates Options.Database if it is missing.
func (s *Server) waitReadyAndCreateDB(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var conn *pgx.Conn
	for {
		var err error
		conn, err = pgx.Connect(ctx, s.DatabaseURL("postgres"))
		if err == nil {
			break
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000") {
			return fmt.Errorf("log in as %s: %w (is Password the one the cluster was initialized with?)", Superuser, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect as %s: %w", Superuser, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer conn.Close(context.WithoutCancel(ctx))

	db := s.opts.Database
	if db == "postgres" {
		return nil
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", db, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
			return nil
		}
		return fmt.Errorf("create database %q: %w", db, err)
	}
	return nil
}

// Stop stops the server with pg_ctl's fast mode (open transactions are
// rolled back) and returns once the postmaster and its children have exited.
// Stopping a server that is not running does nothing. Give it a context that
// outlives the one cancelled at shutdown.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stop(ctx); err != nil {
		return fmt.Errorf("stop PostgreSQL in %s: %w", s.opts.Dir, err)
	}
	return nil
}

func (s *Server) stop(ctx context.Context) error {
	st, err := s.Status(ctx)
	if err != nil {
		return err
	}
	if !st.Running {
		return nil
	}
	out, err := s.run(ctx, "pg_ctl", "-D", s.opts.Dir, "-m", "fast", "-w", "-t", strconv.Itoa(int(pgCtlTimeout.Seconds())), "stop")
	if err != nil {
		// It may have stopped meanwhile; only a server still up is an error.
		if after, serr := s.Status(ctx); serr != nil || after.Running {
			return fmt.Errorf("pg_ctl stop: %w%s%s", err, outputSuffix(out), tailSuffix(s.opts.LogFile, logTail(s.opts.LogFile, logTailLines)))
		}
	}
	// pg_ctl waits for postmaster.pid to go, which the postmaster removes
	// as it exits after its children; make sure the process is gone too.
	for st.PID > 0 && processAlive(st.PID) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for postmaster (pid %d) to exit: %w", st.PID, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// processAlive reports whether pid is a live process (a zombie is not).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesized command name: "pid (comm) S ...".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return true
}

// run runs a PostgreSQL program as the system user, from /, with no PG*
// variables from this process's environment, and returns its output.
func (s *Server) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return s.runWith(ctx, nil, name, args...)
}

// runWith is run with more environment variables for the child.
func (s *Server) runWith(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = append(childEnv(), env...)
	cmd.SysProcAttr = s.user.sysProcAttr()
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

func childEnv() []string {
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

func outputSuffix(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return ""
	}
	return "\n" + string(out)
}

func tailSuffix(path, tail string) string {
	if tail == "" {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", path, tail)
}

// logTail returns the last n lines of the file at path, or "" if unreadable.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxTail = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > maxTail {
		if _, err := f.Seek(fi.Size()-maxTail, io.SeekStart); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
