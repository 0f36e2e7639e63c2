package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigNamesEveryMissingFlag(t *testing.T) {
	t.Parallel()
	err := Config{Token: "a", TokenFile: "b", HeartbeatInterval: -time.Second}.Validate()
	for _, flag := range []string{"--gateway", "--ca-file", "--state-dir", "--data-dir", "--data-disk-gb", "--vm-id", "--token, --token-file", "--heartbeat-interval"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() = %v, want it to name %s", err, flag)
		}
	}
}

// The node software is flotilla-node beside the agent's executable when it
// can run, and the executable's own node command otherwise.
func TestTheNodeSoftwareIsTheSmallBinaryBesideTheAgent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe := filepath.Join(dir, "flotilla")
	if got := nodeBinaryOf(exe, "agent"); !slices.Equal(got, []string{exe, "agent", "node"}) {
		t.Errorf("with no flotilla-node: %q, want the executable's own node command", got)
	}
	small := filepath.Join(dir, "flotilla-node")
	if err := os.WriteFile(small, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nodeBinaryOf(exe); !slices.Equal(got, []string{exe, "node"}) {
		t.Errorf("with a flotilla-node nobody may run: %q, want the executable's own node command", got)
	}
	if err := os.Chmod(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := nodeBinaryOf(exe, "agent"); !slices.Equal(got, []string{small}) {
		t.Errorf("with flotilla-node beside: %q, want it", got)
	}
}
