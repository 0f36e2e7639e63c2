package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// readmeAnswers stands in for the terminal the README's commands ask on:
// the commands that would ask get their answers on standard input; every
// other command runs as written.
const readmeAnswers = `flotilla() {
	case "$1 ${2:-} ${3:-}" in
	"login "*) printf '%s\n' 'S3cret-pass' | command flotilla "$@" --password-stdin ;;
	"instances secrets set") printf '%s' 'readme-db-pass' | command flotilla "$@" ;;
	"users create "*) printf '%s\n' 'Ann-pass-123' | command flotilla "$@" --password-stdin ;;
	*) command flotilla "$@" ;;
	esac
}
`

// TestTheReadmeQuickStartRuns runs the README's first section as a
// newcomer pastes it into a shell: every sh block after the one with
// `make run` (which flotilla up on ports of the test's own stands for), one
// after another, stopping at the first command that fails. It provisions,
// serves HTTPS from the fleet CA, deprovisions, reprovisions and deletes an
// instance, and lets a user in, with the client alone.
func TestTheReadmeQuickStartRuns(t *testing.T) {
	t.Parallel()
	blocks := readmeBlocks(t, "## The web console")
	if len(blocks) < 3 {
		t.Fatalf("the README's first section has %d sh blocks after make run, want the walkthrough's 3", len(blocks))
	}
	root := filepath.Dir(dataDir(t))
	dir := filepath.Join(root, ".flotilla") // the README's --data-dir ./.flotilla
	up := startUpFree(t, dir, nil)
	t.Cleanup(func() { local.KillAll(dir) })

	script := "set -euo pipefail\n" + readmeAnswers + "set -x\n" +
		strings.ReplaceAll(strings.Join(blocks, "\n"), "127.0.0.1:7700", "127.0.0.1:"+strconv.Itoa(up.base))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "HOME="+root, configEnv+"="+filepath.Join(root, "config.yaml"),
		"PATH="+filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's walkthrough failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"<h1>Flotilla instance design-1</h1>", // curl --cacert ca.pem: HTTPS verified by the fleet CA
		"design-1: running: https://",         // provision --wait
		"user ann created as operator",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the README's walkthrough printed no %q:\n%s", want, out)
		}
	}
}

// readmeBlocks returns the README's sh blocks before the heading stop,
// leaving out those that run make.
func readmeBlocks(t *testing.T, stop string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var block []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && line == stop:
			return blocks
		case !in && line == "```sh":
			in, block = true, nil
		case in && line == "```":
			in = false
			if text := strings.Join(block, "\n"); !strings.Contains(text, "make ") {
				blocks = append(blocks, text)
			}
		case in:
			block = append(block, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("README.md has no heading %q", stop)
	return nil
}
