package compose_test

import (
	"flag"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/busauth"
)

// serverConfigFile is the fragment `flotilla admin bus-credentials` writes
// beside the credentials, for every NATS server to include.
const serverConfigFile = "nats-auth.conf"

// initOutputs finds what the project's one-off services write with
// `flotilla admin`: every identity's bus credentials and the NATS fragment
// (bus-credentials --dir DIR init), the master key (kms-key --file FILE); by
// location (service.location), the service that writes it.
func initOutputs(t *testing.T, p *project) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range sortedNames(p.services) {
		s := p.services[name]
		argv := s.argv
		if len(argv) < 3 || path.Base(argv[0]) != "flotilla" || argv[1] != "admin" {
			continue
		}
		flagValue := func(f string) string {
			for i, a := range argv {
				if v, ok := strings.CutPrefix(a, f+"="); ok {
					return v
				}
				if a == f && i+1 < len(argv) {
					return argv[i+1]
				}
			}
			return ""
		}
		var files []string
		switch {
		case argv[2] == "bus-credentials" && slices.Contains(argv, "init"):
			dir := flagValue("--dir")
			if dir == "" {
				t.Errorf("service %s: bus-credentials init without --dir writes into a data directory no other service reads", name)
				continue
			}
			for _, id := range busauth.Identities() {
				files = append(files, path.Join(dir, id+".creds"))
			}
			files = append(files, path.Join(dir, serverConfigFile))
		case argv[2] == "kms-key":
			files = append(files, flagValue("--file"))
		}
		for _, f := range files {
			m, _, ok := s.resolve(f)
			if !ok || m.volume == "" || m.readOnly {
				t.Errorf("service %s writes %s where no other container sees it: mount a named volume there, writable", name, f)
				continue
			}
			loc, _ := s.location(f)
			out[loc] = name
		}
	}
	return out
}

