//go:build !linux

package testkit

import "syscall"

// killWithParent does nothing where the kernel cannot do it: there a test
// binary that dies without its cleanups leaves the child running.
func killWithParent(*syscall.SysProcAttr) {}
