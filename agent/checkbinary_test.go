package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestACheckedBinarysRefusalKeepsFlagValuesOut: the new binary's answer to
// the flags it will be started with goes to the instance's timeline, so a
// flag's value it repeats (--token's is a secret) is left out, and so is
// all but its first line.
func TestACheckedBinarysRefusalKeepsFlagValuesOut(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "flotilla-agent")
	script := "#!/bin/sh\nif [ $# -gt 1 ]; then echo \"flotilla-agent: refused: $*\" >&2; echo usage >&2; exit 1; fi\necho flotilla-agent version 0.2.0\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	const token = "s3cr3t-join-token-value"
	err := checkBinary(t.Context(), bin, "the new binary", "0.2.0", []string{"--gateway=gw:7443", "--token=" + token})
	if err == nil {
		t.Fatal("a binary refusing the flags passed the check")
	}
	want := "the new binary does not take the flags this agent runs with (--gateway --token): exit status 1: flotilla-agent: refused: --gateway=gw:7443 --token=… --version"
	if err.Error() != want || strings.Contains(err.Error(), token) {
		t.Errorf("the check said %q\nwant %q", err, want)
	}
	if err := checkBinary(t.Context(), bin, "the new binary", "0.2.0", nil); err != nil {
		t.Errorf("without flags: %v", err)
	}
}
