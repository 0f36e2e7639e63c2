package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.dev/flotilla/libs/kms"
)

// TestKMSKeyForACluster creates the secret brokers' master key as an
// operator would for a cluster (or compose's init-kms), and checks that the
// secret broker's loader takes it and that running it again keeps the key.
func TestKMSKeyForACluster(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "kms", "master.key")
	run := func(args ...string) (string, error) {
		out, err := exec.Command(binary, append([]string{"admin", "kms-key"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run("--file", file)
	if err != nil {
		t.Fatalf("kms-key: %v\n%s", err, out)
	}
	k, err := kms.LoadLocal(file)
	if err != nil {
		t.Fatalf("the secret broker does not load the key: %v", err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 || !strings.Contains(out, k.KeyID()) {
		t.Fatalf("key file %v %v; output %s", fi, err, out)
	}
	before, _ := os.ReadFile(file)
	if out, err := run("--file", file); err != nil || !strings.Contains(out, k.KeyID()) {
		t.Fatalf("kms-key again: %v\n%s", err, out)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Fatal("kms-key replaced an existing key")
	}
	if out, err := run(); err == nil || !strings.Contains(out, `"file"`) {
		t.Fatalf("kms-key without --file: %v\n%s", err, out)
	}
}