// TestComposeFlotillaServicesStart builds each flotilla-<service>'s
// environment as compose would, loads it with the binary's own loader and
// validates it, then checks that every file it names is on a mount of that
// container, written there by a one-off service it waits for, or (the CA,
// the local provider's root) on a writable named volume it shares with its
// replicas; that it waits for the NATS servers and PostgreSQL it connects
// to; and the rules of a development cluster (stream replicas, the local
// provider, the agent gateway's names).
func TestComposeFlotillaServicesStart(t *testing.T) {
	t.Parallel()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			p := load(t, sc)
			outputs := initOutputs(t, p)
			natsServers := natsServices(p)
			configs := map[string][]stack.EnvConfig{}
			where := map[string][]string{} // service → the locations of its created files, per replica
			for _, name := range sortedNames(p.services) {
				s := p.services[name]
				svc, args := s.flotilla()
				if svc == "" {
					continue
				}
				ec, err := stack.LoadEnvConfig(svc, s.env, args)
				if err != nil {
					t.Errorf("service %s (flotilla-%s): %v", name, svc, err)
					continue
				}
				configs[svc] = append(configs[svc], ec)
				if err := ec.ValidateSettings(svc); err != nil {
					t.Errorf("service %s (flotilla-%s) would not start:\n%v", name, svc, err)
				}
				var created []string
				for _, f := range ec.Files(svc) {
					if !path.IsAbs(f.Path) {
						t.Errorf("service %s: %s=%s: give an absolute path in the container", name, f.Var, f.Path)
						continue
					}
					m, _, ok := s.resolve(f.Path)
					loc, _ := s.location(f.Path)
					switch {
					case !ok:
						t.Errorf("service %s: %s=%s is on no volume of the container", name, f.Var, f.Path)
					case !f.Given && (m.volume == "" || m.readOnly):
						t.Errorf("service %s: %s=%s: the service creates it: mount a writable named volume there, so that it outlives the container", name, f.Var, f.Path)
					case !f.Given:
						created = append(created, f.Var+" "+loc)
					case m.volume == "":
						if _, err := os.Stat(loc); err != nil {
							t.Errorf("service %s: %s=%s: %v", name, f.Var, f.Path, err)
						}
					case outputs[loc] == "":
						t.Errorf("service %s: %s=%s: nothing writes it (%s) before the service starts", name, f.Var, f.Path, loc)
					case s.dependsOn[outputs[loc]] != "service_completed_successfully":
						t.Errorf("service %s: %s=%s is written by %s: depend on it with condition service_completed_successfully", name, f.Var, f.Path, outputs[loc])
					}
				}
				if base := path.Base(ec.NATSCreds); ec.NATSCreds != "" && base != svc+".creds" {
					t.Errorf("service %s: FLOTILLA_NATS_CREDS=%s: flotilla-%s connects as itself, with %s.creds", name, ec.NATSCreds, svc, svc)
				}
				slices.Sort(created)
				where[svc] = append(where[svc], strings.Join(created, ", "))
				// Every server it connects to is in the project, and one of
				// them is healthy first (a default service cannot wait for
				// a server of the cluster profile; the client tries them all).
				waits := false
				for _, u := range strings.Split(ec.NATSURL, ",") {
					host := urlHost(u)
					if !slices.Contains(natsServers, host) {
						t.Errorf("service %s: FLOTILLA_NATS_URL %s: %q is none of the NATS servers %v", name, u, host, natsServers)
					}
					waits = waits || s.dependsOn[host] == "service_healthy"
				}
				if !waits {
					t.Errorf("service %s: connects to NATS (%s): depend on a server with condition service_healthy", name, ec.NATSURL)
				}
				if n := len(strings.Split(ec.NATSURL, ",")); n != sc.nats {
					t.Errorf("service %s: FLOTILLA_NATS_URL names %d of the %d NATS servers: with one down, a restarting service could not connect", name, n, sc.nats)
				}
				if svc == subjects.Inventory || svc == subjects.Secrets {
					svcURL, ownerURL := parseURL(ec.DatabaseURL), parseURL(ec.DatabaseOwnerURL)
					if ownerURL == nil || svcURL == nil || svcURL.User.Username() == ownerURL.User.Username() {
						t.Errorf("service %s: give FLOTILLA_DATABASE_URL a service role that only reads and writes rows, and FLOTILLA_DATABASE_OWNER_URL the schema owner that migrates, as in production", name)
					}
					for _, u := range []*url.URL{svcURL, ownerURL} {
						if u == nil {
							continue
						}
						if _, ok := p.services[u.Hostname()]; !ok {
							t.Errorf("service %s: PostgreSQL %q is not a service of the project", name, u.Hostname())
						} else if s.dependsOn[u.Hostname()] != "service_healthy" {
							t.Errorf("service %s: connects to %s: depend on it with condition service_healthy", name, u.Hostname())
						}
					}
				}
				if ec.StreamReplicas != sc.nats {
					t.Errorf("service %s: FLOTILLA_STREAM_REPLICAS=%d with %d NATS servers, want %d", name, ec.StreamReplicas, sc.nats, sc.nats)
				}
				// Decision: the provisioner may run without a local root
				// (external only), so EnvConfig does not demand one; a
				// development stack on one host runs the local provider.
				// Several replicas cannot share it: its VMs are processes in
				// one container, which another replica neither sees nor
				// stops.
				if svc == subjects.Provisioner {
					if sc.replicas == 1 && ec.LocalRoot == "" {
						t.Errorf("service %s: FLOTILLA_LOCAL_ROOT: is required for development (the local provider)", name)
					}
					if sc.replicas > 1 && ec.LocalRoot != "" {
						t.Errorf("service %s: FLOTILLA_LOCAL_ROOT=%s with %d provisioners: the local provider's VMs are processes in one container, which the other replicas cannot reach; leave it empty", name, ec.LocalRoot, sc.replicas)
					}
				}
				// What the container publishes, it must listen for beyond
				// its own loopback.
				for host, target := range s.ports {
					if !listensOn(ec, svc, target) {
						t.Errorf("service %s: publishes %s to container port %s, where flotilla-%s does not listen on a reachable address", name, host, target, svc)
					}
				}
			}
			for _, svc := range stack.StartOrder {
				if n := len(configs[svc]); n < sc.replicas {
					t.Errorf("flotilla-%s runs %d times, want %d", svc, n, sc.replicas)
				}
				// Replicas share what they create (one fleet CA).
				for _, w := range where[svc][min(1, len(where[svc])):] {
					if w != where[svc][0] {
						t.Errorf("flotilla-%s replicas keep their files apart: %q and %q", svc, where[svc][0], w)
					}
				}
			}
			// Agents dial the agent gateway by the name the provisioner and
			// the gateway give them: every agent gateway's certificate names it.
			for _, giver := range append(slices.Clone(configs[subjects.Provisioner]), configs[subjects.Gateway]...) {
				host, _, err := net.SplitHostPort(giver.AgentGatewayAddr)
				if err != nil {
					continue // reported by ValidateSettings
				}
				for _, gw := range configs[subjects.AgentGW] {
					if !slices.Contains(gw.AgentServerNames, host) {
						t.Errorf("FLOTILLA_AGENT_GATEWAY_ADDR=%s, but an agent gateway's FLOTILLA_AGENT_SERVER_NAMES %v lack %q: agents would refuse its certificate", giver.AgentGatewayAddr, gw.AgentServerNames, host)
					}
				}
			}
		})
	}
}

