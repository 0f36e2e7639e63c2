package stack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestEveryDeclaredEndpointIsServed starts all six services and asks the
// bus (nats micro discovery) what they serve: exactly the declared
// endpoints, each by the service that declares it.
func TestEveryDeclaredEndpointIsServed(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{}, bus))
	nc := bus.Unrestricted(t)

	served := map[string]string{} // subject → service
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := micro.ControlSubject(micro.InfoVerb, "", "")
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := sub.NextMsg(500 * time.Millisecond)
		if err != nil {
			break
		}
		var info micro.Info
		if err := json.Unmarshal(m.Data, &info); err != nil {
			t.Fatal(err)
		}
		for _, ep := range info.Endpoints {
			served[ep.Subject] = info.Name
		}
	}
	var want []string
	for _, i := range endpoints.All() {
		if i.PerInstance() {
			continue // served while an agent is connected
		}
		want = append(want, i.ServeSubject())
		if got := served[i.ServeSubject()]; got != i.Service {
			t.Errorf("%s is served by %q, want %q", i.ServeSubject(), got, i.Service)
		}
	}
	for s, by := range served {
		if !slices.Contains(want, s) {
			t.Errorf("%s serves %s, which api/endpoints does not declare", by, s)
		}
	}
}

// TestAFailedStartReleasesWhatItTook starts a stack whose gateway port is
// taken: Start fails naming the setting, and the ports it had opened are
// free again.
func TestAFailedStartReleasesWhatItTook(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ports := testkit.FreePorts(t, 1)
	agentAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	bus := testkit.SecureNATS(t)
	_, err = stack.Start(t.Context(), stack.Config{NATSURL: bus.URL, NATSCreds: bus.Creds, DatabaseURL: testkit.NewDatabase(t),
		HTTPAddr: taken.Addr().String(), AgentAddr: agentAddr, CACertFile: "x", CAKeyFile: "y", KMSKeyFile: "z"})
	if err == nil {
		t.Fatal("Start succeeded on a taken port")
	}
	if want := "HTTPAddr"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name %s", err, want)
	}
	l, err := net.Listen("tcp", agentAddr)
	if err != nil {
		t.Fatalf("the agent port is still held after the failed start: %v", err)
	}
	l.Close()
}

func TestValidateNamesEverySetting(t *testing.T) {
	t.Parallel()
	err := (&stack.Config{Services: []string{"inventory", "billing"}, StreamReplicas: 2}).Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`Services: "billing"`, "NATSURL", "DatabaseURL", "StreamReplicas"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %s", err, want)
		}
	}
}

// TestServicesReachTheBusOverTLS: with NATSTLS every service connects over
// TLS with its client certificate, to a server that takes nothing else.
func TestServicesReachTheBusOverTLS(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATSOverTLS(t)
	st := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.CA}}, bus))
	gw := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 0)
	ca, err := rpc.Call(t.Context(), gw, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil || ca.GetFingerprintSha256() != st.CA.Authority().Fingerprint() {
		t.Fatalf("the CA over TLS: %v %v", ca, err)
	}
	if nc, err := nats.Connect(strings.Replace(bus.URL, "tls://", "nats://", 1), nats.UserCredentials(bus.Creds[subjects.Gateway])); err == nil {
		nc.Close()
		t.Error("a connection without TLS was accepted")
	}
	noCert := bus.TLS.Clone()
	noCert.Certificates = nil
	if nc, err := nats.Connect(bus.URL, nats.Secure(noCert), nats.UserCredentials(bus.Creds[subjects.Gateway])); err == nil {
		nc.Close()
		t.Error("a TLS connection without a client certificate was accepted")
	}
}

// TestCredentialsFromAnotherReleaseAreLogged: a cluster's service whose
// .creds file was not signed again for this release says so at its start,
// naming the file, what differs and the command that mends it; one with
// this release's says nothing of them.
func TestCredentialsFromAnotherReleaseAreLogged(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	perms, err := busauth.Permissions(subjects.CA)
	if err != nil {
		t.Fatal(err)
	}
	perms.Sub.Allow = append(perms.Sub.Allow, "flotilla.call.*.ca.dropped-endpoint")
	creds, err := bus.Authority().Mint(subjects.CA, perms)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "ca.creds")
	if err := os.WriteFile(old, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		creds, want string
	}{
		{bus.Creds[subjects.CA], ""},
		{old, "bus credentials from another release: sign them again with this release's `flotilla admin bus-credentials init --dir DIR`"},
	} {
		cfg := stacktest.OnBus(stack.Config{Services: []string{subjects.CA}}, bus)
		cfg.NATSCreds = map[string]string{subjects.CA: c.creds}
		logs := &testkit.Buffer{}
		cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
		stacktest.Start(t, cfg)
		got := logs.String()
		if c.want == "" {
			if strings.Contains(got, "bus credentials") {
				t.Errorf("this release's credentials were logged as another's:\n%s", got)
			}
			continue
		}
		problem := "the bus credentials in " + old + " are not this release's for ca: " +
			"they let it subscribe to flotilla.call.*.ca.dropped-endpoint, which this release does not"
		if !strings.Contains(got, c.want) || !strings.Contains(got, problem) {
			t.Errorf("another release's credentials: the log says\n%s", got)
		}
		// Its heartbeat says so too, for the cluster status.
		js, err := jetstream.New(bus.Conn(t, subjects.Gateway))
		if err != nil {
			t.Fatal(err)
		}
		managers, err := membership.List(t.Context(), js, time.Now(), membership.HealthyWithin)
		if err != nil {
			t.Fatal(err)
		}
		said := false
		for _, m := range managers {
			said = said || m.GetCredentialsProblem() == problem
		}
		if !said {
			t.Errorf("no manager's heartbeat names the credentials' problem: %v", managers)
		}
	}
}

