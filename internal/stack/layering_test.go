package stack_test

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "flotilla.dev/flotilla"

// TestServicesAndLibsImportOnlyDownwards checks the layering with the go
// tool: no services/X package depends on services/Y, and no libs/ package
// depends on services/ at all. Shared words live in api/, shared mechanics in
// libs/, and only this composition root (and cmd/) sees every service.
func TestServicesAndLibsImportOnlyDownwards(t *testing.T) {
	t.Parallel()
	// One line per package: its import path, then every package it depends on.
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Deps}} {{.}}{{end}}",
		module+"/services/...", module+"/libs/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 10 {
		t.Fatalf("go list found only %d packages", len(lines))
	}
	for _, line := range lines {
		f := strings.Fields(line)
		pkg, own := f[0], area(f[0])
		for _, d := range f[1:] {
			if !strings.HasPrefix(d, module+"/services/") {
				continue
			}
			if strings.HasPrefix(pkg, module+"/libs/") {
				t.Errorf("%s depends on %s: libs/ must not import services/", pkg, d)
			} else if area(d) != own {
				t.Errorf("%s depends on %s: a service must not import another service", pkg, d)
			}
		}
	}
}

// area is "services/<svc>" for a package of that service.
func area(pkg string) string {
	parts := strings.SplitN(strings.TrimPrefix(pkg, module+"/"), "/", 3)
	if len(parts) < 2 {
		return pkg
	}
	return parts[0] + "/" + parts[1]
}

// TestOnlyLibsSendRawRequests keeps every request/reply call typed: outside
// libs/, code (tests included) calls endpoints through rpc.Call, never
// natsx.Request with a subject of its own.
func TestOnlyLibsSendRawRequests(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	needle := "natsx." + "Request(" // spelled so this file does not match itself
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "libs" || rel == "api/gen" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for n := 1; sc.Scan(); n++ {
			if strings.Contains(sc.Text(), needle) {
				t.Errorf("%s:%d sends a raw bus request; declare the endpoint in api/endpoints and use rpc.Call", rel, n)
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