// listensOn reports whether a flotilla-<svc> with ec listens on container
// port target on an address other containers and the host reach.
func listensOn(ec stack.EnvConfig, svc, target string) bool {
	addrs := []string{ec.MetricsAddr}
	switch svc {
	case subjects.Gateway:
		addrs = append(addrs, ec.HTTPAddr, ec.GRPCAddr)
	case subjects.AgentGW:
		addrs = append(addrs, ec.AgentAddr)
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || port != target {
			continue
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return true
		}
	}
	return false
}

func urlHost(s string) string {
	u := parseURL(strings.TrimSpace(s))
	if u == nil {
		return ""
	}
	return u.Hostname()
}

func parseURL(s string) *url.URL {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil
	}
	return u
}

// TestComposeTopology checks what docker compose itself would refuse or
// get wrong: a dependency on a service that is not there (or not started
// with these profiles), waiting for the health of a service that has no
// health check, a host port published twice; and that every Flotilla
// service runs from the image compose/Dockerfile builds, reports its health
// (the gateway by /api/v1/status), and restarts when it fails.
func TestComposeTopology(t *testing.T) {
	t.Parallel()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			p := load(t, sc)
			published := map[string]string{}
			for _, name := range sortedNames(p.services) {
				s := p.services[name]
				for dep, cond := range s.dependsOn {
					d, ok := p.services[dep]
					switch {
					case p.all[dep] == nil:
						t.Errorf("service %s depends on %q, which does not exist", name, dep)
					case !ok:
						t.Errorf("service %s depends on %q, which profiles %v do not start", name, dep, p.profiles)
					case cond == "service_healthy" && len(d.healthcheck) == 0:
						t.Errorf("service %s waits for %s to be healthy, which has no health check", name, dep)
					case !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, cond):
						t.Errorf("service %s: depends_on %s: unknown condition %q", name, dep, cond)
					}
				}
				for host := range s.ports {
					if other, ok := published[host]; ok {
						t.Errorf("host port %s is published by both %s and %s", host, other, name)
					}
					published[host] = name
				}
				svc, _ := s.flotilla()
				if svc == "" {
					continue
				}
				build, _ := s.raw["build"].(map[string]any)
				ctx, _ := build["context"].(string)
				df, _ := build["dockerfile"].(string)
				if ctx == "" || filepath.Join(p.dir, ctx, df) != filepath.Join(p.dir, "Dockerfile") {
					t.Errorf("service %s: build: context %q, dockerfile %q: build the image of compose/Dockerfile from the repository's root", name, ctx, df)
				}
				if len(s.healthcheck) == 0 {
					t.Errorf("service %s: no health check: the services that wait for it could not", name)
				}
				if svc == subjects.Gateway && !strings.Contains(strings.Join(s.healthcheck, " "), "/api/v1/status") {
					t.Errorf("service %s: the health check %q does not ask /api/v1/status", name, s.healthcheck)
				}
				if r, _ := s.raw["restart"].(string); r == "" || r == "no" {
					t.Errorf("service %s: restart %q: a service that fails is not restarted", name, r)
				}
			}
		})
	}
}

// natsServices lists the NATS servers of the project (the nats image).
func natsServices(p *project) []string {
	var out []string
	for _, name := range sortedNames(p.services) {
		if img := p.services[name].image; strings.HasPrefix(img, "nats:") || strings.HasPrefix(img, "docker.io/library/nats:") {
			out = append(out, name)
		}
	}
	return out
}

