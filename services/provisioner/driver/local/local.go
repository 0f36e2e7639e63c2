// Package local is the "local" provider: a data disk is a directory under the
// data directory, and a VM is an agent process started on this host with its
// bootstrap and its disk. Agent processes run in their own session, so they
// outlive the manager like real VMs; after a restart the driver finds them
// again through their pid files instead of starting new ones.
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"flotilla.dev/flotilla/services/provisioner/driver"
)

// Name is the provider name.
const Name = "local"

var idRE = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// Config configures the local driver.
type Config struct {
	// Root is where disks/ and vms/ live (the data directory).
	Root string
	// AgentCommand starts an agent; the driver appends the bootstrap flags
	// (see agentArgs).
	AgentCommand []string
	Log          *slog.Logger
}

// Driver is the local provider.
type Driver struct {
	cfg Config
	mu  sync.Mutex // serialises launches and deletions
}

// New returns a local driver; it creates Root/disks and Root/vms.
func New(cfg Config) (*Driver, error) {
	if cfg.Root == "" || len(cfg.AgentCommand) == 0 || cfg.Log == nil {
		return nil, errors.New("local driver: Root, AgentCommand and Log are required")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("local driver: %w", err)
	}
	cfg.Root = root // the agent runs in its VM directory: every path it gets is absolute
	for _, d := range []string{"disks", "vms"} {
		if err := os.MkdirAll(filepath.Join(cfg.Root, d), 0o755); err != nil {
			return nil, fmt.Errorf("local driver: %w", err)
		}
	}
	return &Driver{cfg: cfg}, nil
}

// Name returns "local".
func (d *Driver) Name() string { return Name }

func (d *Driver) diskDir(id string) string { return filepath.Join(d.cfg.Root, "disks", id) }
func (d *Driver) vmDir(id string) string   { return filepath.Join(d.cfg.Root, "vms", id) }

func checkID(kind, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("local driver: %s id %q must be 1-64 lowercase letters, digits or '-'", kind, id)
	}
	return nil
}

// EnsureDisk creates the disk directory if it does not exist.
func (d *Driver) EnsureDisk(_ context.Context, spec driver.DiskSpec) (driver.Disk, error) {
	if err := checkID("disk", spec.ID); err != nil {
		return driver.Disk{}, err
	}
	if err := os.MkdirAll(d.diskDir(spec.ID), 0o755); err != nil {
		return driver.Disk{}, fmt.Errorf("allocate disk %s: %w", spec.ID, err)
	}
	return driver.Disk{ID: spec.ID, SizeGB: spec.SizeGB}, nil
}

// DeleteDisk removes the disk directory and everything on it.
func (d *Driver) DeleteDisk(_ context.Context, id string) error {
	if err := checkID("disk", id); err != nil {
		return err
	}
	if err := os.RemoveAll(d.diskDir(id)); err != nil {
		return fmt.Errorf("delete disk %s: %w", id, err)
	}
	return nil
}

// EnsureVM starts the agent process for the VM unless it already runs.
func (d *Driver) EnsureVM(_ context.Context, spec driver.VMSpec) (driver.VM, error) {
	if err := checkID("vm", spec.ID); err != nil {
		return driver.VM{}, err
	}
	if err := checkID("disk", spec.DiskID); err != nil {
		return driver.VM{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vm := driver.VM{ID: spec.ID, PrivateIP: "127.0.0.1", PrivateDNS: "localhost"}
	dir := d.vmDir(spec.ID)
	if pid, ok := d.running(spec.ID); ok {
		d.cfg.Log.Info("local VM already running; adopting it", "vm", spec.ID, "pid", pid)
		return vm, nil
	}
	if _, err := os.Stat(d.diskDir(spec.DiskID)); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: data disk %s: %w", spec.ID, spec.DiskID, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	files := map[string]string{"join-token": spec.Bootstrap.JoinToken, "ca.pem": spec.Bootstrap.CAPEM}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	defer logf.Close()
	args := append(append([]string{}, d.cfg.AgentCommand[1:]...), agentArgs(dir, d.diskDir(spec.DiskID), spec)...)
	cmd := exec.Command(d.cfg.AgentCommand[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	// Its own session: the agent (a "VM") outlives the manager.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: start agent: %w", spec.ID, err)
	}
	go func() { _ = cmd.Wait() }() // reap it while this manager lives
	if err := os.WriteFile(filepath.Join(dir, "agent.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	d.cfg.Log.Info("local VM launched", "vm", spec.ID, "pid", cmd.Process.Pid, "disk", spec.DiskID)
	return vm, nil
}

// agentArgs are the bootstrap flags of a local VM's agent.
func agentArgs(vmDir, diskDir string, spec driver.VMSpec) []string {
	return []string{
		"--gateway", spec.Bootstrap.GatewayAddr,
		"--ca-file", filepath.Join(vmDir, "ca.pem"),
		"--token-file", filepath.Join(vmDir, "join-token"),
		"--state-dir", filepath.Join(vmDir, "state"),
		"--data-dir", diskDir,
		"--data-disk-gb", strconv.Itoa(int(spec.DiskSizeGB)),
		"--vm-id", spec.ID,
		"--package-installer", "none",
	}
}

// running reports whether the VM's agent process is alive: its pid file names
// a live process whose command line carries the VM id.
func (d *Driver) running(id string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(d.vmDir(id), "agent.pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), id) {
		return 0, false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return 0, false
		}
	}
	return pid, true
}

// DeleteVM stops the agent (SIGTERM to its process group, SIGKILL after 15 s)
// and removes the VM directory; the disk stays.
func (d *Driver) DeleteVM(_ context.Context, id string) error {
	if err := checkID("vm", id); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if pid, ok := d.running(id); ok {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(15 * time.Second)
		for {
			if _, alive := d.running(id); !alive {
				break
			}
			if time.Now().After(deadline) {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				time.Sleep(200 * time.Millisecond)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		d.cfg.Log.Info("local VM stopped", "vm", id, "pid", pid)
	}
	if err := os.RemoveAll(d.vmDir(id)); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return nil
}

// Running reports whether a VM's agent process is alive (tests, diagnostics).
func (d *Driver) Running(id string) bool {
	_, ok := d.running(id)
	return ok
}
