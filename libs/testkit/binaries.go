package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// builtDirs are the directories BuiltBinary built into; Run removes them
// once the tests are over.
var builtDirs struct {
	sync.Mutex
	dirs []string
}

// removeBuilt removes the directories of the binaries built so far.
func removeBuilt() {
	builtDirs.Lock()
	defer builtDirs.Unlock()
	for _, d := range builtDirs.dirs {
		_ = os.RemoveAll(d)
	}
	builtDirs.dirs = nil
}

// BuiltBinary returns a function that builds cmd/<name> of this module once
// per test process (with the race detector if race: a process that races
// exits non-zero) and returns its path, in a directory every local VM's
// user may read (local VMs run as users of their own when tests run as
// root). The binaries it runs from beside itself are built there too, as
// `make build` has them: flotilla-node beside flotilla-agent.
func BuiltBinary(name string, race bool) func() (string, error) {
	return sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", name+"-bin")
		if err != nil {
			return "", err
		}
		builtDirs.Lock()
		builtDirs.dirs = append(builtDirs.dirs, dir)
		builtDirs.Unlock()
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", err
		}
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		if race {
			args = append(args, "-race")
		}
		for _, n := range append([]string{name}, besides[name]...) {
			args = append(args, "flotilla.dev/flotilla/cmd/"+n)
		}
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("build %s: %w\n%s", name, err, out)
		}
		return filepath.Join(dir, name), nil
	})
}

// besides names the binaries each one runs from beside itself.
var besides = map[string][]string{"flotilla-agent": {"flotilla-node"}}

// LocalRoot is a directory for the local provider's disks and VMs that
// every local VM's user can traverse. VMs outlive the manager that started
// them, as real ones do: the test stops them with local.KillAll.
func LocalRoot(tb testing.TB) string {
	tb.Helper()
	d := tb.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	return filepath.Join(d, "local")
}
