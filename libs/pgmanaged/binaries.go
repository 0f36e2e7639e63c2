package pgmanaged

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrBinariesNotFound is returned when no PostgreSQL server binaries
// (initdb, pg_ctl, postgres) can be found on the machine.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries not found: apt-get install postgresql")

// serverBinaries are the programs this package runs; a bin directory counts
// only if it has all of them (pg_config alone may come from libpq-dev).
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// debianBinGlob is where Debian and Ubuntu install each major version.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

// FindBinDir returns the directory holding the PostgreSQL server binaries:
// the one `pg_config --bindir` names when pg_config is on PATH and that
// directory has initdb, pg_ctl and postgres, else the newest
// /usr/lib/postgresql/<major>/bin that has them. It returns an error wrapping
// ErrBinariesNotFound when there is none.
func FindBinDir() (string, error) {
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		out, err := exec.Command(pgConfig, "--bindir").Output()
		if err == nil {
			dir := strings.TrimSpace(string(out))
			if hasServerBinaries(dir) {
				return dir, nil
			}
		}
	}
	dirs, err := filepath.Glob(debianBinGlob)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", debianBinGlob, err)
	}
	// Newest major version first: compare numerically, so 10 sorts above 9.
	slices.SortFunc(dirs, func(a, b string) int {
		return majorVersion(b) - majorVersion(a)
	})
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", ErrBinariesNotFound
}

// checkBinDir reports whether dir, given explicitly, has the server binaries.
func checkBinDir(dir string) error {
	if !hasServerBinaries(dir) {
		return fmt.Errorf("%w (looked in %s for %s)", ErrBinariesNotFound, dir, strings.Join(serverBinaries, ", "))
	}
	return nil
}

func hasServerBinaries(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// majorVersion extracts <major> from /usr/lib/postgresql/<major>/bin, or -1.
func majorVersion(binDir string) int {
	v, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return v
}
