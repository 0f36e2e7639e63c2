package pgmanaged

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"flotilla.dev/flotilla/libs/filecopy"
)

// BaseBackup copies the running server's cluster into dest with
// pg_basebackup: a consistent copy taken while the server goes on serving,
// with the write-ahead log written meanwhile, on which PostgreSQL starts
// (replaying that log) as on a data directory of its own (Restore). The
// copy is checked with pg_verifybackup. dest must not exist: it is created
// for the system user that runs PostgreSQL, which writes the copy; its
// parent must be one that user can enter. On an error dest is removed.
func (s *Server) BaseBackup(ctx context.Context, dest string) error {
	st, err := s.Status(ctx)
	if err != nil {
		return err
	}
	if !st.Running {
		return fmt.Errorf("back up PostgreSQL: no server runs on %s", s.opts.Dir)
	}
	if err := os.Mkdir(dest, 0o700); err != nil {
		return fmt.Errorf("back up PostgreSQL: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dest)
		}
	}()
	if err := s.user.chown(dest); err != nil {
		return err
	}
	if err := s.user.checkTraversable(dest); err != nil {
		return err
	}
	// The password goes in the environment of the child alone (never its
	// arguments, which ps shows).
	out, err := s.runWith(ctx, []string{"PGPASSWORD=" + s.opts.Password}, "pg_basebackup",
		"--pgdata", dest, "--host", "127.0.0.1", "--port", strconv.Itoa(st.Port), "--username", Superuser, "--no-password",
		"--wal-method", "stream", "--checkpoint", "fast", "--no-sync")
	if err != nil {
		return fmt.Errorf("back up PostgreSQL: pg_basebackup: %w%s", err, outputSuffix(out))
	}
	if out, err := s.run(ctx, "pg_verifybackup", "--quiet", dest); err != nil {
		return fmt.Errorf("back up PostgreSQL: pg_verifybackup %s: %w%s", dest, err, outputSuffix(out))
	}
	if err := filecopy.Sync(dest); err != nil {
		return fmt.Errorf("back up PostgreSQL: %w", err)
	}
	ok = true
	return nil
}

// Restore makes Options.Dir, which must not exist or be empty, a copy of
// from, a BaseBackup, owned by the system user that runs PostgreSQL: Start
// then recovers the copy (replaying the log the backup holds) and serves it.
// On an error what was copied is removed.
func (s *Server) Restore(from string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := s.opts.Dir
	if _, err := os.Stat(filepath.Join(from, pgVersionFile)); err != nil {
		return fmt.Errorf("restore PostgreSQL: %s is not a copy of a PostgreSQL data directory: %w", from, err)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("restore PostgreSQL: %s is not empty", dir)
	}
	if err := filecopy.Tree(from, dir, s.user.chown); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("restore PostgreSQL: %w", err)
	}
	return s.user.checkTraversable(dir)
}

// VerifyBaseBackup checks a BaseBackup with pg_verifybackup: every file
// against its manifest, and the write-ahead log it needs.
func VerifyBaseBackup(ctx context.Context, dir string) error {
	_, err := runTool(ctx, nil, "pg_verifybackup", "--quiet", dir)
	return err
}

// VerifyDump checks that file is a whole Dump: pg_restore reads all of it
// (writing the SQL it would run nowhere), and it holds tables.
func VerifyDump(ctx context.Context, file string) error {
	out, err := runTool(ctx, nil, "pg_restore", "--list", file)
	if err != nil {
		return err
	}
	if !strings.Contains(string(out), " TABLE ") {
		return fmt.Errorf("pg_restore --list %s: it holds no table", file)
	}
	_, err = runTool(ctx, nil, "pg_restore", "--exit-on-error", "--file="+os.DevNull, file)
	return err
}

// Dump writes the database databaseURL names to file (which must not
// exist) with pg_dump, in its custom format: a consistent copy taken in
// one transaction while the database goes on serving. The password of a
// postgres:// URL is handed to pg_dump in its environment, never its
// arguments. On an error file is removed.
func Dump(ctx context.Context, databaseURL, file string) error {
	conn, env := hidePassword(databaseURL)
	if _, err := runTool(ctx, env, "pg_dump", "--format=custom", "--file="+file, "--no-password", "--dbname="+conn); err != nil {
		_ = os.Remove(file)
		return err
	}
	return filecopy.Sync(file)
}

// RestoreDump loads file, a Dump, into the database databaseURL names,
// which must hold no table yet, in one transaction (all or nothing),
// owned by the role connecting and without the dump's grants: whoever
// uses the database grants its own (Flotilla's services, to their role,
// at their start).
func RestoreDump(ctx context.Context, databaseURL, file string) error {
	conn, env := hidePassword(databaseURL)
	_, err := runTool(ctx, env, "pg_restore", "--exit-on-error", "--single-transaction",
		"--no-owner", "--no-privileges", "--no-password", "--dbname="+conn, file)
	return err
}

// runTool runs one of PostgreSQL's client programs as this process's
// user, with env added to its environment, and returns its output; an
// error names the program and ends with what it printed.
func runTool(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	cmd.Env = append(childEnv(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w%s", name, err, outputSuffix(out))
	}
	return out, nil
}

// hidePassword takes the password out of a postgres:// URL, returning the
// URL without it and the environment that carries it (PGPASSWORD). A
// key=value connection string is returned as it is.
func hidePassword(databaseURL string) (string, []string) {
	u, err := url.Parse(databaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.User == nil {
		return databaseURL, nil
	}
	pw, ok := u.User.Password()
	if !ok {
		return databaseURL, nil
	}
	u.User = url.User(u.User.Username())
	return u.String(), []string{"PGPASSWORD=" + pw}
}
