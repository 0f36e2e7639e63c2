package msgcheck_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/msgcheck"
)

func template() *inventoryv1.Template {
	return &inventoryv1.Template{Name: "t", Provider: "local", DataDiskGb: 1,
		Tags: map[string]string{"team": "data"},
		SetupActions: []*inventoryv1.SetupAction{
			{Type: "script", Script: "echo hi"},
			{Type: "packages", Packages: []string{"curl", "jq"}},
		}}
}

func TestNULIsFoundWhereverItIs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		spoil func(*inventoryv1.Template)
		path  string
	}{
		{"top-level string", func(tp *inventoryv1.Template) { tp.Name = "a\x00b" }, "name"},
		{"nested string", func(tp *inventoryv1.Template) { tp.SetupActions[0].Script = "echo\x00" }, "setupActions[0].script"},
		{"list of strings", func(tp *inventoryv1.Template) { tp.SetupActions[1].Packages[1] = "\x00" }, "setupActions[1].packages[1]"},
		{"map value", func(tp *inventoryv1.Template) { tp.Tags["team"] = "x\x00" }, `tags["team"]`},
		{"map key", func(tp *inventoryv1.Template) { tp.Tags["a\x00"] = "x" }, "tags"},
	}
	for _, c := range cases {
		tp := template()
		if path, found := msgcheck.NUL(&inventoryv1.CreateTemplateRequest{Template: tp}); found {
			t.Fatalf("clean template: NUL at %s", path)
		}
		c.spoil(tp)
		// The resource a request carries is named as in the REST body.
		path, found := msgcheck.NUL(&inventoryv1.CreateTemplateRequest{Template: tp})
		if !found || path != c.path {
			t.Errorf("%s: found=%v at %q, want %q", c.name, found, path, c.path)
		}
	}
	// A request's own scalar fields keep their names.
	if path, _ := msgcheck.NUL(&inventoryv1.GetTemplateRequest{Id: "\x00"}); path != "id" {
		t.Errorf("request field: %q", path)
	}
}

func TestLargestNamesTheFieldToShrink(t *testing.T) {
	t.Parallel()
	tp := template()
	tp.SetupActions = append(tp.SetupActions, &inventoryv1.SetupAction{Type: "file", Path: "big", Content: strings.Repeat("x", 1<<20)})
	if got := msgcheck.Largest(&inventoryv1.CreateTemplateRequest{Template: tp}); got != "setupActions[2].content" {
		t.Errorf("largest: %q", got)
	}
	tp.Tags = map[string]string{"k": strings.Repeat("y", 2<<20)}
	if got := msgcheck.Largest(tp); got != "tags" {
		t.Errorf("largest: %q", got)
	}
	if got := msgcheck.Largest(&inventoryv1.Template{}); got != "" || proto.Size(&inventoryv1.Template{}) != 0 {
		t.Errorf("empty message: %q", got)
	}
}

func TestScrubLeavesNoNULAndNoLongString(t *testing.T) {
	t.Parallel()
	tp := template()
	tp.Name, tp.SetupActions[0].Script, tp.SetupActions[1].Packages[0], tp.Tags["team"] = "a\x00", "\x00\x00", "c\x00url", "x\x00"
	tp.SetupActions[1].Packages[1] = strings.Repeat("é", 100) // 200 bytes
	msgcheck.Scrub(tp, 64)
	if path, found := msgcheck.NUL(tp); found {
		t.Fatalf("NUL left at %s", path)
	}
	if tp.Name != "a\uFFFD" || tp.SetupActions[1].Packages[0] != "c\uFFFDurl" {
		t.Errorf("scrubbed: %q %q", tp.Name, tp.SetupActions[1].Packages)
	}
	long := tp.SetupActions[1].Packages[1]
	if len(long) > 64 || !strings.HasSuffix(long, msgcheck.CutMarker) || !utf8.ValidString(long) {
		t.Errorf("a long string cut to %q (%d bytes)", long, len(long))
	}
}

func TestRuneCutNeverSplitsACharacter(t *testing.T) {
	t.Parallel()
	s := "aé€😀"
	for n := range len(s) + 2 {
		i := msgcheck.RuneCut(s, n)
		if i > n && i != len(s) || !utf8.ValidString(s[:i]) || n-i >= utf8.UTFMax {
			t.Errorf("RuneCut(%q, %d) = %d", s, n, i)
		}
	}
}

func TestAResourceKeepsItsMessageFieldNames(t *testing.T) {
	t.Parallel()
	in := &inventoryv1.Instance{Name: "i", Ssl: &inventoryv1.SslSettings{Sans: []string{"a.example.test", "b\x00"}}}
	if path, _ := msgcheck.NUL(in); path != "ssl.sans[1]" {
		t.Errorf("NUL in a resource: %q", path)
	}
	if path, _ := msgcheck.NUL(&inventoryv1.CreateInstanceRequest{Instance: in}); path != "ssl.sans[1]" {
		t.Errorf("NUL in a request's resource: %q", path)
	}
	in.Ssl.Sans[1] = strings.Repeat("b", 1000)
	if got := msgcheck.Largest(in); got != "ssl.sans[1]" {
		t.Errorf("largest of a resource: %q", got)
	}
}
