//go:build unix

package agentsim

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit makes sure this process may hold want open files: it
// lifts the soft limit to the hard one and, when that is too low and the
// process may (root may), the hard limit too. It says so when the limit
// stays below want: past it, connections fail to open and the agents
// beyond the limit never connect.
func RaiseFileLimit(want uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= want {
		return nil
	}
	if l.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return nil
		}
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur < want {
		return fmt.Errorf("open files: the limit is %d, below the %d wanted", l.Cur, want)
	}
	return nil
}
