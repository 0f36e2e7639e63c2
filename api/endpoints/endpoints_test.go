package endpoints_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/subjects"
)

const (
	architecture = "../../ARCHITECTURE.md"
	beginMarker  = "<!-- endpoints:begin (generated from api/endpoints; make generate) -->\n"
	endMarker    = "<!-- endpoints:end -->"
)

// TestArchitectureListsTheDeclaredEndpoints keeps the endpoint table in
// ARCHITECTURE.md equal to the declarations. FLOTILLA_UPDATE_DOCS=1 (make
// generate) rewrites it.
func TestArchitectureListsTheDeclaredEndpoints(t *testing.T) {
	doc, err := os.ReadFile(architecture)
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	b, e := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if b < 0 || e < b {
		t.Fatalf("%s lacks the markers %q ... %q", architecture, beginMarker, endMarker)
	}
	want := endpoints.Markdown()
	if s[b+len(beginMarker):e] == want {
		return
	}
	if os.Getenv("FLOTILLA_UPDATE_DOCS") == "1" {
		s = s[:b+len(beginMarker)] + want + s[e:]
		if err := os.WriteFile(architecture, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("the endpoint table in %s is out of date: run make generate", architecture)
}

func TestDeclarationsAreWellFormed(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, i := range endpoints.All() {
		if !slices.Contains(subjects.Services, i.Service) {
			t.Errorf("%s: answered by unknown service %q", i.Subject, i.Service)
		}
		if len(i.Callers) == 0 {
			t.Errorf("%s: no callers", i.Subject)
		}
		for _, c := range i.Callers {
			if !slices.Contains(subjects.Services, c) {
				t.Errorf("%s: unknown caller %q", i.Subject, c)
			}
		}
		if !strings.HasPrefix(i.Subject, subjects.Root+".") || i.Doc == "" || i.Request == "" || i.Response == "" {
			t.Errorf("incomplete declaration %+v", i)
		}
		if seen[i.Service+" "+i.Name] {
			t.Errorf("%s.%s declared twice", i.Service, i.Name)
		}
		seen[i.Service+" "+i.Name] = true
	}
	for _, s := range subjects.Services {
		if _, ok := endpoints.Ping(s); !ok && s != subjects.Gateway {
			t.Errorf("service %s has no ping endpoint", s)
		}
	}
}

func TestAtBindsAnInstance(t *testing.T) {
	t.Parallel()
	ep := endpoints.AgentCommand.At("0190c3e1-aaaa")
	if ep.Subject() != "flotilla.agent.0190c3e1-aaaa.cmd" || ep.Info().PerInstance() {
		t.Fatalf("bound subject %s", ep.Subject())
	}
	if !endpoints.AgentCommand.Info().PerInstance() {
		t.Fatal("the unbound endpoint lost its wildcard")
	}
	for _, bad := range []string{"", "a.b", "*", ">"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("At(%q) did not panic", bad)
				}
			}()
			endpoints.AgentCommand.At(bad)
		}()
	}
}
