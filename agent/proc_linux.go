package agent

import "syscall"

// setParentDeathSignal has the kernel stop a child if the agent dies
// without stopping it, so a restarted agent finds its port free.
func setParentDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGTERM }
