package pgmanaged

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

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
