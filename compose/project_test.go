package compose_test

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"flotilla.dev/flotilla/internal/stack"
)

// This file reads docker-compose.yml as docker compose does: YAML anchors
// and merge keys, ${VAR} interpolation of the whole file (before profiles
// pick the services, as compose does) from an env file, env_file and
// environment in their list and map forms, and the volumes, ports,
// depends_on and healthchecks of every service.

// composeFile is the file under test, beside this test.
const composeFile = "docker-compose.yml"

// scenario is one way to run the compose file: with an env file
// (--env-file; COMPOSE_PROFILES in it picks the profiles) or without, and
// what it must then run.
type scenario struct {
	name string
	// envFile is beside the compose file; "" reads .env if there is one,
	// as compose does.
	envFile string
	// replicas is how many of each Flotilla service it runs, nats how many
	// NATS servers.
	replicas, nats int
}

var scenarios = []scenario{
	{name: "default", replicas: 1, nats: 1},
	{name: "cluster", envFile: "cluster.env", replicas: 2, nats: 3},
}

// project is the compose file as one scenario runs it.
type project struct {
	dir      string
	vars     map[string]string
	profiles []string
	// services are those the scenario starts; all is every service.
	services map[string]*service
	all      map[string]*service
	volumes  map[string]bool
}

type service struct {
	name     string
	raw      map[string]any
	image    string
	profiles []string
	// argv is the entrypoint and the command, as the container runs them.
	argv []string
	// env is the container's environment.
	env       map[string]string
	mounts    []mount
	dependsOn map[string]string // service → condition
	// ports are the published host ports ("ip:port/proto") and the
	// container ports they lead to.
	ports       map[string]string
	healthcheck []string
}

// mount is one entry of a service's volumes.
type mount struct {
	volume   string // a named volume; "" for a bind mount or an anonymous volume
	source   string // a bind mount's host path
	target   string
	readOnly bool
}

// flotilla returns the Flotilla service the container runs
// (flotilla-<service>) and the arguments it gets, or "".
func (s *service) flotilla() (string, []string) {
	if len(s.argv) == 0 {
		return "", nil
	}
	name, ok := strings.CutPrefix(path.Base(s.argv[0]), "flotilla-")
	if !ok || !slices.Contains(stack.StartOrder, name) {
		return "", nil
	}
	return name, s.argv[1:]
}

// resolve finds the mount that holds the container path p: the deepest one,
// and p relative to its target.
func (s *service) resolve(p string) (mount, string, bool) {
	p = path.Clean(p)
	best, rel, found := mount{}, "", false
	for _, m := range s.mounts {
		t := path.Clean(m.target)
		if p != t && !strings.HasPrefix(p, strings.TrimSuffix(t, "/")+"/") {
			continue
		}
		if !found || len(t) > len(best.target) {
			r := strings.TrimPrefix(strings.TrimPrefix(p, t), "/")
			best, rel, found = m, r, true
		}
	}
	return best, rel, found
}

// location names where a container path lands: a named volume and the path
// in it, or a host path.
func (s *service) location(p string) (string, bool) {
	m, rel, ok := s.resolve(p)
	switch {
	case !ok:
		return "", false
	case m.volume != "":
		return "volume " + m.volume + ":/" + rel, true
	case m.source != "":
		return filepath.Join(m.source, filepath.FromSlash(rel)), true
	}
	return "", false // an anonymous volume: nobody else writes it
}

