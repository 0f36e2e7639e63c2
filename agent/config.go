package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults of the optional settings.
const (
	DefaultPackageInstaller  = "apt-get install -y"
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultLogBufferLines    = 10000
	// DefaultDataDeviceWait is how long the agent waits for its data
	// device to appear: a cloud attaches the disk while the VM boots,
	// sometimes after.
	DefaultDataDeviceWait = 5 * time.Minute
	// NoPackageInstaller is the PackageInstaller that installs nothing: it
	// logs the packages it would install (the local provider uses it).
	NoPackageInstaller = "none"
)

// Version is the agent version reported in hello and heartbeats when
// Config.Version is empty; set at build time with
// -ldflags "-X flotilla.dev/flotilla/agent.Version=...".
var Version = "0.1.0-dev"

// Config is every setting of the agent. Validate reports every problem at
// once, naming the command-line flag.
type Config struct {
	// GatewayAddr is the agent gateway's host:port (--gateway). The host is
	// the name the gateway's certificate must carry.
	GatewayAddr string
	// CAFile is the fleet CA bundle, PEM (--ca-file): the gateway's
	// certificate must chain to it.
	CAFile string
	// TokenFile holds the one-time join token (--token-file); Token is the
	// token itself (--token). One of them is needed only while the agent has
	// no valid certificate.
	TokenFile string
	Token     string
	// StateDir is where the agent keeps its key, certificate and state file
	// (--state-dir); created with mode 0700. It belongs to the VM: a
	// re-provisioned VM starts with an empty one and runs setup again.
	StateDir string
	// DataDir is the data disk's root (--data-dir): scripts run there, file
	// paths are relative to it, and its usage is reported.
	DataDir string
	// DataDiskGB is the data disk's size in GiB (--data-disk-gb).
	DataDiskGB int
	// DataDevices are the names the data disk's block device may have
	// (--data-device, repeated; a cloud names one disk several ways). When
	// given, the agent waits for the first to appear, formats it if it holds
	// nothing at all, and mounts it at DataDir before anything else.
	DataDevices []string
	// DataDeviceWait bounds that wait (--data-device-wait); 0 means
	// DefaultDataDeviceWait.
	DataDeviceWait time.Duration
	// VMID is the provider's id of the VM the agent runs on (--vm-id).
	VMID string
	// NodeBinary is the command that runs the node software (--node-binary,
	// one flag per word); the agent appends --listen, --instance-name and,
	// for HTTPS, --cert-file and --key-file. Empty means flotilla-node
	// beside this executable, or else its node command: [os.Executable(),
	// "node"].
	NodeBinary []string
	// PackageInstaller is the command that installs packages, followed by
	// the package names (--package-installer); NoPackageInstaller ("none")
	// only logs them. Empty means DefaultPackageInstaller.
	PackageInstaller string
	// HeartbeatInterval is how often a heartbeat is sent
	// (--heartbeat-interval); 0 means DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// LogBufferLines is how many log lines are kept until the gateway
	// acknowledges them (--log-buffer-lines); a program writing more waits.
	// 0 means DefaultLogBufferLines.
	LogBufferLines int
	// Version is the agent version reported to the gateway; empty means
	// the package's Version.
	Version string
	// Args are the flags the agent was started with, as arguments (the
	// command sets them): an upgrade checks that the new binary takes
	// them, since it is started with them (Exec).
	Args []string
	// UpgradeFailed, set by RunUpgrading when the binary this agent stopped
	// to be replaced by could not be started, is reported as the upgrade's
	// failure once the stream is back.
	UpgradeFailed string
	// Log receives the agent's own log (also sent to the instance's logs);
	// nil means text on standard error.
	Log *slog.Logger
}

// Validate reports every missing or malformed setting at once, each
// naming its flag.
func (c Config) Validate() error {
	var errs []error
	if c.GatewayAddr == "" {
		errs = append(errs, errors.New("--gateway: is required"))
	} else if host, port, err := net.SplitHostPort(c.GatewayAddr); err != nil || host == "" || port == "" {
		errs = append(errs, fmt.Errorf("--gateway: %q is not host:port", c.GatewayAddr))
	}
	if c.CAFile == "" {
		errs = append(errs, errors.New("--ca-file: is required"))
	}
	if c.TokenFile != "" && c.Token != "" {
		errs = append(errs, errors.New("--token, --token-file: give one of them, not both"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir: is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir: is required"))
	}
	if c.DataDiskGB <= 0 {
		errs = append(errs, fmt.Errorf("--data-disk-gb: must be at least 1, got %d", c.DataDiskGB))
	}
	for _, d := range c.DataDevices {
		if !strings.HasPrefix(d, "/") {
			errs = append(errs, fmt.Errorf("--data-device: %q is not an absolute path", d))
		}
	}
	if c.DataDeviceWait < 0 {
		errs = append(errs, fmt.Errorf("--data-device-wait: must be positive, got %s", c.DataDeviceWait))
	}
	if c.VMID == "" {
		errs = append(errs, errors.New("--vm-id: is required"))
	}
	if len(c.NodeBinary) > 0 && c.NodeBinary[0] == "" {
		errs = append(errs, errors.New("--node-binary: the first word (the program) is empty"))
	}
	if c.HeartbeatInterval < 0 {
		errs = append(errs, fmt.Errorf("--heartbeat-interval: must be positive, got %s", c.HeartbeatInterval))
	}
	if c.LogBufferLines < 0 {
		errs = append(errs, fmt.Errorf("--log-buffer-lines: must be positive, got %d", c.LogBufferLines))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every empty optional setting filled in.
func (c Config) withDefaults() (Config, error) {
	if len(c.NodeBinary) == 0 {
		var err error
		if c.NodeBinary, err = defaultNodeBinary(); err != nil {
			return c, err
		}
	}
	if c.PackageInstaller == "" {
		c.PackageInstaller = DefaultPackageInstaller
	}
	if c.DataDeviceWait == 0 {
		c.DataDeviceWait = DefaultDataDeviceWait
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.LogBufferLines == 0 {
		c.LogBufferLines = DefaultLogBufferLines
	}
	if c.Version == "" {
		c.Version = Version
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return c, nil
}

// defaultNodeBinary is the node software when --node-binary is not given:
// flotilla-node beside this executable, a small binary that starts in less
// than half the agent's CPU time and a third of its memory; or else this
// executable's own node command, after words (its command path).
func defaultNodeBinary(words ...string) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("--node-binary: not given, and this executable's path is unknown: %w", err)
	}
	return nodeBinaryOf(exe, words...), nil
}

// nodeBinaryOf is defaultNodeBinary for the executable exe.
func nodeBinaryOf(exe string, words ...string) []string {
	if beside := filepath.Join(filepath.Dir(exe), "flotilla-node"); isExecutable(beside) {
		return []string{beside}
	}
	return append(append([]string{exe}, words...), "node")
}

// isExecutable reports whether path is a regular file someone may run.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