var (
	natsTag = regexp.MustCompile(`:v?(\d+)\.(\d+)`)
	include = regexp.MustCompile(`(?m)^\s*include\s+["']?([^"'\s;]+)`)
	route   = regexp.MustCompile(`(?m)^\s*server\s+\S+\s+([A-Za-z0-9_.-]+):(\d+)`)
)

// TestComposeNATSServers loads each NATS server's configuration as
// nats-server does (its command line, the configuration file it names, the
// bus credentials' fragment that file includes, at the path the container
// sees), and checks JetStream on a named volume, the operator trusted,
// unique server names, routes to every other server of a cluster, and an
// image of the server version Flotilla embeds (go.mod).
func TestComposeNATSServers(t *testing.T) {
	t.Parallel()
	want := embeddedNATSVersion(t)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			p := load(t, sc)
			outputs := initOutputs(t, p)
			servers := natsServices(p)
			if len(servers) != sc.nats {
				t.Fatalf("NATS servers %v, want %d", servers, sc.nats)
			}
			names := map[string]string{}
			for _, name := range servers {
				s := p.services[name]
				if m := natsTag.FindStringSubmatch(s.image); m == nil || m[1]+"."+m[2] != want {
					t.Errorf("service %s: image %s: want the nats-server Flotilla embeds and tests against, %s (go.mod)", name, s.image, want)
				}
				// The container's files, in a directory standing in for its
				// root: the configuration from its bind mount, the fragment
				// from the bus credentials.
				root := t.TempDir()
				args := slices.Clone(s.argv)
				if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
					args = args[1:] // nats-server itself
				}
				conf := ""
				for i, a := range args {
					if (a == "-c" || a == "--config") && i+1 < len(args) {
						conf = args[i+1]
						args[i+1] = filepath.Join(root, filepath.FromSlash(conf))
					}
				}
				if conf == "" {
					t.Errorf("service %s: no --config: the server would run without the bus authority and JetStream", name)
					continue
				}
				host, ok := s.location(conf)
				if m, _, _ := s.resolve(conf); !ok || m.source == "" {
					t.Errorf("service %s: --config %s is not a file of the repository mounted into the container", name, conf)
					continue
				}
				text, err := os.ReadFile(host)
				if err != nil {
					t.Errorf("service %s: %v", name, err)
					continue
				}
				writeFile(t, filepath.Join(root, filepath.FromSlash(conf)), text)
				fragments := 0
				for _, m := range include.FindAllStringSubmatch(string(text), -1) {
					// nats-server reads includes relative to the file.
					inc := path.Join(path.Dir(conf), m[1])
					loc, _ := s.location(inc)
					if path.Base(inc) != serverConfigFile || outputs[loc] == "" {
						t.Errorf("service %s: include %s (%s in the container, %s): no bus-credentials init writes it", name, m[1], inc, loc)
						continue
					}
					if s.dependsOn[outputs[loc]] != "service_completed_successfully" {
						t.Errorf("service %s: includes what %s writes: depend on it with condition service_completed_successfully", name, outputs[loc])
					}
					a, err := busauth.LoadOrCreate(t.TempDir())
					if err != nil {
						t.Fatal(err)
					}
					frag, err := a.ServerConfig()
					if err != nil {
						t.Fatal(err)
					}
					writeFile(t, filepath.Join(root, filepath.FromSlash(inc)), []byte(frag))
					fragments++
				}
				if fragments == 0 {
					t.Errorf("service %s: %s does not include the bus authority's %s", name, conf, serverConfigFile)
					continue
				}
				opts, err := configureNATS(args)
				if err != nil {
					t.Errorf("service %s: nats-server %v: %v", name, s.argv, err)
					continue
				}
				if !opts.JetStream {
					t.Errorf("service %s: JetStream is off", name)
				}
				if m, _, ok := s.resolve(opts.StoreDir); opts.StoreDir == "" || !ok || m.volume == "" || m.readOnly {
					t.Errorf("service %s: JetStream store_dir %q: keep it on a writable named volume", name, opts.StoreDir)
				}
				if len(opts.TrustedOperators) == 0 {
					t.Errorf("service %s: trusts no operator: the bus credentials would be refused", name)
				}
				if opts.ServerName == "" {
					t.Errorf("service %s: no server name", name)
				} else if other, ok := names[opts.ServerName]; ok {
					t.Errorf("services %s and %s are both server %q", other, name, opts.ServerName)
				}
				names[opts.ServerName] = name
				var routes []string
				for _, r := range opts.Routes {
					routes = append(routes, r.Hostname())
				}
				for _, other := range servers {
					if other != name && !slices.Contains(routes, other) {
						t.Errorf("service %s: no route to %s (routes %v)", name, other, routes)
					}
				}
				if sc.nats > 1 && (opts.Cluster.Name == "" || opts.Cluster.Port == 0) {
					t.Errorf("service %s: one of %d servers, without a cluster name and port", name, sc.nats)
				}
				for _, r := range routes {
					if !slices.Contains(servers, r) {
						t.Errorf("service %s: route to %q, which is not a NATS server here", name, r)
					}
				}
			}
		})
	}
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// natsFlags serializes server.ConfigureOptions, which stores what it parsed
// in the package variable server.FlagSnapshot.
var natsFlags sync.Mutex