// load reads the compose file as sc runs it. Problems compose would refuse
// the file for fail the test and are skipped over, to report as many at once
// as the test can.
func load(t *testing.T, sc scenario) *project {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	p := &project{dir: dir, vars: map[string]string{}, services: map[string]*service{}, all: map[string]*service{}, volumes: map[string]bool{}}
	envFile, required := sc.envFile, true
	if envFile == "" {
		envFile, required = ".env", false
	}
	if vars, err := readEnvFile(filepath.Join(dir, envFile)); err == nil {
		p.vars = vars
	} else if required || !os.IsNotExist(err) {
		t.Fatalf("env file: %v", err)
	}
	for _, pr := range strings.Split(p.vars["COMPOSE_PROFILES"], ",") {
		if pr = strings.TrimSpace(pr); pr != "" {
			p.profiles = append(p.profiles, pr)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, composeFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	// Compose interpolates the whole file, whichever profiles are on: a
	// ${VAR:?} in a service of another profile still stops `up`.
	walkStrings(doc, "", func(where, s string) string {
		out, err := interpolate(s, p.vars)
		if err != nil {
			t.Errorf("%s: %s: %v", composeFile, where, err)
		}
		return out
	})
	vols, _ := doc["volumes"].(map[string]any)
	for name := range vols {
		p.volumes[name] = true
	}
	svcs, _ := doc["services"].(map[string]any)
	if len(svcs) == 0 {
		t.Fatalf("%s: no services", composeFile)
	}
	for name, v := range svcs {
		raw, _ := v.(map[string]any)
		s := p.parseService(t, name, raw)
		p.all[name] = s
		if len(s.profiles) == 0 || slices.ContainsFunc(s.profiles, func(pr string) bool { return slices.Contains(p.profiles, pr) }) {
			p.services[name] = s
		}
	}
	return p
}

func (p *project) parseService(t *testing.T, name string, raw map[string]any) *service {
	t.Helper()
	s := &service{name: name, raw: raw, env: map[string]string{}, dependsOn: map[string]string{}, ports: map[string]string{}}
	s.image, _ = raw["image"].(string)
	s.profiles = stringList(raw["profiles"])
	s.argv = append(words(raw["entrypoint"]), words(raw["command"])...)
	// env_file first, environment over it.
	var files []string
	switch f := raw["env_file"].(type) {
	case string:
		files = []string{f}
	case []any:
		for _, e := range f {
			switch e := e.(type) {
			case string:
				files = append(files, e)
			case map[string]any:
				if ps, _ := e["path"].(string); ps != "" {
					if req, ok := e["required"].(bool); ok && !req {
						if _, err := os.Stat(filepath.Join(p.dir, ps)); err != nil {
							continue
						}
					}
					files = append(files, ps)
				}
			}
		}
	}
	for _, f := range files {
		vars, err := readEnvFile(filepath.Join(p.dir, f))
		if err != nil {
			t.Errorf("service %s: env_file: %v", name, err)
			continue
		}
		for k, v := range vars {
			s.env[k] = v
		}
	}
	// A variable named without a value takes compose's own environment's.
	passThrough := func(k string) {
		if v, ok := p.vars[k]; ok {
			s.env[k] = v
		} else {
			delete(s.env, k)
		}
	}
	switch e := raw["environment"].(type) {
	case map[string]any:
		for k, v := range e {
			if v == nil {
				passThrough(k)
			} else {
				s.env[k] = fmt.Sprint(v)
			}
		}
	case []any:
		for _, kv := range e {
			k, v, ok := strings.Cut(fmt.Sprint(kv), "=")
			if ok {
				s.env[k] = v
			} else {
				passThrough(k)
			}
		}
	}
	vols, _ := raw["volumes"].([]any)
	for _, v := range vols {
		var m mount
		switch v := v.(type) {
		case string:
			parts := strings.Split(v, ":")
			switch len(parts) {
			case 1:
				m.target = parts[0]
			case 2, 3:
				m.source, m.target = parts[0], parts[1]
				if len(parts) == 3 {
					m.readOnly = slices.Contains(strings.Split(parts[2], ","), "ro")
				}
			default:
				t.Errorf("service %s: volume %q: want SOURCE:TARGET[:MODE]", name, v)
				continue
			}
		case map[string]any:
			m.source, _ = v["source"].(string)
			m.target, _ = v["target"].(string)
			m.readOnly, _ = v["read_only"].(bool)
		}
		if m.source != "" && !strings.HasPrefix(m.source, ".") && !strings.HasPrefix(m.source, "/") && !strings.HasPrefix(m.source, "~") {
			m.volume, m.source = m.source, ""
			if !p.volumes[m.volume] {
				t.Errorf("service %s: volume %q is not declared under the top-level volumes", name, m.volume)
			}
		} else if m.source != "" && !filepath.IsAbs(m.source) {
			m.source = filepath.Join(p.dir, m.source)
		}
		if !path.IsAbs(m.target) {
			t.Errorf("service %s: volume %v: the target must be an absolute path", name, v)
		}
		s.mounts = append(s.mounts, m)
	}
	switch d := raw["depends_on"].(type) {
	case []any:
		for _, n := range d {
			s.dependsOn[fmt.Sprint(n)] = "service_started"
		}
	case map[string]any:
		for n, c := range d {
			cond := "service_started"
			if c, ok := c.(map[string]any); ok {
				if cs, ok := c["condition"].(string); ok {
					cond = cs
				}
			}
			s.dependsOn[n] = cond
		}
	}
	ports, _ := raw["ports"].([]any)
	for _, pt := range ports {
		var host, target, proto string
		switch pt := pt.(type) {
		case string:
			spec, pr, _ := strings.Cut(pt, "/")
			proto = pr
			parts := strings.Split(spec, ":")
			target = parts[len(parts)-1]
			if len(parts) > 1 {
				host = strings.Join(parts[:len(parts)-1], ":")
			}
		case map[string]any:
			host, target = fmt.Sprint(pt["published"]), fmt.Sprint(pt["target"])
			if ip, ok := pt["host_ip"].(string); ok {
				host = ip + ":" + host
			}
			proto, _ = pt["protocol"].(string)
		default:
			host, target = "", fmt.Sprint(pt)
		}
		if host == "" || host == "<nil>" {
			continue // an ephemeral host port: never taken twice
		}
		if !strings.Contains(host, ":") {
			host = "0.0.0.0:" + host
		}
		s.ports[host+"/"+cmpOr(proto, "tcp")] = target
	}
	if hc, ok := raw["healthcheck"].(map[string]any); ok {
		if dis, _ := hc["disable"].(bool); !dis {
			s.healthcheck = words(hc["test"])
		}
	}
	return s
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// words reads an entrypoint or command: a list, or a string split into
// words.
func words(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.Fields(v)
	case []any:
		return stringList(v)
	}
	return nil
}

func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		out = append(out, fmt.Sprint(e))
	}
	return out
}

