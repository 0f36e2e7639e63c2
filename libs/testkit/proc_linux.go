package testkit

import "syscall"

// killWithParent has the kernel kill a child process when the test binary
// dies without stopping it (a timeout's panic, a SIGKILL).
func killWithParent(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