// configureNATS parses a nats-server command line as the server does.
func configureNATS(args []string) (*server.Options, error) {
	natsFlags.Lock()
	defer natsFlags.Unlock()
	return server.ConfigureOptions(flag.NewFlagSet("nats-server", flag.ContinueOnError), args, nil, nil, nil)
}

// embeddedNATSVersion is the major.minor of the nats-server module in
// go.mod: the server Flotilla embeds and its tests run against.
func embeddedNATSVersion(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+)\.(\d+)\.`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod: no github.com/nats-io/nats-server/v2")
	}
	return string(m[1]) + "." + string(m[2])
}

// TestComposeLoadBalancer checks that HAProxy, where the project runs it,
// sends traffic to every gateway and agent gateway replica and to nothing
// else.
func TestComposeLoadBalancer(t *testing.T) {
	t.Parallel()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			p := load(t, sc)
			var proxies []string
			for _, name := range sortedNames(p.services) {
				if strings.HasPrefix(p.services[name].image, "haproxy:") {
					proxies = append(proxies, name)
				}
			}
			if sc.replicas > 1 && len(proxies) == 0 {
				t.Fatalf("no HAProxy in front of %d replicas", sc.replicas)
			}
			for _, name := range proxies {
				s := p.services[name]
				cfg, ok := s.location("/usr/local/etc/haproxy/haproxy.cfg")
				if m, _, _ := s.resolve("/usr/local/etc/haproxy/haproxy.cfg"); !ok || m.source == "" {
					t.Errorf("service %s: no haproxy.cfg mounted from the repository", name)
					continue
				}
				text, err := os.ReadFile(cfg)
				if err != nil {
					t.Fatal(err)
				}
				servers := map[string]bool{} // host:port
				for _, m := range route.FindAllStringSubmatch(string(text), -1) {
					servers[m[1]+":"+m[2]] = true
					if _, ok := p.services[m[1]]; !ok {
						t.Errorf("service %s: server %s:%s is not a service here", name, m[1], m[2])
					} else if s.dependsOn[m[1]] == "" {
						t.Errorf("service %s: sends traffic to %s without depending on it", name, m[1])
					}
				}
				for _, n := range sortedNames(p.services) {
					svc, args := p.services[n].flotilla()
					ec, err := stack.LoadEnvConfig(svc, p.services[n].env, args)
					if err != nil {
						continue // reported by TestComposeFlotillaServicesStart
					}
					var addrs []string
					switch svc {
					case subjects.Gateway:
						addrs = []string{ec.HTTPAddr, ec.GRPCAddr}
					case subjects.AgentGW:
						addrs = []string{ec.AgentAddr}
					}
					for _, a := range addrs {
						_, port, _ := net.SplitHostPort(a)
						if !servers[n+":"+port] {
							t.Errorf("service %s: no server %s:%s: %s listens there", name, n, port, n)
						}
					}
				}
			}
		})
	}
}

// TestDockerfileBuildsEveryBinary checks that the image holds every
// command of cmd/: the six services, flotilla and flotilla-agent.
func TestDockerfileBuildsEveryBinary(t *testing.T) {
	t.Parallel()
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(df), "./cmd/...") {
		return
	}
	cmds, err := os.ReadDir(filepath.Join("..", "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		if c.IsDir() && !strings.Contains(string(df), "./cmd/"+c.Name()) {
			t.Errorf("Dockerfile: does not build cmd/%s", c.Name())
		}
	}
}
