//go:build unix

package agent

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup starts cmd in a process group of its own, so that
// stopping it reaches every process it started, and a Ctrl-C meant for the
// agent does not reach it directly. For a command made with
// exec.CommandContext, cancelling the context kills the whole group.
func ownProcessGroup(cmd *exec.Cmd, withContext bool) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	setParentDeathSignal(cmd.SysProcAttr)
	if withContext {
		cmd.Cancel = func() error { return signalGroup(cmd, syscall.SIGKILL) }
	}
}

// signalGroup sends sig to cmd's process group.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	return syscall.Kill(-cmd.Process.Pid, sig)
}
