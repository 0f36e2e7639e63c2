//go:build linux

package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// dataFSType is the file system an empty data disk is given.
const dataFSType = "ext4"

// mountDataDisk makes the data device the file system at dir: it waits for
// one of devices to exist (the first found wins: a cloud names one disk
// several ways), formats it only when it holds nothing at all (no file
// system, no partition table), and mounts it at dir unless it is mounted
// there already. A disk that holds something is never formatted: a
// partition table, or a file system the agent does not mount, is an error.
func mountDataDisk(ctx context.Context, devices []string, dir string, wait time.Duration, logf func(string, ...any)) error {
	dev, err := waitForDevice(ctx, devices, wait)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	mounted, err := mountedAt(dev, dir)
	if err != nil {
		return err
	}
	if mounted {
		logf("data disk %s is mounted at %s", dev, dir)
		return nil
	}
	probe, err := blkid(ctx, dev)
	if err != nil {
		return err
	}
	fsType := probe["TYPE"]
	switch {
	case probe["PTTYPE"] != "":
		return fmt.Errorf("--data-device: %s holds a %s partition table: not formatting it, and not mounting a whole partitioned disk", dev, probe["PTTYPE"])
	case fsType == "":
		logf("data disk %s is empty: making an %s file system", dev, dataFSType)
		if out, err := exec.CommandContext(ctx, "mkfs."+dataFSType, "-q", "-L", "flotilla-data", dev).CombinedOutput(); err != nil {
			return fmt.Errorf("--data-device: format %s: %v: %s", dev, err, bytes.TrimSpace(out))
		}
		fsType = dataFSType
	case probe["USAGE"] != "" && probe["USAGE"] != "filesystem":
		return fmt.Errorf("--data-device: %s holds %s (%s), not a file system: not formatting it", dev, fsType, probe["USAGE"])
	}
	if out, err := exec.CommandContext(ctx, "mount", "-t", fsType, dev, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("--data-device: mount %s at %s: %v: %s", dev, dir, err, bytes.TrimSpace(out))
	}
	logf("data disk %s (%s) mounted at %s", dev, fsType, dir)
	return nil
}

// waitForDevice returns the first of devices that is a block device,
// looking again every second for up to wait.
func waitForDevice(ctx context.Context, devices []string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		for _, d := range devices {
			real, err := filepath.EvalSymlinks(d)
			if err != nil {
				continue
			}
			st, err := os.Stat(real)
			if err != nil {
				continue
			}
			if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
				return "", fmt.Errorf("--data-device: %s is not a block device", d)
			}
			return real, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("--data-device: none of %s appeared within %s", strings.Join(devices, ", "), wait)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// blkid probes dev for a file system or partition table: the tags blkid
// reports (TYPE, USAGE, PTTYPE, ...), none for a device holding nothing.
func blkid(ctx context.Context, dev string) (map[string]string, error) {
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return map[string]string{}, nil // nothing found
	}
	if err != nil {
		return nil, fmt.Errorf("--data-device: probe %s with blkid: %w", dev, err)
	}
	tags := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			tags[k] = v
		}
	}
	return tags, nil
}

// mountedAt reports whether dev's file system is mounted at dir, from the
// device numbers in /proc/self/mountinfo. Another file system mounted at
// dir is an error: the agent does not stack mounts.
func mountedAt(dev, dir string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return false, fmt.Errorf("--data-device: %w", err)
	}
	want := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, fmt.Errorf("--data-dir: %w", err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read the mount table: %w", err)
	}
	for line := range strings.Lines(string(info)) {
		// id parent major:minor root mountpoint options ...
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMount(f[4]) != abs {
			continue
		}
		if f[2] != want {
			return false, fmt.Errorf("--data-dir: %s is already the mount point of device %s, not of %s", abs, f[2], dev)
		}
		return true, nil
	}
	return false, nil
}

// unescapeMount undoes mountinfo's octal escapes of space, tab, newline
// and backslash.
func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
