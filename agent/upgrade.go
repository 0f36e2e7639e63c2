package agent

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/filecopy"
)

// Limits of an upgrade.
const (
	// upgradeDownloadTimeout bounds the download of the new binary.
	upgradeDownloadTimeout = 5 * time.Minute
	// upgradeMaxBytes bounds its size.
	upgradeMaxBytes = 512 << 20
	// upgradeCheckTimeout bounds the new binary's `--version`.
	upgradeCheckTimeout = 30 * time.Second
)

// agentBinaryName is the name the agent is installed under on a cloud VM:
// an executable of another name (`flotilla agent`) is never overwritten.
const agentBinaryName = "flotilla-agent"

// Upgraded is what Run returns when the agent stopped to be replaced
// (agent.v1.UpgradeAgent): the caller executes Binary in its place with
// the same settings (Exec).
type Upgraded struct {
	Binary, Version string
}

func (u *Upgraded) Error() string {
	return fmt.Sprintf("the agent stopped to restart as %s (version %s)", u.Binary, u.Version)
}

// upgradeAgent makes the agent binary of u.Version ready (installBinary),
// then has Run stop (node software, stream) and return Upgraded. A failure
// is reported and leaves this agent running as it was.
func (a *agent) upgradeAgent(ctx context.Context, id string, u *agentv1.UpgradeAgent) {
	cmdID := a.instanceCommandID(a.state.Get())
	if u.GetVersion() == a.cfg.Version {
		a.logf(ctx, "command %s: the agent is at version %s already", id, u.GetVersion())
		return
	}
	a.progress(ctx, cmdID, vocab.StepUpgradingAgent, vocab.ProgressStarted, fmt.Sprintf("from %s to %s", a.cfg.Version, u.GetVersion()), 0)
	bin, err := a.installBinary(ctx, u)
	if err != nil {
		a.progress(ctx, cmdID, vocab.StepUpgradingAgent, vocab.ProgressFailed, fmt.Sprintf("version %s: %v; version %s runs on", u.GetVersion(), err, a.cfg.Version), 0)
		return
	}
	a.progress(ctx, cmdID, vocab.StepUpgradingAgent, vocab.ProgressSucceeded,
		fmt.Sprintf("version %s is %s; stopping the node software and restarting as it", u.GetVersion(), bin), 0)
	a.upgradeOnce.Do(func() {
		a.upgradeTo.Store(&Upgraded{Binary: bin, Version: u.GetVersion()})
		close(a.upgrading)
	})
}

