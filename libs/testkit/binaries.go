package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BuiltBinary returns a function that builds cmd/<name> of this module once
// per test process (with the race detector if race: a process that races
// exits non-zero) and returns its path, in a directory every local VM's
// user may read (local VMs run as users of their own when tests run as
// root).
func BuiltBinary(name string, race bool) func() (string, error) {
	return sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", name+"-bin")
		if err != nil {
			return "", err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", err
		}
		bin := filepath.Join(dir, name)
		args := []string{"build", "-o", bin}
		if race {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "flotilla.dev/flotilla/cmd/"+name)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("build %s: %w\n%s", name, err, out)
		}
		return bin, nil
	})
}

// LocalRoot is a directory for the local provider's disks and VMs that
// every local VM's user can traverse; the VMs started under it are killed
// when the test ends.
func LocalRoot(tb testing.TB) string {
	tb.Helper()
	d := tb.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	root := filepath.Join(d, "local")
	tb.Cleanup(func() { KillLocalVMs(root) })
	return root
}
