package pgmanaged

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// osUser is the system account PostgreSQL commands run as.
type osUser struct {
	name string
	uid  int
	gid  int
	gids []int // every group, primary included
	// switching is true when the calling process (root) runs commands as
	// another user; false when it runs them as itself.
	switching bool
}

// defaultOSUser is "postgres" for root (PostgreSQL refuses to run as root),
// else the current user.
func defaultOSUser() (string, error) {
	if os.Geteuid() == 0 {
		return "postgres", nil
	}
	u, err := user.Current()
	if err != nil {
		return "", fmt.Errorf("look up current user: %w", err)
	}
	return u.Username, nil
}

func lookupOSUser(name string) (osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if name == "postgres" {
			return osUser{}, fmt.Errorf("look up system user %q (PostgreSQL cannot run as root; apt-get install postgresql creates it): %w", name, err)
		}
		return osUser{}, fmt.Errorf("look up system user %q: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return osUser{}, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return osUser{}, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	ou := osUser{name: name, uid: uid, gid: gid, gids: []int{gid}}
	if groups, err := u.GroupIds(); err == nil {
		for _, g := range groups {
			if n, err := strconv.Atoi(g); err == nil && !slices.Contains(ou.gids, n) {
				ou.gids = append(ou.gids, n)
			}
		}
	}
	euid := os.Geteuid()
	switch {
	case uid == euid:
		if uid == 0 {
			return osUser{}, errors.New("PostgreSQL cannot run as root: set OSUser to an unprivileged system user such as postgres")
		}
	case euid == 0:
		ou.switching = true
	default:
		return osUser{}, fmt.Errorf("running PostgreSQL as user %q needs root; this process runs as uid %d", name, euid)
	}
	return ou, nil
}

// sysProcAttr makes a child process run as the user when switching.
func (u osUser) sysProcAttr() *syscall.SysProcAttr {
	if !u.switching {
		return nil
	}
	groups := make([]uint32, len(u.gids))
	for i, g := range u.gids {
		groups[i] = uint32(g)
	}
	return &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: groups},
	}
}

// chown gives path to the user when switching; otherwise the user already
// owns what it creates.
func (u osUser) chown(path string) error {
	if !u.switching {
		return nil
	}
	if err := os.Chown(path, u.uid, u.gid); err != nil {
		return fmt.Errorf("give %s to user %s: %w", path, u.name, err)
	}
	return nil
}

// checkTraversable reports the first directory from / down to dir (included)
// that the user cannot enter. Only a switching caller needs this: a user
// running as itself already reached dir.
func (u osUser) checkTraversable(dir string) error {
	if !u.switching {
		return nil
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check access to %s: %w", p, err)
		}
		if !u.canEnter(fi) {
			return fmt.Errorf("directory %s (mode %v) cannot be entered by system user %s, which runs PostgreSQL: chmod o+x it or choose a directory elsewhere", p, fi.Mode().Perm(), u.name)
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

func (u osUser) canEnter(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // cannot tell; let PostgreSQL report it
	}
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == u.uid:
		return perm&0o100 != 0
	case slices.Contains(u.gids, int(st.Gid)):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// ownedBy reports whether path belongs to the user.
func (u osUser) ownedBy(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || int(st.Uid) == u.uid
}
