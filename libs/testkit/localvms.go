package testkit

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// KillLocalVMs stops every local VM under a local provider's root (its
// agent's process group, and with it the node software): VMs outlive the
// manager that started them, as real ones do, so a test must stop them.
func KillLocalVMs(root string) {
	pids, _ := filepath.Glob(filepath.Join(root, "vms", "*", "agent.pid"))
	for _, p := range pids {
		b, _ := os.ReadFile(p)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
}