// TestServicesWorkWithARoleThatOnlyReadsAndWritesRows: the owner's role
// migrates; the services run as a role that is no superuser and can change
// rows but not the schema.
func TestServicesWorkWithARoleThatOnlyReadsAndWritesRows(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ownerURL := testkit.NewDatabase(t)
	owner, err := pgx.Connect(ctx, ownerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(context.Background())
	role := fmt.Sprintf("svc_%d", time.Now().UnixNano())
	u, err := url.Parse(ownerURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgstore.EnsureServiceRole(ctx, owner, role, "pw-"+role, strings.TrimPrefix(u.Path, "/")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), ownerURL)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP OWNED BY "+pgx.Identifier{role}.Sanitize())
		_, _ = c.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	u.User = url.UserPassword(role, "pw-"+role)
	serviceURL := u.String()

	bus := testkit.SecureNATS(t)
	stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Inventory, subjects.Secrets},
		DatabaseURL: serviceURL, DatabaseOwnerURL: ownerURL, KMSKeyFile: filepath.Join(t.TempDir(), "master.key"), CreateKMSKey: true}, bus))
	gw := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 0)
	if _, err := rpc.Call(ctx, gw, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{
		Network: &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none"}}, rpc.As(vocab.User("admin"))); err != nil {
		t.Fatalf("a write as the service role: %v", err)
	}

	svc, err := pgx.Connect(ctx, serviceURL)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background())
	if super, err := pgstore.IsSuperuser(ctx, svc); err != nil || super {
		t.Fatalf("the service role is a superuser: %v %v", super, err)
	}
	for _, stmt := range []string{"CREATE TABLE intruder (x int)", "DROP TABLE networks", "TRUNCATE networks", "ALTER TABLE secrets ADD COLUMN x int", "CREATE ROLE intruder"} {
		if _, err := svc.Exec(ctx, stmt); err == nil {
			t.Errorf("the service role may %s", stmt)
		}
	}
	var n int
	if err := svc.QueryRow(ctx, "SELECT count(*) FROM networks").Scan(&n); err != nil || n != 1 {
		t.Errorf("the service role reads networks: %d %v", n, err)
	}
}

// TestEnvConfigNamesBadClusterStatusURLs: the gateway's monitoring and
// Patroni URLs must be http or https URLs with a host, its trusted proxies
// addresses or CIDR prefixes; each bad one is named with its variable.
func TestEnvConfigNamesBadClusterStatusURLs(t *testing.T) {
	t.Parallel()
	creds := filepath.Join(t.TempDir(), "gateway.creds")
	if err := os.WriteFile(creds, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ec := stack.EnvConfig{NATSURL: "nats://127.0.0.1:4222", NATSCreds: creds, HTTPAddr: "127.0.0.1:7700", GRPCAddr: "127.0.0.1:7701",
		AgentGatewayAddr: "127.0.0.1:7702", MaxRequestBytes: 1 << 20, RequestReadTimeout: time.Minute, BusConcurrency: 32,
		StreamReplicas: 3, LogLevel: "info",
		NATSMonitorURLs: []string{"http://10.0.0.1:8222", "https://nats-2:8222"},
		PatroniURLs:     []string{"http://10.0.0.1:8008"}, TrustedProxies: []string{"10.77.0.1", "10.0.0.0/8"},
		CertificateWarning: 30 * 24 * time.Hour}
	if err := ec.Validate(subjects.Gateway); err != nil {
		t.Fatalf("good URLs refused: %v", err)
	}
	if cfg := ec.Config(subjects.Gateway); len(cfg.NATSMonitorURLs) != 2 || len(cfg.PatroniURLs) != 1 || len(cfg.TrustedProxies) != 2 ||
		cfg.CertificateWarning != 30*24*time.Hour {
		t.Fatalf("settings not passed on: %v %v %v", cfg.NATSMonitorURLs, cfg.PatroniURLs, cfg.TrustedProxies)
	}
	ec.NATSMonitorURLs = []string{"nats://10.0.0.1:4222", "10.0.0.2:8222"}
	ec.PatroniURLs = []string{"http://"}
	ec.TrustedProxies = []string{"10.77.0.1", "haproxy.internal"}
	ec.CertificateWarning = 10 * time.Minute
	err := ec.Validate(subjects.Gateway)
	for _, want := range []string{`FLOTILLA_NATS_MONITOR_URLS: "nats://10.0.0.1:4222"`, `FLOTILLA_NATS_MONITOR_URLS: "10.0.0.2:8222"`, `FLOTILLA_PATRONI_URLS: "http://"`,
		`FLOTILLA_TRUSTED_PROXIES: "haproxy.internal"`, "FLOTILLA_CERTIFICATE_WARNING: 10m0s must be between 1h and 8760h"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
