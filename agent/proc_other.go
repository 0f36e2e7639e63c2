//go:build unix && !linux

package agent

import "syscall"

// setParentDeathSignal does nothing where the kernel cannot do it.
func setParentDeathSignal(*syscall.SysProcAttr) {}
