// Package local is the "local" provider: a data disk is a directory under the
// data directory, and a VM is an agent process started on this host with its
// bootstrap and its disk. Agent processes run in their own session, so they
// outlive the manager like real VMs; after a restart the driver finds them
// again through their pid files instead of starting new ones.
//
// When the manager runs as root, every data disk gets a user id of its own
// (from FirstVMUID up, no account needed), owns its directory (0700), and
// the agent of a VM on that disk, with everything it starts, runs as that
// user with a minimal environment: it can reach its disk and its VM
// directory, and nothing of the manager's (settings, CA and master keys,
// bus credentials) or another VM's. Without root that is impossible, and
// New says so.
package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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

// FirstVMUID is the first user id given to a local data disk when the
// manager runs as root: far above the ranges distributions and subordinate
// id maps use.
const FirstVMUID = 2_000_000

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
	mu  sync.Mutex // serialises disk and VM creation and deletion
	// isolate runs each disk's VM as the disk's own user (the manager is root).
	isolate bool
}

// New returns a local driver; it creates Root/disks and Root/vms.
func New(cfg Config) (*Driver, error) {
	return newWithEUID(cfg, os.Geteuid())
}

func newWithEUID(cfg Config, euid int) (*Driver, error) {
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
	d := &Driver{cfg: cfg, isolate: euid == 0}
	if !d.isolate {
		cfg.Log.Warn("local VMs are not isolated from the manager: they run as its user and can read its data directory; run Flotilla as root to give each data disk a user of its own")
	}
	return d, nil
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

// EnsureDisk creates the disk directory (0700) if it does not exist; as
// root it gives the disk a user id of its own, which owns it.
func (d *Driver) EnsureDisk(_ context.Context, spec driver.DiskSpec) (driver.Disk, error) {
	if err := checkID("disk", spec.ID); err != nil {
		return driver.Disk{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	dir := d.diskDir(spec.ID)
	if _, err := os.Stat(dir); err == nil {
		return driver.Disk{ID: spec.ID, SizeGB: spec.SizeGB}, nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return driver.Disk{}, fmt.Errorf("allocate disk %s: %w", spec.ID, err)
	}
	if d.isolate {
		uid, err := d.freeUID()
		if err == nil {
			err = os.Chown(dir, uid, uid)
		}
		if err != nil {
			_ = os.Remove(dir)
			return driver.Disk{}, fmt.Errorf("allocate disk %s: %w", spec.ID, err)
		}
	}
	return driver.Disk{ID: spec.ID, SizeGB: spec.SizeGB}, nil
}

// freeUID claims a user id no disk has had: from one above the highest in
// use, the first whose claim (the directory Root/uids/<uid>) this process
// creates. Creating a directory is atomic, so provisioner processes sharing
// a root (a cluster's hosts on one machine) never give two disks one user;
// claims are kept, so no new disk gets an old disk's user either.
func (d *Driver) freeUID() (int, error) {
	entries, err := os.ReadDir(filepath.Join(d.cfg.Root, "disks"))
	if err != nil {
		return 0, err
	}
	next := FirstVMUID
	for _, e := range entries {
		if uid, ok := d.owner(d.diskDir(e.Name())); ok && uid >= next {
			next = uid + 1
		}
	}
	claims := filepath.Join(d.cfg.Root, "uids")
	if err := os.MkdirAll(claims, 0o700); err != nil {
		return 0, err
	}
	for uid := next; ; uid++ {
		err := os.Mkdir(filepath.Join(claims, strconv.Itoa(uid)), 0o700)
		if err == nil {
			return uid, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("claim user id %d: %w", uid, err)
		}
	}
}

// adopt gives a disk a user of its own and hands it everything on it.
func (d *Driver) adopt(diskID string) (int, error) {
	uid, err := d.freeUID()
	if err != nil {
		return 0, err
	}
	dir := d.diskDir(diskID)
	err = filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, uid)
	})
	if err == nil {
		err = os.Chmod(dir, 0o700)
	}
	if err != nil {
		return 0, fmt.Errorf("give disk %s its own user: %w", diskID, err)
	}
	d.cfg.Log.Info("local disk given a user of its own", "disk", diskID, "uid", uid)
	return uid, nil
}

// owner returns the user id owning path.
func (d *Driver) owner(path string) (int, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
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
		if _, recorded := agentPID(dir, spec.ID); !recorded {
			// Its manager was killed before it wrote the pid file.
			_ = os.WriteFile(filepath.Join(dir, "agent.pid"), []byte(strconv.Itoa(pid)), 0o600)
		}
		return vm, nil
	}
	diskUID, ok := d.owner(d.diskDir(spec.DiskID))
	if !ok {
		return driver.VM{}, fmt.Errorf("launch vm %s: data disk %s does not exist", spec.ID, spec.DiskID)
	}
	if d.isolate && diskUID < FirstVMUID {
		// A disk made before VMs were isolated (or by a manager that was not
		// root) gets its user now, with everything on it.
		var err error
		if diskUID, err = d.adopt(spec.DiskID); err != nil {
			return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	files := map[string]string{"join-token": spec.Bootstrap.JoinToken, "ca.pem": spec.Bootstrap.CAPEM}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
		}
	}
	if d.isolate {
		// The VM's user owns its directory, bootstrap and state.
		for _, p := range []string{dir, filepath.Join(dir, "state"), filepath.Join(dir, "join-token"), filepath.Join(dir, "ca.pem")} {
			if err := os.Chown(p, diskUID, diskUID); err != nil {
				return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
			}
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
	// Nothing of the manager's environment: a VM starts clean.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + d.diskDir(spec.DiskID), "LANG=C.UTF-8"}
	// Its own session: the agent (a "VM") outlives the manager.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if d.isolate {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(diskUID), Gid: uint32(diskUID), Groups: []uint32{}}
	}
	if err := start(cmd); err != nil {
		return driver.VM{}, fmt.Errorf("launch vm %s: start agent: %w", spec.ID, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "agent.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return driver.VM{}, fmt.Errorf("launch vm %s: %w", spec.ID, err)
	}
	d.cfg.Log.Info("local VM launched", "vm", spec.ID, "pid", cmd.Process.Pid, "disk", spec.DiskID, "isolated", d.isolate, "uid", diskUID)
	return vm, nil
}

// start starts cmd, reaps it while this manager lives, and returns once its
// exec is through. Until then the kernel shows the process with an empty
// command line, by which running would take the VM for gone (and a second
// EnsureVM start another); cmd.Start may return before that.
func start(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	cmdline := fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		select {
		case <-exited:
			return nil
		default:
		}
		if b, err := os.ReadFile(cmdline); err != nil || len(b) > 0 {
			return nil
		}
	}
	return nil
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

// running reports whether the VM's agent process is alive: the one its
// pid file names, or else one started for the VM and never recorded (its
// manager was killed after starting it and before writing its pid file:
// the next manager must adopt it, not start a second agent on the disk).
func (d *Driver) running(id string) (int, bool) {
	if pid, ok := agentPID(d.vmDir(id), id); ok {
		return pid, true
	}
	if pids := agentsOf(d.vmDir(id), id); len(pids) > 0 {
		return pids[0], true
	}
	return 0, false
}

// agentsOf lists the live processes started for the VM id in dir: their
// command line has "--vm-id id" (or "--vm-id=id": an agent that upgraded
// itself runs again with its flags so) and their working directory is dir.
func agentsOf(dir, id string) []int {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	return agentsWhere([]string{"\x00--vm-id\x00" + id + "\x00", "\x00--vm-id=" + id + "\x00"}, func(cwd string) bool { return cwd == abs })
}

// agentsWhere lists the live processes whose command line contains one of
// args and whose working directory passes in, leaving out their own
// children: a process an agent forks has its command line and working
// directory until it execs another program, and is that agent's, not a
// second one.
func agentsWhere(args []string, in func(cwd string) bool) []int {
	parents := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !slices.ContainsFunc(args, func(arg string) bool { return strings.Contains(string(b), arg) }) {
			continue
		}
		state, ppid := procStat(pid)
		if state == "" || state == "Z" {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && in(cwd) {
			parents[pid] = ppid
		}
	}
	var pids []int
	for pid, ppid := range parents {
		if _, forked := parents[ppid]; !forked {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// zombie reports whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	state, _ := procStat(pid)
	return state == "Z"
}

// procStat reads a process's state ("Z": exited, waiting to be reaped) and
// its parent's pid; "" when it is gone.
func procStat(pid int) (state string, ppid int) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 2 {
		return "", 0
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0], ppid
}

// agentPID reads a VM's agent pid from its pid file, if that names a live
// process whose command line carries the VM id: a pid on its own may have
// been given to another process since.
func agentPID(dir, id string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "agent.pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), id) || zombie(pid) {
		return 0, false
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
	// Every agent of the VM: the pid file's, and one a killed manager
	// started without recording it.
	var stopped []int
	deadline := time.Now().Add(15 * time.Second)
	for pid, alive := d.running(id); alive; pid, alive = d.running(id) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			time.Sleep(200 * time.Millisecond)
			if deadline.Add(time.Second).Before(time.Now()) {
				break
			}
			continue
		}
		if !slices.Contains(stopped, pid) {
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			stopped = append(stopped, pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range stopped {
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

// KillAll SIGKILLs the process group of every VM under root whose agent
// still runs, and no other: VMs outlive the manager that started them, as
// real ones do, so a test must stop them. The agents are found by their
// working directory under root's VMs (even one since removed), not by
// their pid files: a manager killed before writing one leaves an agent
// that none names, and one left by a VM that stopped may name a pid given
// since to another process.
func KillAll(root string) {
	vms, err := filepath.Abs(filepath.Join(root, "vms"))
	if err != nil {
		return
	}
	for _, pid := range agentsWhere([]string{"\x00--vm-id\x00", "\x00--vm-id="}, func(cwd string) bool { return strings.HasPrefix(cwd, vms+"/") }) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}
