package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrInUse is a data directory another process holds (Lock).
var ErrInUse = errors.New("the data directory is in use")

// LockFile is the file Lock holds, in the data directory's root.
func (d Dir) LockFile() string { return filepath.Join(string(d), "flotilla.lock") }

// Lock takes the data directory for this process alone until release is
// called or the process ends (an flock, which the kernel lets go of with
// the process: a killed holder leaves nothing to clean up). what names the
// holder in the file ("flotilla up"), for the refusal another process
// gets: ErrInUse naming the holder's pid and what. Held by `flotilla up`
// for its whole life, and by a command that starts the managed PostgreSQL
// while up does not run: two of them on one directory would start its
// PostgreSQL and NATS store twice, and the first to stop would stop the
// other's PostgreSQL.
func Lock(d Dir, what string) (release func(), err error) {
	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	f, err := os.OpenFile(d.LockFile(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		held, _ := os.ReadFile(d.LockFile())
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := strings.TrimSpace(string(held))
			if holder == "" {
				holder = "another process"
			}
			return nil, fmt.Errorf("%w: %s holds %s (%s): stop it first, or use another --data-dir", ErrInUse, holder, d, d.LockFile())
		}
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, %s\n", os.Getpid(), what)), 0)
	}
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}
