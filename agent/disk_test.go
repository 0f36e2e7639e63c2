//go:build linux

package agent

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/testkit"
)

func probe(t *testing.T, dev string) map[string]string {
	t.Helper()
	tags, err := blkid(t.Context(), dev)
	if err != nil {
		t.Fatal(err)
	}
	return tags
}

func umount(t *testing.T, dir string) {
	t.Helper()
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", dir, err, out)
	}
}

// An empty disk is formatted and mounted; mounted again (the agent
// restarted, the VM rebooted, the disk re-attached to a new VM) it keeps
// what was written on it.
func TestAnEmptyDataDiskIsFormattedOnceAndMounted(t *testing.T) {
	t.Parallel()
	dev := testkit.LoopDevice(t, 64)
	dir := filepath.Join(t.TempDir(), "data")
	var said []string
	logf := func(format string, args ...any) { said = append(said, format) }
	ctx := t.Context()
	if err := mountDataDisk(ctx, []string{"/dev/disk/by-id/nvme-none", dev}, dir, time.Second, logf); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, dev); got["TYPE"] != "ext4" || got["LABEL"] != "flotilla-data" {
		t.Errorf("the empty disk was given %v; want ext4 labelled flotilla-data", got)
	}
	if ok, err := mountedAt(dev, dir); err != nil || !ok {
		t.Fatalf("mounted at %s: %v, %v", dir, ok, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kept"), []byte("on the disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Already mounted: nothing to do.
	if err := mountDataDisk(ctx, []string{dev}, dir, time.Second, logf); err != nil {
		t.Fatal(err)
	}
	umount(t, dir)
	if _, err := os.Stat(filepath.Join(dir, "kept")); !os.IsNotExist(err) {
		t.Fatalf("the file is in %s with the disk unmounted: it was not written on the disk (%v)", dir, err)
	}
	if err := mountDataDisk(ctx, []string{dev}, dir, time.Second, logf); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(b) != "on the disk" {
		t.Errorf("after mounting again: %q, %v; want the file written before (the disk was formatted again?)", b, err)
	}
	formatted := 0
	for _, s := range said {
		if strings.Contains(s, "making an") {
			formatted++
		}
	}
	if formatted != 1 {
		t.Errorf("formatted %d times, want once: %q", formatted, said)
	}
}

// A disk with a file system of its own is mounted as it is.
func TestADataDiskWithAFileSystemIsMountedAsItIs(t *testing.T) {
	t.Parallel()
	dev := testkit.LoopDevice(t, 64)
	if out, err := exec.Command("mkfs.ext4", "-q", "-L", "operators", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := mountDataDisk(t.Context(), []string{dev}, dir, time.Second, func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, dev); got["LABEL"] != "operators" {
		t.Errorf("label %q; the disk was formatted again", got["LABEL"])
	}
	if _, err := os.Stat(filepath.Join(dir, "lost+found")); err != nil {
		t.Errorf("the disk's file system is not at %s: %v", dir, err)
	}
}

// A disk with a partition table is never formatted, nor mounted whole.
func TestAPartitionedDataDiskIsRefused(t *testing.T) {
	t.Parallel()
	dev := testkit.LoopDevice(t, 16)
	// An MBR with one Linux partition from sector 2048 on.
	var mbr [512]byte
	entry := mbr[446:462]
	entry[4] = 0x83
	binary.LittleEndian.PutUint32(entry[8:], 2048)
	binary.LittleEndian.PutUint32(entry[12:], 16<<11-2048)
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(mbr[:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data")
	err = mountDataDisk(t.Context(), []string{dev}, dir, time.Second, func(string, ...any) {})
	if err == nil || !strings.Contains(err.Error(), "--data-device: ") || !strings.Contains(err.Error(), "partition table") {
		t.Fatalf("mounting a partitioned disk: %v; want refused, naming --data-device and the partition table", err)
	}
	if got := probe(t, dev); got["TYPE"] != "" || got["PTTYPE"] != "dos" {
		t.Errorf("the disk now probes as %v; want its partition table untouched", got)
	}
}

// A device that never appears, or is not a block device, is named.
func TestAMissingOrWrongDataDeviceIsNamed(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	start := time.Now()
	err := mountDataDisk(t.Context(), []string{"/dev/flotilla-no-such-disk"}, dir, 1500*time.Millisecond, func(string, ...any) {})
	if err == nil || !strings.Contains(err.Error(), "--data-device: none of /dev/flotilla-no-such-disk appeared within 1.5s") {
		t.Errorf("a missing device: %v", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("gave up after %s without waiting for the device", waited)
	}
	err = mountDataDisk(t.Context(), []string{"/dev/null"}, dir, time.Second, func(string, ...any) {})
	if err == nil || !strings.Contains(err.Error(), "/dev/null is not a block device") {
		t.Errorf("a character device: %v", err)
	}
}
