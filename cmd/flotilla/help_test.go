package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// TestEveryCommandHasAnExample: every command an operator sees shows an
// example in its --help.
func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(*cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		n++
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRoot()
	walk(root)
	if n < 40 {
		t.Fatalf("walked %d commands only", n)
	}
}

// TestDocumentsKeepWhatTheFileSays: a file's fields reach the API as
// written: a string stays the text written, a false is sent, the fields the
// server sets are dropped, a write-only field left empty is not sent, and
// an unknown field or a wrong type names the field.
func TestDocumentsKeepWhatTheFileSays(t *testing.T) {
	in := strings.NewReader(`id: 01a22905-127b-7a62-abb8-14abc8d0fef0
name: lab
provider: local
httpsStrategy: custom-certificate
assignPublicIp: false
version: 3
createTime: "2026-01-02T15:04:05Z"
customCertificate: {certificatePem: "PEM", privateKeyPem: "", privateKeyId: key-1}
---
name: tls
provider: local
httpsStrategy: none
`)
	docs, err := readDocuments("-", in, networks)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0].name != "lab" || docs[1].name != "tls" || docs[1].where != "standard input#2" {
		t.Fatalf("documents: %+v", docs)
	}
	body, err := docs[0].body()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"assignPublicIp":false,"customCertificate":{"certificatePem":"PEM"},"httpsStrategy":"custom-certificate","name":"lab","provider":"local","version":3}`
	if string(body) != want {
		t.Fatalf("body %s\nwant %s", body, want)
	}

	tmpl := "name: small\nprovider: local\ndataDiskGb: 1\nsetupActions:\n  - {type: file, path: a, content: 1, mode: 0644}\n"
	docs, err = readDocuments("-", strings.NewReader(tmpl), templates)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := docs[0].body(); !strings.Contains(string(body), `"content":"1","mode":"0644"`) {
		t.Fatalf("strings as written: %s", body)
	}
	for file, wantErr := range map[string]string{
		"name: a\nsetupActions:\n  - {typ: file}\n": "setupActions[0].typ: unknown field (line 3)",
		"name: a\ndataDiskGb: many\n":               `invalid value for int32 field dataDiskGb: "many"`,
		"name: a\n---\nname: a\n":                   `template "a" is in the file twice`,
		"- a\n- b\n":                                "must be a mapping of fields",
		"":                                          "holds no template",
	} {
		if _, err := readDocuments("-", strings.NewReader(file), templates); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: %v, want %q", file, err, wantErr)
		}
	}
}

// TestProgressOnATerminal: on a terminal the steps are one block of lines
// redrawn in place, the steps between two reads shown done.
func TestProgressOnATerminal(t *testing.T) {
	var b bytes.Buffer
	in := &inventoryv1.Instance{Name: "web-1", State: "provisioning", StateDetail: "queued", DesiredState: "provisioned"}
	p := newProgress(&b, true, in, vocab.ActionProvision)
	now := time.Now()
	for _, detail := range []string{"queued", "waiting-for-agent"} {
		in.StateDetail = detail
		if done, err := p.observe(in, now); done || err != nil {
			t.Fatal(done, err)
		}
		p.draw(now)
		now = now.Add(time.Second)
	}
	in.State, in.StateDetail = "failed", "running-setup: setupActions[2]: script exited with code 3"
	done, err := p.observe(in, now)
	p.draw(now)
	if !done || err == nil || err.Error() != "provision of web-1 failed at running-setup: setupActions[2]: script exited with code 3" {
		t.Fatalf("failed: %v %v", done, err)
	}
	out := b.String()
	last := out[strings.LastIndex(out, "\x1b[4A"):] // the last redraw: up the four lines before
	for _, want := range []string{"✓ queued", "✓ allocating-disk", "✓ launching-vm", "✓ waiting-for-agent", "✗ running-setup      setupActions[2]: script exited with code 3", "web-1 failed at running-setup"} {
		if !strings.Contains(last, want) {
			t.Errorf("last redraw lacks %q:\n%q", want, last)
		}
	}
}
