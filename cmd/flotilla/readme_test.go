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
	blocks := readmeBlocks(t, "", "## The web console")
	if len(blocks) < 3 {
		t.Fatalf("the README's first section has %d sh blocks after make run, want the walkthrough's 3", len(blocks))
	}
	root := filepath.Dir(dataDir(t))
	dir := filepath.Join(root, ".flotilla") // the README's --data-dir ./.flotilla
	up := startUpFree(t, dir, nil)
	t.Cleanup(func() { local.KillAll(dir) })

	runReadme(t, root, readmeAnswers, strings.ReplaceAll(strings.Join(blocks, "\n"), "127.0.0.1:7700", "127.0.0.1:"+strconv.Itoa(up.base)),
		"<h1>Flotilla instance design-1</h1>", // curl --cacert ca.pem: HTTPS verified by the fleet CA
		"design-1: running: https://",         // provision --wait
		"user ann created as operator")
}

// readmeCurl stands in for the reader of the README's curl appendix: each
// call is made once the one before has taken effect (the instance $ID is
// not provisioning, deprovisioning or deleting), an HTTP error fails it, a
// call naming what the reader has and the test does not ($EXT, an external
// instance; $ACCOUNT, a cloud account) is left out, and a followed stream
// is read for 2 s.
const readmeCurl = `EXT='<external-instance>' ACCOUNT='<cloud-account>'
curl() {
	local - a
	set +x
	for a in "$@"; do
		case "$a" in *'<'*'>'*) echo "left out, a placeholder: curl $*" >&2; return 0 ;; esac
	done
	if [ -n "${ID:-}" ] && [ -n "${H:-}" ]; then
		while case "$(command curl -s -H "$H" "$B/instances/$ID" | jq -r .state)" in provisioning | deprovisioning | deleting) true ;; *) false ;; esac; do
			sleep 0.2
		done
	fi
	case "$*" in
	*follow=true*) command curl -sS --max-time 2 "$@" || [ $? = 28 ] ;;
	*) command curl -sS --fail-with-body "$@" ;;
	esac
}
`

// TestTheReadmesCurlAppendixRuns runs the README's REST API appendix with
// curl, each call once the one before has taken effect: it provisions an
// instance, reads it, its logs and events, serves HTTPS from the fleet CA,
// reprovisions, deprovisions and deletes it, and logs out.
func TestTheReadmesCurlAppendixRuns(t *testing.T) {
	t.Parallel()
	blocks := readmeBlocks(t, "## Appendix: the REST API with curl", "")
	if len(blocks) != 1 {
		t.Fatalf("the README's curl appendix has %d sh blocks, want 1", len(blocks))
	}
	dir := dataDir(t)
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	up := startUpFree(t, dir, nil)
	t.Cleanup(func() { local.KillAll(dir) })
	runReadme(t, filepath.Dir(dir), readmeCurl, strings.ReplaceAll(blocks[0], "localhost:7700", "localhost:"+strconv.Itoa(up.base)),
		`"status":"ok"`,
		"<h1>Flotilla instance design-1</h1>", // curl --cacert ca.pem
		"left out, a placeholder: curl -s -H Authorization: Bearer")
}

// runReadme runs script (the README's, its ports the test's) in dir with
// bash, after prelude, and requires that it succeed and print each of want.
func runReadme(t *testing.T, dir, prelude, script string, want ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+prelude+"set -x\n"+script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, configEnv+"="+filepath.Join(dir, "config.yaml"),
		"PATH="+filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\n%s", err, out)
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("the README's commands printed no %q:\n%s", w, out)
		}
	}
}

// readmeBlocks returns the README's sh blocks after the heading after ("":
// from the start) and before the heading before ("": to the end), leaving
// out those that run make.
func readmeBlocks(t *testing.T, after, before string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var block []string
	in, started := false, after == ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && !started:
			started = line == after
		case !in && before != "" && line == before:
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
	if !started || before != "" {
		t.Fatalf("README.md has no heading %q or %q", after, before)
	}
	return blocks
}
