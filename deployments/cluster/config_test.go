// Package cluster holds the HA cluster's configuration files and local-cluster,
// which runs them as three hosts on one machine. Its tests check the files as
// each program reads them; hatest/ runs the cluster itself (make test-ha).
package cluster_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
)

var services = []string{subjects.Inventory, subjects.CA, subjects.Secrets, subjects.Provisioner, subjects.AgentGW, subjects.Gateway}

// TestRenderedConfigsAreAcceptedByTheirPrograms renders every host's files as
// local-cluster does and has each program check its own: the services'
// settings through the very loader the flotilla-<service> binaries use, the
// NATS server's configuration with nats-server -t (TLS files, the included
// accounts), HAProxy's with haproxy -c, Patroni's and etcd's for the settings
// the cluster's guarantees rest on.
func TestRenderedConfigsAreAcceptedByTheirPrograms(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	for _, b := range [][]string{
		{"build", "-o", bin + "/", "flotilla.dev/flotilla/cmd/flotilla"},
		{"build", "-o", filepath.Join(bin, "nats-server"), "github.com/nats-io/nats-server/v2"},
	} {
		if out, err := exec.Command("go", b...).CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", b, err, out)
		}
	}
	// local-cluster checks every binary it would start is there.
	for _, s := range append(services, "agent") {
		if err := os.Symlink(filepath.Join(bin, "flotilla"), filepath.Join(bin, "flotilla-"+s)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	render := exec.Command("./local-cluster", "render")
	render.Env = append(os.Environ(), "FLOTILLA_CLUSTER_DIR="+dir, "FLOTILLA_BIN="+bin)
	if out, err := render.CombinedOutput(); err != nil {
		t.Fatalf("local-cluster render: %v\n%s", err, out)
	}

	for _, h := range []string{"h1", "h2", "h3"} {
		hd := filepath.Join(dir, "hosts", h)
		t.Run(h+"/services", func(t *testing.T) {
			vars := readEnvFile(t, filepath.Join(hd, "flotilla.env"))
			for _, svc := range services {
				e := map[string]string{"FLOTILLA_NATS_CREDS": filepath.Join(dir, "bus", svc+".creds")}
				for k, v := range vars {
					e[k] = v
				}
				ec, err := stack.LoadEnvConfig(svc, e, nil)
				if err != nil {
					t.Fatalf("%s: %v", svc, err)
				}
				if err := ec.Validate(svc); err != nil {
					t.Errorf("flotilla-%s refuses %s/flotilla.env: %v", svc, h, err)
				}
				if ec.StreamReplicas != 3 {
					t.Errorf("%s: FLOTILLA_STREAM_REPLICAS = %d, want 3", svc, ec.StreamReplicas)
				}
				if n := len(strings.Split(ec.NATSURL, ",")); n != 3 {
					t.Errorf("%s: FLOTILLA_NATS_URL names %d servers, want all 3: %s", svc, n, ec.NATSURL)
				}
				for _, u := range []string{ec.DatabaseURL, ec.DatabaseOwnerURL} {
					if !strings.Contains(u, "sslmode=verify-full") || !strings.Contains(u, "sslrootcert=") {
						t.Errorf("%s: database URL %q: want TLS, verifying the leader (sslmode=verify-full, sslrootcert)", svc, u)
					}
				}
				if svc == subjects.Gateway && len(ec.TrustedProxies) != 1 {
					t.Errorf("gateway: FLOTILLA_TRUSTED_PROXIES %v: want HAProxy's address, so logins are limited per client", ec.TrustedProxies)
				}
				if svc == subjects.Gateway && (len(ec.NATSMonitorURLs) != 3 || len(ec.PatroniURLs) != 3) {
					t.Errorf("gateway: FLOTILLA_NATS_MONITOR_URLS %v, FLOTILLA_PATRONI_URLS %v: want every host's, for GET /api/v1/cluster", ec.NATSMonitorURLs, ec.PatroniURLs)
				}
			}
		})
		t.Run(h+"/nats", func(t *testing.T) {
			out, err := exec.Command(filepath.Join(bin, "nats-server"), "-t", "-c", filepath.Join(hd, "nats.conf")).CombinedOutput()
			if err != nil {
				t.Fatalf("nats-server -t: %v\n%s", err, out)
			}
		})
		t.Run(h+"/patroni", func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(hd, "patroni.yml"))
			if err != nil {
				t.Fatal(err)
			}
			var p struct {
				Name      string
				Etcd      struct{ Hosts, Protocol, Cacert, Cert, Key string } // the v2 API: not etcd3
				Etcd3     any                                                 `yaml:"etcd3"`
				Bootstrap struct {
					DCS struct {
						TTL               int  `yaml:"ttl"`
						SynchronousMode   bool `yaml:"synchronous_mode"`
						PostgreSQLOptions struct {
							UsePgRewind bool `yaml:"use_pg_rewind"`
						} `yaml:"postgresql"`
					} `yaml:"dcs"`
				}
				PostgreSQL struct {
					Listen         string
					Parameters     map[string]string
					PgHBA          []string                     `yaml:"pg_hba"`
					Authentication map[string]map[string]string `yaml:"authentication"`
				} `yaml:"postgresql"`
			}
			if err := yaml.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			if p.Name != h || strings.Count(p.Etcd.Hosts, ":2379") != 3 || p.Etcd3 != nil {
				t.Errorf("name %q, etcd hosts %q, etcd3 %v: want this host, three v2 etcd members, no etcd3", p.Name, p.Etcd.Hosts, p.Etcd3)
			}
			if p.Etcd.Protocol != "https" || !fileExists(p.Etcd.Cacert) || !fileExists(p.Etcd.Cert) || !fileExists(p.Etcd.Key) {
				t.Errorf("etcd %+v: want https, the etcd CA and a client certificate", p.Etcd)
			}
			if !p.Bootstrap.DCS.SynchronousMode || !p.Bootstrap.DCS.PostgreSQLOptions.UsePgRewind || p.Bootstrap.DCS.TTL == 0 {
				t.Errorf("dcs %+v: synchronous mode (no acknowledged write lost) and pg_rewind are required", p.Bootstrap.DCS)
			}
			// PostgreSQL over TLS only, each side verifying the other's name.
			pg := p.PostgreSQL
			if pg.Parameters["ssl"] != "on" || !fileExists(pg.Parameters["ssl_cert_file"]) || !fileExists(pg.Parameters["ssl_key_file"]) {
				t.Errorf("parameters %v: want ssl on, with its certificate and key", pg.Parameters)
			}
			for _, rule := range pg.PgHBA {
				if !strings.HasPrefix(rule, "local ") && !strings.HasPrefix(rule, "hostssl ") {
					t.Errorf("pg_hba %q: a network connection must be hostssl", rule)
				}
			}
			for _, who := range []string{"superuser", "replication", "rewind"} {
				if a := pg.Authentication[who]; a["sslmode"] != "verify-full" || !fileExists(a["sslrootcert"]) {
					t.Errorf("authentication.%s: sslmode %q, sslrootcert %q: want verify-full against the cluster's PostgreSQL CA", who, a["sslmode"], a["sslrootcert"])
				}
			}
		})
		t.Run(h+"/etcd", func(t *testing.T) {
			vars := readEnvFile(t, filepath.Join(hd, "etcd.env"))
			if vars["ETCD_ENABLE_V2"] != "true" || vars["ETCD_NAME"] != h || strings.Count(vars["ETCD_INITIAL_CLUSTER"], "=https://") != 3 {
				t.Errorf("etcd.env: %v", vars)
			}
			// Clients and peers over mutual TLS.
			for _, k := range []string{"ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS", "ETCD_INITIAL_ADVERTISE_PEER_URLS"} {
				if !strings.HasPrefix(vars[k], "https://") {
					t.Errorf("etcd.env: %s=%s: want https", k, vars[k])
				}
			}
			for _, k := range []string{"ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE", "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE"} {
				if !fileExists(vars[k]) {
					t.Errorf("etcd.env: %s=%q: no such file", k, vars[k])
				}
			}
			if vars["ETCD_CLIENT_CERT_AUTH"] != "true" || vars["ETCD_PEER_CLIENT_CERT_AUTH"] != "true" {
				t.Errorf("etcd.env: clients and peers must show certificates: %v", vars)
			}
		})
	}
	t.Run("haproxy", func(t *testing.T) {
		if _, err := exec.LookPath("haproxy"); err != nil {
			t.Skip("haproxy is not installed (.ci/run installs it)")
		}
		out, err := exec.Command("haproxy", "-c", "-f", filepath.Join(dir, "haproxy.cfg")).CombinedOutput()
		if err != nil {
			t.Fatalf("haproxy -c: %v\n%s", err, out)
		}
	})
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return path != "" && err == nil
}

// readEnvFile reads NAME=VALUE lines, as systemd's EnvironmentFile and
// local-cluster do (no quoting; comments and blank lines skipped).
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not NAME=VALUE", path, line)
		}
		vars[k] = v
	}
	return vars
}
