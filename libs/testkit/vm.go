package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// VMPath is a PATH of the few tools a cloud VM's user data needs (sh,
// curl, sha256sum, coreutils) and not systemctl: a test that runs the
// script plays a VM without systemd, whatever this machine has.
func VMPath(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	for _, tool := range []string{"sh", "curl", "sha256sum", "cut", "mkdir", "chmod", "rm", "mv", "dirname", "sleep", "nohup"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			tb.Fatalf("testkit: %s is needed to play a VM: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}
