package pgmanaged_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"flotilla.dev/flotilla/libs/pgmanaged"
)

// TestABaseBackupTakenWhileWritingStartsElsewhere: a backup taken while
// rows are being written restores into a new directory, and a server
// started there (on another port) holds every row committed before the
// backup began; the original goes on serving.
func TestABaseBackupTakenWhileWritingStartsElsewhere(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts, srv := runningServer(t)
	conn := connect(t, srv.URL())
	if _, err := conn.Exec(ctx, "CREATE TABLE ships (n int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO ships SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	writer := connect(t, srv.URL())
	var written atomic.Int64
	written.Store(1000)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for n := 1001; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := writer.Exec(ctx, "INSERT INTO ships VALUES ($1)", n); err != nil {
				done <- err
				return
			}
			written.Store(int64(n))
		}
	}()

	backup := filepath.Join(filepath.Dir(opts.Dir), "backup")
	err := srv.BaseBackup(ctx, backup)
	close(stop)
	if werr := <-done; werr != nil {
		t.Fatalf("writes during the backup: %v", werr)
	}
	if err != nil {
		t.Fatal(err)
	}

	again := opts
	again.Dir, again.Port = filepath.Join(baseDir(t), "restored"), freePort(t)
	restored, err := pgmanaged.New(again)
	if err != nil {
		t.Fatal(err)
	}
	if err := restored.Restore(backup); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = restored.Stop(t.Context()) })
	if err := restored.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var count, maxN int
	if err := connect(t, restored.URL()).QueryRow(ctx, "SELECT count(*), max(n) FROM ships").Scan(&count, &maxN); err != nil {
		t.Fatal(err)
	}
	if count < 1000 || count != maxN || int64(maxN) > written.Load() {
		t.Fatalf("restored %d rows up to %d; 1000 were there before the backup, %d written by its end", count, maxN, written.Load())
	}
	if _, err := conn.Exec(ctx, "INSERT INTO ships VALUES (-1)"); err != nil {
		t.Fatalf("the original after the backup: %v", err)
	}
}

// TestABaseBackupNeedsARunningServerAndANewDirectory: the errors say what
// is wrong, and leave nothing behind.
func TestABaseBackupNeedsARunningServerAndANewDirectory(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts := testOptions(t)
	srv := initServer(t, opts)
	backup := filepath.Join(filepath.Dir(opts.Dir), "backup")
	if err := srv.BaseBackup(ctx, backup); err == nil || !strings.Contains(err.Error(), "no server runs") {
		t.Fatalf("backup of a stopped server: %v", err)
	}
	if _, err := os.Stat(backup); !os.IsNotExist(err) {
		t.Fatalf("a failed backup left %s: %v", backup, err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(backup, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := srv.BaseBackup(ctx, backup); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("backup into an existing directory: %v", err)
	}
	if err := srv.Restore(backup); err == nil || !strings.Contains(err.Error(), "not a copy of a PostgreSQL data directory") {
		t.Fatalf("restore from an empty directory: %v", err)
	}
}

// TestADumpLoadsIntoAnotherServerOnce: a dump of a serving database loads
// into an empty one elsewhere, all of it; loaded again, it is refused and
// changes nothing.
func TestADumpLoadsIntoAnotherServerOnce(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, from := runningServer(t)
	_, to := runningServer(t)
	src := connect(t, from.URL())
	for _, q := range []string{"CREATE TABLE ships (n int PRIMARY KEY)", "INSERT INTO ships SELECT generate_series(1, 500)"} {
		if _, err := src.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "flotilla.dump")
	if err := pgmanaged.Dump(ctx, from.URL(), file); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.RestoreDump(ctx, to.URL(), file); err != nil {
		t.Fatal(err)
	}
	dst := connect(t, to.URL())
	var n int
	if err := dst.QueryRow(ctx, "SELECT count(*) FROM ships").Scan(&n); err != nil || n != 500 {
		t.Fatalf("restored %d rows (%v), want 500", n, err)
	}
	if _, err := dst.Exec(ctx, "INSERT INTO ships VALUES (-1)"); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.RestoreDump(ctx, to.URL(), file); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("a second load: %v", err)
	}
	if err := dst.QueryRow(ctx, "SELECT count(*) FROM ships").Scan(&n); err != nil || n != 501 {
		t.Fatalf("after a refused load: %d rows (%v), want 501", n, err)
	}
}

// TestVerifyFindsACopyCutShort: a base backup and a dump verify whole;
// cut short, each is refused.
func TestVerifyFindsACopyCutShort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	opts, srv := runningServer(t)
	if _, err := connect(t, srv.URL()).Exec(ctx, "CREATE TABLE ships AS SELECT n, repeat('x', 200) AS s FROM generate_series(1, 20000) n"); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(filepath.Dir(opts.Dir), "base")
	dump := filepath.Join(t.TempDir(), "flotilla.dump")
	if err := srv.BaseBackup(ctx, base); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.Dump(ctx, srv.URL(), dump); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.VerifyBaseBackup(ctx, base); err != nil {
		t.Errorf("a whole base backup: %v", err)
	}
	if err := pgmanaged.VerifyDump(ctx, dump); err != nil {
		t.Errorf("a whole dump: %v", err)
	}
	fi, err := os.Stat(dump)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dump, fi.Size()*3/4); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.VerifyDump(ctx, dump); err == nil {
		t.Error("a dump cut short verified")
	}
	if err := os.Truncate(filepath.Join(base, "PG_VERSION"), 0); err != nil {
		t.Fatal(err)
	}
	if err := pgmanaged.VerifyBaseBackup(ctx, base); err == nil {
		t.Error("a base backup with a file changed verified")
	}
}

// runningServer initializes and starts a server for the test, stopped
// when it ends.
func runningServer(t *testing.T) (pgmanaged.Options, *pgmanaged.Server) {
	t.Helper()
	opts := testOptions(t)
	srv := initServer(t, opts)
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return opts, srv
}
