package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
)

// cli runs the client commands as an operator would, with a configuration
// file of its own.
type cli struct {
	t      *testing.T
	config string
	env    []string
}

func newCLI(t *testing.T, env ...string) *cli {
	return &cli{t: t, config: filepath.Join(t.TempDir(), "flotilla", "config.yaml"), env: env}
}

// run runs flotilla with args, stdin (when not empty) and extra env.
func (c *cli) run(stdin string, env []string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(append(os.Environ(), configEnv+"="+c.config), append(c.env, env...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// ok runs flotilla and requires it to succeed; it returns standard output.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	return c.okIn("", args...)
}

func (c *cli) okIn(stdin string, args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(stdin, nil, args...)
	if err != nil {
		c.t.Fatalf("flotilla %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs flotilla and requires it to exit non-zero with stderr
// holding every one of wants; it returns stdout and stderr.
func (c *cli) fails(stdin string, wants []string, args ...string) (string, string) {
	c.t.Helper()
	out, errOut, err := c.run(stdin, nil, args...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		c.t.Fatalf("flotilla %s: %v, want a non-zero exit\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	for _, w := range wants {
		if !strings.Contains(errOut, w) {
			c.t.Fatalf("flotilla %s: stderr lacks %q:\n%s%s", strings.Join(args, " "), w, out, errOut)
		}
	}
	return out, errOut
}

// writeFile writes a file of the test.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCLI drives a real `flotilla up`, its API over TLS, with the client
// commands alone: log in (trusting the server's CA on first use), create a
// network, templates and instances from YAML files, list them in every
// format, apply changes (a stale one is refused), provision and follow
// an instance to running, read its logs and timeline, deprovision and
// delete it; a failing setup script fails the provision naming its step.
func TestCLI(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	up := startUpFree(t, dir, []string{"--tls"})
	t.Cleanup(func() { local.KillAll(dir) })
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	fleetCA, err := os.ReadFile(filepath.Join(dir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caCerts, err := pki.ParseCertificatesPEM(fleetCA)
	if err != nil {
		t.Fatal(err)
	}
	server := up.url("")
	c := newCLI(t)

	// Not logged in: said plainly, before anything is asked.
	c.fails("", []string{"not logged in to", "flotilla login"}, "networks", "list")

	// The first login shows the server's chain, trusts it, and pins the
	// fleet CA that issued it; the token is kept readable by its owner only.
	out, errOut, err := c.run("S3cret-pass\n", nil, "login", "--server", server, "--username", "admin", "--password-stdin")
	if err != nil {
		t.Fatalf("login: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(errOut, "SHA-256") || !strings.Contains(errOut, "pinned that CA") || !strings.Contains(errOut, fingerprint(caCerts[0])) {
		t.Fatalf("the first login does not show the chain and the fleet CA pinned (%s):\n%s", fingerprint(caCerts[0]), errOut)
	}
	if fi, err := os.Stat(c.config); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", fi, err)
	}
	cfg, _ := os.ReadFile(c.config)
	if !strings.Contains(string(cfg), "token: flt_") || !strings.Contains(string(cfg), "BEGIN CERTIFICATE") {
		t.Fatalf("config file lacks the token or the pinned CA:\n%s", cfg)
	}
	// A CA the server's certificate is not from is refused.
	other, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c.fails("S3cret-pass\n", []string{"certificate", "--ca-file"}, "login", "--server", strings.Replace(server, "127.0.0.1", "localhost", 1),
		"--username", "admin", "--password-stdin", "--ca-file", writeFile(t, "other-ca.pem", string(other.CertificatePEM())), "--context", "wrong")

	// Bad input: the API's message naming the field.
	c.fails("name: huge\nprovider: local\ndataDiskGb: 0\n", []string{"dataDiskGb", "field dataDiskGb", "invalid_field"}, "templates", "create", "-f", "-")
	c.fails("name: odd\nprovider: local\ndataDiskGb: 1\ncolour: blue\n", []string{"colour: unknown field (line 4)"}, "templates", "create", "-f", "-")

	// Create from YAML files; the instance names its template and network.
	c.ok("networks", "create", "-f", writeFile(t, "network.yaml", "name: lab\nprovider: local\nhttpsStrategy: self-signed\n"))
	c.ok("templates", "create", "-f", writeFile(t, "templates.yaml", `name: small
provider: local
dataDiskGb: 1
setupActions:
  - type: script
    script: |
      echo hello from setup
      echo a warning from setup >&2
  - {type: file, path: conf/app.env, content: "MODE=dev\n", mode: 0644}
  - {type: file, path: conf/db.env, content: "PASSWORD=${secret:db-password}"}
  - {type: file, path: conf/registry.env, content: "TOKEN=${secret:registry-token}"}
---
name: broken
provider: local
dataDiskGb: 1
setupActions:
  - {type: script, script: "echo about to fail; exit 3"}
`))
	created := c.ok("instances", "create", "-o", "json", "-f", writeFile(t, "instances.yaml", `name: web-1
kind: design
templateId: small
networkId: lab
ssl: {sans: [web-1.lab.test]}
---
name: bad-1
kind: design
templateId: broken
networkId: lab
`))
	if !strings.Contains(created, `"name": "bad-1"`) || !strings.Contains(created, `"state": "created"`) {
		t.Fatalf("instances create -o json:\n%s", created)
	}

	// A secret for web-1's setup: the value never comes back.
	if out := c.okIn("s3cret-value\n", "instances", "secrets", "set", "web-1", "db-password"); strings.Contains(out, "reprovision") {
		t.Fatalf("a first value is not a replacement:\n%s", out)
	}
	// Replacing it says when the instance reads the new value.
	if out := c.okIn("s3cret-value\n", "instances", "secrets", "set", "web-1", "db-password", "--if-version", "1"); !strings.Contains(out, "(version 2)") || !strings.Contains(out, "flotilla instances refresh-configuration web-1 for the new value") {
		t.Fatalf("a replaced secret:\n%s", out)
	}
	if out := c.ok("instances", "secrets", "list", "web-1", "-o", "table"); !strings.Contains(out, "db-password") || strings.Contains(out, "s3cret-value") {
		t.Fatalf("secrets list:\n%s", out)
	}
	c.fails("", []string{`secretsManagerId: "bad id" is not an AWS Secrets Manager secret's name or ARN`}, "instances", "secrets", "set", "web-1", "x", "--secrets-manager", "bad id")
	// Secrets read from AWS Secrets Manager: no value asked, the secret named
	// in the lists (web-1's setup reads neither).
	c.ok("instances", "secrets", "set", "web-1", "license", "--secrets-manager", "prod/license")
	if out := c.ok("instances", "secrets", "list", "web-1", "-o", "table"); !regexp.MustCompile(`license +1 +\S+ ago +- +prod/license`).MatchString(out) {
		t.Fatalf("an instance's secret read from Secrets Manager in the list:\n%s", out)
	}
	c.ok("secrets", "set", "fleet-license", "--template", "small", "--secrets-manager", "prod/fleet-license")
	if out := c.ok("secrets", "list", "-o", "table"); !strings.Contains(out, "prod/fleet-license") {
		t.Fatalf("a fleet secret read from Secrets Manager in the list:\n%s", out)
	}
	// A fleet secret for every instance of the template small (and broken,
	// taken off again with its templates alone).
	c.fails("", []string{"--template: name at least one template"}, "secrets", "set", "registry-token")
	c.fails("fleet-token\n", []string{"--template nowhere", `no template named "nowhere"`}, "secrets", "set", "registry-token", "--template", "nowhere")
	if out := c.okIn("fleet-token\n", "secrets", "set", "registry-token", "--template", "small", "--template", "broken"); !strings.Contains(out, "fleet secret registry-token set (version 1) for the instances of small, broken") {
		t.Fatalf("secrets set:\n%s", out)
	}
	if out := c.ok("secrets", "set", "registry-token", "--template", "small", "--templates-only"); !strings.Contains(out, "(version 1) for the instances of small") {
		t.Fatalf("secrets set --templates-only:\n%s", out)
	}
	// Over a version it is no longer at: refused, naming the one it is at.
	c.fails("", []string{`fleet secret "registry-token" is at version 1, not 2`, "version_mismatch"},
		"secrets", "set", "registry-token", "--template", "small", "--templates-only", "--if-version", "2")
	// For the network lab alone; a new value keeps it, until every
	// network is named again.
	c.fails("", []string{"--network nowhere", `no network named "nowhere"`}, "secrets", "set", "registry-token", "--template", "small", "--network", "nowhere", "--templates-only")
	if out := c.ok("secrets", "set", "registry-token", "--template", "small", "--network", "lab", "--templates-only"); !strings.Contains(out, "(version 1) for the instances of small in lab\n") {
		t.Fatalf("secrets set --network lab:\n%s", out)
	}
	if out := c.ok("secrets", "list", "-o", "table"); !regexp.MustCompile(`registry-token +small +lab +1 `).MatchString(out) {
		t.Fatalf("secrets list, for lab:\n%s", out)
	}
	if out := c.ok("secrets", "get", "registry-token", "-o", "table"); !regexp.MustCompile(`(?m)^registry-token +small +lab +1 `).MatchString(out) {
		t.Fatalf("secrets get, for lab:\n%s", out)
	}
	if out := c.ok("secrets", "get", "registry-token", "-o", "json"); !strings.Contains(out, `"name": "registry-token"`) || !strings.Contains(out, `"networkIds"`) || strings.Contains(out, "fleet-token") {
		t.Fatalf("secrets get -o json:\n%s", out)
	}
	c.fails("", []string{"fleet secret nowhere", "not found"}, "secrets", "get", "nowhere")
	// Over the update time read: taken while it is the secret's; refused
	// once another changed its networks alone (its version kept).
	var seen struct{ UpdateTime string }
	if err := json.Unmarshal([]byte(c.ok("secrets", "get", "registry-token", "-o", "json")), &seen); err != nil || seen.UpdateTime == "" {
		t.Fatalf("secrets get -o json: %v %+v", err, seen)
	}
	c.ok("secrets", "set", "registry-token", "--template", "small", "--network", "lab", "--templates-only", "--if-updated", seen.UpdateTime)
	c.fails("", []string{`fleet secret "registry-token" was changed at `, "after it was read", "version_mismatch"},
		"secrets", "set", "registry-token", "--template", "small", "--all-networks", "--templates-only", "--if-updated", seen.UpdateTime)
	c.fails("", []string{`--if-updated: "yesterday" is not a time`}, "secrets", "set", "registry-token", "--template", "small", "--templates-only", "--if-updated", "yesterday")
	if out := c.okIn("fleet-token\n", "secrets", "set", "registry-token", "--template", "small"); !strings.Contains(out, "(version 2) for the instances of small in the 1 network it had\n") {
		t.Fatalf("secrets set, a new value:\n%s", out)
	}
	if out := c.ok("secrets", "set", "registry-token", "--template", "small", "--all-networks", "--templates-only"); !strings.Contains(out, "(version 2) for the instances of small in every network\n") {
		t.Fatalf("secrets set --all-networks:\n%s", out)
	}
	if out := c.ok("secrets", "list", "-o", "table"); !regexp.MustCompile(`registry-token +small +\(all\) +2 `).MatchString(out) || strings.Contains(out, "fleet-token") {
		t.Fatalf("secrets list:\n%s", out)
	}

	// list in every format.
	table := c.ok("templates", "list", "-o", "table")
	if lines := strings.Split(strings.TrimSpace(table), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") ||
		!strings.HasPrefix(lines[1], "small ") || !strings.HasPrefix(lines[2], "broken ") {
		t.Fatalf("templates list table:\n%s", table)
	}
	if table := c.ok("instances", "list", "-o", "table"); !strings.Contains(table, "web-1") || !strings.Contains(table, " small ") || !strings.Contains(table, " lab ") {
		t.Fatalf("instances list table (template and network by name):\n%s", table)
	}
	// Filters the API applies, a network and a template by name.
	if table := c.ok("instances", "list", "--network", "lab", "--template", "broken", "--sort", "name", "-o", "table"); !strings.Contains(table, "bad-1") || strings.Contains(table, "web-1") {
		t.Fatalf("instances list --network lab --template broken:\n%s", table)
	}
	if table := c.ok("instances", "list", "--query", "WEB", "--kind", "design", "-o", "table"); !strings.Contains(table, "web-1") || strings.Contains(table, "bad-1") {
		t.Fatalf("instances list --query WEB --kind design:\n%s", table)
	}
	// Every page in one answer, its totalSize counting them all.
	var instancesJSON struct {
		Instances []struct{ Name string }
		TotalSize int
	}
	if out := c.ok("instances", "list", "--page-size", "1"); json.Unmarshal([]byte(out), &instancesJSON) != nil ||
		len(instancesJSON.Instances) != 2 || instancesJSON.TotalSize != 2 {
		t.Fatalf("instances list (json, a page of one at a time):\n%s", out)
	}
	c.fails("", []string{`--state: "sleeping" is not one of`}, "instances", "list", "--state", "sleeping")
	c.fails("", []string{`--sort: "age" is not an order`}, "instances", "list", "--sort", "age") // the flag, not the API's orderBy
	c.fails("", []string{"--network", `no network named "nowhere"`}, "instances", "list", "--network", "nowhere")
	c.fails("", []string{"no instance named"}, "instances", "get", strings.Repeat("x", 201)) // longer than a search may be
	var asJSON struct {
		Templates []struct {
			Name         string
			SetupActions []struct{ Mode string }
		}
	}
	if out := c.ok("templates", "list"); json.Unmarshal([]byte(out), &asJSON) != nil || len(asJSON.Templates) != 2 ||
		asJSON.Templates[0].SetupActions[1].Mode != "0644" {
		t.Fatalf("templates list (json when not on a terminal):\n%s", out)
	}
	var asYAML struct {
		Templates []struct {
			Name       string `yaml:"name"`
			DataDiskGb int    `yaml:"dataDiskGb"`
		} `yaml:"templates"`
	}
	if out := c.ok("templates", "list", "-o", "yaml", "--page-size", "1"); yaml.Unmarshal([]byte(out), &asYAML) != nil || len(asYAML.Templates) != 2 ||
		asYAML.Templates[1].Name != "broken" || asYAML.Templates[1].DataDiskGb != 1 {
		t.Fatalf("templates list -o yaml, a page of one at a time:\n%s", out)
	}

	// apply: a change at the version read; the same file again is stale
	// and refused, and the change made meanwhile is kept.
	read := c.ok("networks", "get", "lab", "-o", "yaml")
	if !strings.Contains(read, `version: "1"`) {
		t.Fatalf("networks get -o yaml:\n%s", read)
	}
	edited := writeFile(t, "lab.yaml", strings.Replace(read, "httpsStrategy: self-signed", "httpsStrategy: self-signed\ndns: {hostnamePattern: \"{name}.lab.test\"}", 1))
	if out := c.ok("networks", "apply", "-f", edited); !strings.Contains(out, "network lab changed") {
		t.Fatalf("networks apply of a change: %s", out)
	}
	c.okIn("name: lab\ndns: {hostnamePattern: \"\"}\n", "networks", "apply", "-f", "-") // no version: the one just read
	if out := c.okIn("name: lab\ndns: {hostnamePattern: \"\"}\n", "networks", "apply", "-f", "-"); !strings.Contains(out, "network lab unchanged") {
		t.Fatalf("networks apply of what is already so: %s", out)
	}
	c.fails("", []string{"version_mismatch", "version 1"}, "networks", "apply", "-f", edited)
	var lab struct {
		DNS     struct{ HostnamePattern string }
		Version string
	}
	if out := c.ok("networks", "get", "lab", "-o", "json"); json.Unmarshal([]byte(out), &lab) != nil || lab.DNS.HostnamePattern != "" || lab.Version != "3" {
		t.Fatalf("after a stale apply: %s", out)
	}
	// A file of a version gone by that changes nothing is no change: the
	// same file applied twice, or one that agrees with the changes since.
	if out := c.ok("networks", "apply", "-f", writeFile(t, "lab-v1.yaml", read)); !strings.Contains(out, "network lab unchanged") ||
		!strings.Contains(c.ok("networks", "get", "lab", "-o", "yaml"), `version: "3"`) {
		t.Fatalf("networks apply of a stale file that changes nothing: %s", out)
	}
	// apply creates what does not exist.
	if out := c.okIn("name: lab-2\nprovider: local\nhttpsStrategy: none\n", "networks", "apply", "-f", "-"); !strings.Contains(out, "network lab-2 created") {
		t.Fatalf("apply of a new network: %s", out)
	}
	c.ok("networks", "delete", "lab-2")
	c.fails("", []string{`no network named "lab-2"`}, "networks", "get", "lab-2")
	// The fleet's event feed (forwarded to the stream in the background):
	// the newest network event is lab-2's deletion; lab's are named.
	for deadline := time.Now().Add(30 * time.Second); ; {
		var feed struct{ Events []struct{ Type string } }
		out := c.ok("events", "--entity", "network", "--limit", "1")
		if json.Unmarshal([]byte(out), &feed) == nil && len(feed.Events) == 1 && feed.Events[0].Type == "network.deleted" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events --entity network --limit 1 (the newest: lab-2 deleted):\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := c.ok("events", "--entity", "network", "lab", "-o", "table"); !strings.Contains(out, "network.created") ||
		strings.Count(out, " lab ") != 3 || strings.Contains(out, "lab-2") {
		t.Fatalf("events --entity network lab (created, then changed twice):\n%s", out)
	}

	// The fleet CA certificate.
	if pem := c.ok("ca", "cert"); pem != string(fleetCA) {
		t.Fatalf("ca cert:\n%s\nwant the data directory's:\n%s", pem, fleetCA)
	}

	// A second context with the CA given; logout revokes its token only.
	local := strings.Replace(server, "127.0.0.1", "localhost", 1)
	caFile := filepath.Join(dir, "ca", "ca.crt")
	c.okIn("S3cret-pass\n", "login", "--server", local, "--username", "admin", "--password-stdin", "--ca-file", caFile, "--context", "second")
	var contexts struct {
		Contexts []struct {
			Name     string
			Current  bool
			LoggedIn bool
		}
	}
	if out := c.ok("context", "list"); json.Unmarshal([]byte(out), &contexts) != nil || len(contexts.Contexts) != 2 ||
		contexts.Contexts[1].Name != "second" || !contexts.Contexts[1].Current {
		t.Fatalf("context list:\n%s", out)
	}
	token := contextToken(t, c.config, "second")
	c.ok("logout")
	c.fails("", []string{"not logged in to " + local}, "networks", "list")
	c.fails("", []string{"unauthenticated", "log in again"}, "networks", "list", "--token", token)
	c.ok("context", "use", up.url("")[len("https://"):])
	// The environment overrides the stored context, for automation.
	auto := newCLI(t, serverEnv+"="+server, tokenEnv+"="+contextToken(t, c.config, up.url("")[len("https://"):]), caFileEnv+"="+caFile)
	if out := auto.ok("networks", "list", "-o", "table"); !strings.Contains(out, "lab ") {
		t.Fatalf("networks list with %s and %s:\n%s", serverEnv, tokenEnv, out)
	}
	c.ok("context", "delete", "second")

	// The lifecycle, two instances at once (the subtests run once this
	// function has returned, in the current context: the first).
	// A failing setup script fails the provision at its step, with the reason.
	t.Run("a failing provision names its step", func(t *testing.T) {
		t.Parallel()
		c := &cli{t: t, config: c.config}
		out, _ := c.fails("", []string{"provision of bad-1 failed at running-setup: setupActions[0]: script exited with code 3"}, "instances", "provision", "bad-1", "--wait")
		if !strings.Contains(out, "bad-1: running-setup failed") {
			t.Fatalf("provision --wait shows no failed step:\n%s", out)
		}
		// The fleet overview names it among the failed, with why.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out = c.ok("overview", "-o", "table")
			if strings.Contains(out, "FAILED") && strings.Contains(out, "bad-1") && strings.Contains(out, "exited with code 3") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the overview does not name bad-1 as failed:\n%s", out)
			}
		}
		if out := c.ok("instances", "list", "--state", "failed", "-o", "table"); !strings.Contains(out, "bad-1") || strings.Contains(out, "web-1") {
			t.Fatalf("instances list --state failed:\n%s", out)
		}
	})

	t.Run("an external instance's join token", func(t *testing.T) {
		t.Parallel()
		c := &cli{t: t, config: c.config}
		c.okIn("name: ext\nprovider: external\nhttpsStrategy: none\n", "networks", "create", "-f", "-")
		c.okIn("name: ext\nprovider: external\ndataDiskGb: 1\n", "templates", "create", "-f", "-")
		c.okIn("name: edge-1\nkind: design\ntemplateId: ext\nnetworkId: ext\n", "instances", "create", "-f", "-")
		// Before it is provisioned, the error names the command and the
		// state, and no empty step.
		if _, errOut := c.fails("", []string{"join-token edge-1: ", "is created: join tokens are minted only while", "invalid_state"},
			"instances", "join-token", "edge-1"); strings.Contains(errOut, "()") {
			t.Fatalf("join-token before provision:\n%s", errOut)
		}
		c.ok("instances", "provision", "edge-1")
		deadline := time.Now().Add(time.Minute)
		for instanceJSON(t, c, "edge-1").StateDetail != "waiting-for-agent" {
			if time.Now().After(deadline) {
				t.Fatal("edge-1 never waited for its agent")
			}
		}
		caOut := filepath.Join(t.TempDir(), "ca.pem")
		out := c.ok("instances", "join-token", "edge-1", "--ttl", "10m", "--write-ca", caOut, "-o", "table")
		if !strings.Contains(out, "fjt_") || !strings.Contains(out, "flotilla-agent --gateway 127.0.0.1:") {
			t.Fatalf("join-token:\n%s", out)
		}
		if pem, err := os.ReadFile(caOut); err != nil || !strings.HasPrefix(string(pem), "-----BEGIN CERTIFICATE-----") {
			t.Fatalf("join-token --write-ca: %q %v", pem, err)
		}
		// While it waits for its agent, another action is refused, with the API's reason.
		c.fails("", []string{"lifecycle_busy"}, "instances", "deprovision", "edge-1")
	})

	t.Run("users, roles, tokens and audit", func(t *testing.T) {
		t.Parallel()
		testUsersTokensAudit(t, &cli{t: t, config: c.config}, server, caFile)
	})

	t.Run("provision, logs, events, deprovision, delete", func(t *testing.T) {
		t.Parallel()
		c := &cli{t: t, config: c.config}
		// --wait follows the instance's events: every step is seen as it
		// starts and ends, however fast, with the server's times.
		out := c.ok("instances", "provision", "web-1", "--wait")
		want := []string{"Provisioning web-1"}
		for _, step := range []string{"queued", "allocating-disk", "launching-vm", "waiting-for-agent", "running-setup", "installing", "starting"} {
			want = append(want, "web-1: "+step+" ...", "web-1: "+step+" done in ")
		}
		for _, w := range append(want, "web-1: running: https://") {
			if !strings.Contains(out, w) {
				t.Fatalf("provision --wait lacks %q:\n%s", w, out)
			}
		}
		in := instanceJSON(t, c, "web-1")
		// It runs the template's version; once the template changes, the
		// list says how far behind it is.
		var small struct{ Version string }
		if err := json.Unmarshal([]byte(c.ok("templates", "get", "small", "-o", "json")), &small); err != nil || in.TemplateVersion != small.Version {
			t.Fatalf("web-1 runs template version %q; small is at %q (%v)", in.TemplateVersion, small.Version, err)
		}
		if out, errOut, err := c.run("name: small\ntags: {team: web}\n", nil, "templates", "apply", "-f", "-"); err != nil ||
			!strings.Contains(out, "template small changed") || !strings.Contains(errOut, "flotilla instances list --template small") {
			t.Fatalf("apply of a change to a running instance's template: %v\n%s%s", err, out, errOut)
		}
		if out := c.ok("instances", "list", "--template", "small", "-o", "table"); !strings.Contains(out, "small (v"+small.Version+", now v") {
			t.Fatalf("instances list after the template changed:\n%s", out)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "disks", in.DataDisk.ID, "conf", "db.env")); err != nil || string(b) != "PASSWORD=s3cret-value" {
			t.Fatalf("the secret set with the CLI in the setup's file: %q %v", b, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "disks", in.DataDisk.ID, "conf", "registry.env")); err != nil || string(b) != "TOKEN=fleet-token" {
			t.Fatalf("the fleet secret in the setup's file: %q %v", b, err)
		}
		// Rotated, it reaches web-1 on the same VM with a refresh of the
		// A change of small's files alone: apply says a refresh applies it.
		const smallFiles = `name: small
setupActions:
  - type: script
    script: |
      echo hello from setup
      echo a warning from setup >&2
  - {type: file, path: conf/app.env, content: "MODE=prod\n", mode: 0644}
  - {type: file, path: conf/db.env, content: "PASSWORD=${secret:db-password}"}
  - {type: file, path: conf/registry.env, content: "TOKEN=${secret:registry-token}"}
`
		if out, errOut, err := c.run(smallFiles, nil, "templates", "apply", "-f", "-"); err != nil || !strings.Contains(out, "template small changed") ||
			!strings.Contains(errOut, "flotilla instances refresh-configuration --template small --wait") {
			t.Fatalf("apply of a change to small's files: %v\n%s%s", err, out, errOut)
		}
		// The fleet secret rotated, it reaches web-1 on the same VM with a
		// refresh of the configuration of every running instance of small;
		// bad-1 (not running) is refused, naming why.
		if out := c.okIn("fleet-token-2\n", "secrets", "set", "registry-token", "--template", "small"); !strings.Contains(out, "flotilla instances refresh-configuration --template small --wait") {
			t.Fatalf("a fleet secret's new value says nothing of refreshing its instances:\n%s", out)
		}
		if out := c.ok("instances", "refresh-configuration", "--template", "small", "--template", "broken", "--wait"); !strings.Contains(out, "web-1: configuration refreshed, the node software serving again") {
			t.Fatalf("refresh-configuration --template small --wait:\n%s", out)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "disks", in.DataDisk.ID, "conf", "registry.env")); err != nil || string(b) != "TOKEN=fleet-token-2" {
			t.Fatalf("the rotated fleet secret after the refresh: %q %v", b, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "disks", in.DataDisk.ID, "conf", "app.env")); err != nil || string(b) != "MODE=prod\n" {
			t.Fatalf("the template's changed file after the refresh: %q %v", b, err)
		}
		if got := instanceJSON(t, c, "web-1"); got.VMID != in.VMID {
			t.Fatalf("web-1 moved from VM %s to %s on a refresh", in.VMID, got.VMID)
		}
		c.fails("", []string{`instance "bad-1" is `, `: its configuration is refreshed while it is running`, "the configurations of bad-1 were not refreshed"},
			"instances", "refresh-configuration", "bad-1", "--wait")
		// small gains a script: web-1's agent refuses the refresh, and the
		// wait says why; small goes back.
		c.okIn(smallFiles+"  - {type: script, script: echo new}\n", "templates", "apply", "-f", "-")
		c.fails("", []string{"web-1: the configuration refresh failed: the template's scripts or packages are not those this VM's setup ran (1 then, 2 now)",
			"the configurations of web-1 were not refreshed"}, "instances", "refresh-configuration", "web-1", "--wait")
		c.okIn(smallFiles, "templates", "apply", "-f", "-")
		if logs := c.ok("instances", "logs", "web-1"); !strings.Contains(logs, " setup hello from setup\n") || !strings.Contains(logs, " setup/stderr a warning from setup\n") {
			t.Fatalf("instances logs:\n%s", logs)
		}
		if logs := c.ok("instances", "logs", "web-1", "--tail", "1", "-o", "json"); strings.Count(logs, "\n") != 1 || !strings.HasPrefix(logs, `{"seq":`) {
			t.Fatalf("instances logs --tail 1 -o json:\n%s", logs)
		}
		followLogs(t, c)
		// New SANs on the running instance: apply says how they reach its node.
		out, errOut, err := c.run("name: web-1\nssl: {sans: [web-1.lab.test, www.lab.test]}\n", nil, "instances", "apply", "-f", "-")
		if err != nil || !strings.Contains(out, "instance web-1 changed") || !strings.Contains(errOut, "flotilla instances refresh-certificate web-1") {
			t.Fatalf("apply of new SANs to a running instance: %v\n%s%s", err, out, errOut)
		}
		var timeline struct{ Events []struct{ Type string } }
		if out := c.ok("instances", "events", "web-1"); json.Unmarshal([]byte(out), &timeline) != nil ||
			!slices.ContainsFunc(timeline.Events, func(e struct{ Type string }) bool { return e.Type == "instance.running" }) {
			t.Fatalf("instances events:\n%s", out)
		}
		if table := c.ok("instances", "events", "web-1", "-o", "table"); !strings.Contains(table, "provision-requested") || !strings.Contains(table, "user:admin") {
			t.Fatalf("instances events -o table:\n%s", table)
		}
		id := in.ID
		if out := c.ok("instances", "deprovision", id, "--wait"); !strings.Contains(out, "web-1: deprovisioned") {
			t.Fatalf("deprovision --wait (by id):\n%s", out)
		}
		if v := instanceJSON(t, c, "web-1").TemplateVersion; v != "0" && v != "" {
			t.Fatalf("a deprovisioned instance runs template version %q", v)
		}
		// Forced: as a delete where the cloud destroys everything.
		if out := c.ok("instances", "delete", "web-1", "--force", "--wait"); !strings.Contains(out, "web-1: deleting-disk ended in ") || !strings.HasSuffix(out, "web-1: deleted\n") || strings.Contains(out, "failed") {
			t.Fatalf("delete --force --wait:\n%s", out)
		}
		c.fails("", []string{`no instance named "web-1"`}, "instances", "get", "web-1")
		// The history stays: by id, the delete asked for forced.
		if out := c.ok("instances", "events", id, "-o", "table"); !strings.Contains(out, "deprovisioned") {
			t.Fatalf("events of a deleted instance:\n%s", out)
		}
		if out := c.ok("instances", "events", id); !strings.Contains(out, `"deleteForced"`) {
			t.Fatalf("events of a force-deleted instance lack deleteForced:\n%s", out)
		}
	})

}

// followLogs follows web-1's logs and sees a line the node software logs
// when asked, then interrupts the follow, which exits cleanly.
func followLogs(t *testing.T, c *cli) {
	t.Helper()
	cmd := exec.Command(binary, "instances", "logs", "web-1", "-f", "--tail", "1")
	cmd.Env = append(os.Environ(), configEnv+"="+c.config)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("logs -f ended: %s", stderr.String())
		}
		_ = l // the newest line kept
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f printed nothing")
	}
	// A new line: a reprovision's output would do, but a request to the
	// node software is logged at once.
	url := instanceJSON(t, c, "web-1").Addresses.URL
	client := fleetClient(t, []byte(c.ok("ca", "cert")))
	go func() {
		if resp, err := client.Get(url + "from-cli-follow"); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.After(30 * time.Second)
	for seen := false; !seen; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("logs -f ended: %s", stderr.String())
			}
			seen = strings.Contains(l, "from-cli-follow")
		case <-deadline:
			t.Fatal("logs -f did not show the new line")
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("logs -f after an interrupt: %v %s", err, stderr.String())
	}
}

// instanceJSON reads an instance with flotilla instances get -o json.
func instanceJSON(t *testing.T, c *cli, name string) (in struct {
	ID              string
	StateDetail     string
	TemplateVersion string
	VMID            string `json:"vmId"`
	Addresses       struct {
		URL string
	}
	DataDisk struct {
		ID string
	}
	Agent struct {
		Status, Version string
	}
}) {
	t.Helper()
	out := c.ok("instances", "get", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &in); err != nil || in.ID == "" {
		t.Fatalf("instances get %s -o json: %v\n%s", name, err, out)
	}
	return in
}

// contextToken reads a context's token from a configuration file.
func contextToken(t *testing.T, config, name string) string {
	t.Helper()
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg cliConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	if x := cfg.context(name); x != nil && x.Token != "" {
		return x.Token
	}
	t.Fatalf("no token for context %s in:\n%s", name, data)
	return ""
}