// walkStrings replaces every string value in the document (keys are left
// alone) with f's, where naming its place.
func walkStrings(v any, where string, f func(where, s string) string) any {
	switch v := v.(type) {
	case string:
		return f(where, v)
	case map[string]any:
		for k, e := range v {
			v[k] = walkStrings(e, strings.TrimPrefix(where+"."+k, "."), f)
		}
	case []any:
		for i, e := range v {
			v[i] = walkStrings(e, fmt.Sprintf("%s[%d]", where, i), f)
		}
	}
	return v
}

// interpolate substitutes $VAR, ${VAR} and ${VAR:-default}, ${VAR-default},
// ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt} (nested in the default
// too) from vars, as compose does; $$ is a literal $.
func interpolate(s string, vars map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			i++
			continue
		}
		switch n := s[i+1]; {
		case n == '$':
			b.WriteByte('$')
			i += 2
		case n == '{':
			depth, end := 0, -1
			for k := i + 1; k < len(s) && end < 0; k++ {
				switch s[k] {
				case '{':
					depth++
				case '}':
					if depth--; depth == 0 {
						end = k
					}
				}
			}
			if end < 0 {
				return "", fmt.Errorf("%q: unclosed ${", s)
			}
			v, err := substitute(s[i+2:end], vars)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i = end + 1
		case n == '_' || n >= 'A' && n <= 'Z' || n >= 'a' && n <= 'z':
			j := i + 1
			for j < len(s) && isNameChar(s[j]) {
				j++
			}
			b.WriteString(vars[s[i+1:j]])
			i = j
		default:
			b.WriteByte('$')
			i++
		}
	}
	return b.String(), nil
}

func isNameChar(c byte) bool {
	return c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

func substitute(expr string, vars map[string]string) (string, error) {
	j := 0
	for j < len(expr) && isNameChar(expr[j]) {
		j++
	}
	name, rest := expr[:j], expr[j:]
	if name == "" {
		return "", fmt.Errorf("${%s}: bad substitution", expr)
	}
	val, set := vars[name]
	if rest == "" {
		return val, nil
	}
	op := ""
	for _, o := range []string{":-", ":?", ":+", "-", "?", "+"} {
		if strings.HasPrefix(rest, o) {
			op = o
			break
		}
	}
	if op == "" {
		return "", fmt.Errorf("${%s}: bad substitution", expr)
	}
	arg := rest[len(op):]
	missing := !set || strings.HasPrefix(op, ":") && val == ""
	switch op[len(op)-1] {
	case '-':
		if missing {
			return interpolate(arg, vars)
		}
	case '?':
		if missing {
			msg, _ := interpolate(arg, vars)
			return "", fmt.Errorf("required variable %s is missing a value: %s", name, msg)
		}
	case '+':
		if missing {
			return "", nil
		}
		return interpolate(arg, vars)
	}
	return val, nil
}

// readEnvFile reads KEY=VALUE lines, as compose reads an env file: blank
// lines and # comments skipped, quotes around a value removed.
func readEnvFile(name string) (map[string]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE", name, n)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		} else if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		vars[strings.TrimSpace(k)] = v
	}
	return vars, sc.Err()
}

// sortedNames lists the services of m by name.
func sortedNames(m map[string]*service) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func TestInterpolateAsCompose(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"SET": "x", "EMPTY": ""}
	for in, want := range map[string]string{
		"$SET-${SET}":             "x-x",
		"${UNSET:-d}/${EMPTY:-d}": "d/d",
		"${UNSET-d}/${EMPTY-d}":   "d/",
		"${SET:+alt}${EMPTY:+no}": "alt",
		"${EMPTY+yes}${UNSET+no}": "yes",
		"$$SET ${UNSET}":          "$SET ",
		"${UNSET:-${SET}-n}":      "x-n",
	} {
		if got, err := interpolate(in, vars); err != nil || got != want {
			t.Errorf("interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"${EMPTY:?say}", "${UNSET?say}", "${SET"} {
		if got, err := interpolate(in, vars); err == nil {
			t.Errorf("interpolate(%q) = %q, want an error", in, got)
		}
	}
}
