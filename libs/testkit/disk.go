package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// LoopDevice is a block device backed by a sparse file of sizeMB MiB: a
// data disk a test can format and mount. When the test ends it is
// unmounted from wherever it was mounted and detached. It needs root, as
// formatting and mounting a disk do; without it the test fails saying so.
func LoopDevice(tb testing.TB, sizeMB int64) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("testkit: this test formats and mounts a loop device: run it as root (CI does)")
	}
	img := filepath.Join(tb.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(sizeMB << 20); err != nil {
		tb.Fatal(err)
	}
	_ = f.Close()
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		tb.Fatalf("testkit: losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	tb.Cleanup(func() {
		_ = exec.Command("umount", "--all-targets", "--lazy", dev).Run()
		_ = exec.Command("losetup", "--detach", dev).Run()
	})
	return dev
}