// installBinary returns the path of the agent binary of u.Version, checked
// to run: the executable this agent runs from if its content is already
// u.Sha256 (a local VM's agent, whose manager's binary was replaced), else
// the one downloaded from u.Url, installed over this executable when it is
// a flotilla-agent in a directory the agent may write (a cloud VM's: its
// next boot runs the new one too), or else in the state directory.
func (a *agent) installBinary(ctx context.Context, u *agentv1.UpgradeAgent) (string, error) {
	want := strings.ToLower(u.GetSha256())
	if sum, err := hex.DecodeString(want); err != nil || len(sum) != sha256.Size {
		return "", fmt.Errorf("sha256: %q is not a SHA-256 in hex", u.GetSha256())
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("this agent's executable is unknown: %w", err)
	}
	if sum, err := filecopy.SHA256(exe); err == nil && sum == want {
		return exe, checkBinary(ctx, exe, exe, u.GetVersion(), a.cfg.Args)
	}
	if u.GetUrl() == "" {
		return "", fmt.Errorf("%s is not that version's binary, and the manager gave no URL to download it from", exe)
	}
	dirs := []string{a.cfg.StateDir}
	if filepath.Base(exe) == agentBinaryName {
		dirs = []string{filepath.Dir(exe), a.cfg.StateDir}
	}
	var f *os.File
	for _, dir := range dirs {
		if f, err = os.CreateTemp(dir, "."+agentBinaryName+"-*"); err == nil {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("no directory to put the new binary in: %w", err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // gone once renamed
	err = a.download(ctx, u.GetUrl(), want, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o755)
	}
	if err == nil {
		err = checkBinary(ctx, tmp, "the binary from "+u.GetUrl(), u.GetVersion(), a.cfg.Args)
	}
	if err != nil {
		return "", err
	}
	target := filepath.Join(a.cfg.StateDir, agentBinaryName)
	if filepath.Dir(tmp) == filepath.Dir(exe) {
		target = exe
	}
	if err := os.Rename(tmp, target); err != nil {
		return "", fmt.Errorf("install the new binary: %w", err)
	}
	return target, nil
}

// download writes url's body to f, checking its SHA-256 is want. The
// manager's certificate is trusted through the system's roots or the
// fleet CA bundle.
func (a *agent) download(ctx context.Context, url, want string, f *os.File) error {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if bundle, err := os.ReadFile(a.cfg.CAFile); err == nil {
		roots.AppendCertsFromPEM(bundle)
	}
	client := &http.Client{Timeout: upgradeDownloadTimeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, Proxy: http.ProxyFromEnvironment}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: %s", url, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, upgradeMaxBytes+1))
	switch {
	case err != nil:
		return fmt.Errorf("download %s: %w", url, err)
	case n > upgradeMaxBytes:
		return fmt.Errorf("download %s: larger than %d MiB", url, upgradeMaxBytes>>20)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("the binary from %s has SHA-256 %s, not %s: not installed", url, got, want)
	}
	return f.Sync()
}

// checkBinary runs bin --version: it must run here and name version. It
// then runs it with args, the flags it will be started with, and
// --version: it must take them (a release that dropped or renamed one of
// them would not start, and leave the VM without an agent). name is what
// an error calls bin.
func checkBinary(ctx context.Context, bin, name, version string, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, upgradeCheckTimeout)
	defer cancel()
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append(args, "--version")...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		return string(bytes.TrimSpace(out)), err
	}
	out, err := run()
	if err != nil {
		return fmt.Errorf("%s: --version: %w: %s", name, err, out)
	}
	if !strings.Contains(" "+out+" ", " "+version+" ") {
		return fmt.Errorf("%s: --version says %q, not version %s", name, out, version)
	}
	if len(args) == 0 {
		return nil
	}
	if out, err := run(args...); err != nil {
		var names []string
		for _, a := range args {
			n, _, _ := strings.Cut(a, "=")
			names = append(names, n)
		}
		// Its first line only, and never a flag's value (--token's is a
		// secret): the message goes to the instance's timeline.
		first, _, _ := strings.Cut(out, "\n")
		for _, a := range args {
			if _, v, _ := strings.Cut(a, "="); len(v) >= 8 {
				first = strings.ReplaceAll(first, v, "…")
			}
		}
		if r := []rune(first); len(r) > 200 {
			first = string(r[:200]) + "…"
		}
		return fmt.Errorf("%s does not take the flags this agent runs with (%s): %w: %s", name, strings.Join(names, " "), err, first)
	}
	return nil
}

// Exec replaces this process with the agent binary up names, run with the
// flags set on flags (as they were given, repeated ones repeated): the
// same agent, in the same process, so the local provider and systemd see
// it still running. It returns only when the exec fails.
func Exec(up *Upgraded, flags *pflag.FlagSet) error {
	argv := append([]string{up.Binary}, flagArgs(flags)...)
	err := syscall.Exec(up.Binary, argv, os.Environ())
	return fmt.Errorf("exec %s: %w", up.Binary, err)
}

// RunUpgrading runs the agent (Run) and, when it stops to be upgraded,
// replaces it with the new binary through exec (Exec in the command, which
// returns only when it fails). When the new binary cannot be started after
// all — checked to run, it was removed, say, or the system refused it —
// the agent runs again as it was, and reports the upgrade's failure once
// its stream is back: the VM is not left without an agent.
func RunUpgrading(ctx context.Context, cfg Config, exec func(*Upgraded) error) error {
	for {
		err := Run(ctx, cfg)
		up, ok := errors.AsType[*Upgraded](err)
		if !ok {
			return err
		}
		err = exec(up)
		if ctx.Err() != nil {
			return nil
		}
		cfg.UpgradeFailed = fmt.Sprintf("version %s could not be started: %v; version %s runs on", up.Version, err, cmp.Or(cfg.Version, Version))
		if cfg.Log != nil {
			cfg.Log.Error("the upgraded agent could not be started; this one starts again", "binary", up.Binary, "version", up.Version, "error", err)
		}
	}
}

// flagArgs are the flags set on flags, as arguments.
func flagArgs(flags *pflag.FlagSet) []string {
	var args []string
	flags.Visit(func(f *pflag.Flag) {
		if s, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range s.GetSlice() {
				args = append(args, "--"+f.Name+"="+v)
			}
			return
		}
		args = append(args, "--"+f.Name+"="+f.Value.String())
	})
	return args
}
