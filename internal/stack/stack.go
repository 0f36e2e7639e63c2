// Package stack is Flotilla's one composition root: it assembles any subset
// of the six services from one Config, in dependency order, and runs and
// stops them. `flotilla up` uses it for all six (StartEmbedded adds the
// managed PostgreSQL and the embedded NATS server), each cmd/flotilla-<svc>
// for one (Main), and every test that needs more than one service
// (stacktest.Start).
//
// Start-up order: listeners (so a taken port fails before anything else),
// the database pool, then inventory (schema, streams), ca, secrets,
// provisioner, agentgw and gateway, each on its own NATS connection. A
// failure unwinds whatever was built. Run stops them in reverse order —
// the gateway stops taking outside traffic first, the inventory, which the
// others report to while they stop, last — then drains the connections and
// closes the pool.
package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/cloudaccount"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/telemetry"
	"flotilla.dev/flotilla/services/agentgw"
	"flotilla.dev/flotilla/services/ca"
	"flotilla.dev/flotilla/services/gateway"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/inventory/app"
	"flotilla.dev/flotilla/services/provisioner"
	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/external"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
	"flotilla.dev/flotilla/services/secrets"
)

// Config is everything a stack is built from. `flotilla up` fills it from
// the data directory's settings, the per-service binaries from the
// environment (EnvConfig), tests by hand.
type Config struct {
	// Services are the services to run (subjects.Inventory, ...); empty
	// means all six.
	Services []string
	Version  string
	// Log and TracerProvider default to discarding.
	Log            *slog.Logger
	TracerProvider trace.TracerProvider

	// NATSServer, when set, is an embedded server the services connect to
	// in-process; otherwise they connect to NATSURL.
	NATSServer *server.Server
	NATSURL    string
	// NATSCreds holds each service's bus credentials file (.creds), by
	// service name: every service connects as itself, with only the
	// permissions libs/busauth derives for it.
	NATSCreds map[string]string
	// NATSTLS, when set, connects to NATSURL over TLS (natsx.ClientTLS).
	NATSTLS *tls.Config
	// StreamReplicas is the replication of the streams (1, or 3 in a cluster).
	StreamReplicas int

	// DatabaseURL is PostgreSQL, for the inventory and the secret broker:
	// a role that only reads and writes rows. DatabaseOwnerURL connects as
	// the role that owns the schema, for the migrations alone (empty: the
	// services' role migrates too).
	DatabaseURL      string
	DatabaseOwnerURL string
	// DatabaseWait is how long to wait for PostgreSQL to accept connections
	// (default 60 s).
	DatabaseWait time.Duration
	// Profiling serves Go's profiles at /debug/pprof/ beside /metrics.
	Profiling bool
	// BusConcurrency is how many requests each endpoint of each service
	// serves at once (0: rpc.DefaultConcurrency); the database pool is
	// sized to match.
	BusConcurrency int

	// HTTPAddr and GRPCAddr are where the gateway listens (GRPCAddr empty:
	// no gRPC port).
	HTTPAddr, GRPCAddr string
	// APITLS, when set, serves the HTTP and gRPC API over TLS.
	APITLS *tls.Config
	// MaxRequestBytes and RequestReadTimeout bound what an API client sends
	// (0: the gateway's defaults, 1 MiB and 30 s).
	MaxRequestBytes    int64
	RequestReadTimeout time.Duration
	// InstanceReadTTL is how long the gateway answers an instance's reads
	// from the copy it read last, unless its event says it changed first
	// (0: gateway.DefaultInstanceReadTTL; negative: read every time).
	InstanceReadTTL time.Duration
	// SourceLoginPolicy slows logins from a client address after failures
	// (zero: gateway.SourceLoginPolicy; per user name it is the inventory's,
	// app.WithLoginPolicy).
	SourceLoginPolicy attempts.Policy
	// MetricsAddr serves Prometheus /metrics when not empty.
	MetricsAddr string

	// AgentAddr is where the agent gateway listens for agents.
	AgentAddr string
	// AgentServerNames are the names agents dial the agent gateway by (its
	// certificate's SANs); empty means localhost and the listening address.
	AgentServerNames []string
	// AgentGatewayAddr is the address the provisioner gives new agents,
	// and the gateway gives operators with a join token for an external
	// instance; empty means this stack's agent gateway.
	AgentGatewayAddr string
	// LogRetentionInterval is how often the agent gateway enforces the
	// instances' log retention (0: agentgw.DefaultRetentionInterval; tests).
	LogRetentionInterval time.Duration

	// CACertFile and CAKeyFile are the fleet CA (generated there when
	// neither exists). AgentCertTTL is the agent certificates' lifetime
	// (0: the CA's default).
	CACertFile, CAKeyFile string
	AgentCertTTL          time.Duration
	// SecretsManager is the AWS account in which the CA reads the private
	// keys custom certificates reference (privateKeyRef), for every
	// network until networks name their cloud account; nil: none.
	SecretsManager *awsx.Account

	// KMSKeyFile is the local master key; CreateKMSKey makes one when the
	// file does not exist (`flotilla up`), otherwise it must exist (a
	// cluster shares one key).
	KMSKeyFile   string
	CreateKMSKey bool
	// KMSAWS, when set, wraps new data keys with an AWS KMS key instead;
	// KMSKeyFile is then optional: the previous local master key, read
	// only, kept until every secret is rewrapped (see OpenKMS).
	KMSAWS *AWSKMS

	// LocalRoot enables the provisioner's local provider, keeping its disks
	// and VMs there; AgentCommand starts a local VM's agent.
	LocalRoot    string
	AgentCommand []string
	// AgentBinary is the flotilla-agent the gateway serves to new cloud VMs
	// (default: the one beside this executable, if any).
	AgentBinary string
	// ProvisionerWorkers bounds how many instances the provisioner works on
	// at once (0: its default); ProvisionerRecheck is how often its waits
	// look without an event (0: its default; tests lengthen it to prove
	// that events alone drive provisioning).
	ProvisionerWorkers int
	ProvisionerRecheck time.Duration
	// ProvisionerAgentTimeout bounds waiting for a new VM's agent (0: the
	// provisioner's default).
	ProvisionerAgentTimeout time.Duration
	// CloudAccounts resolves an aws network's cloud account for the
	// provisioner's aws driver (nil: the cloud account the network names).
	CloudAccounts provisioner.CloudAccounts
	// AgentURL and AgentSHA256 are where a cloud VM downloads the agent
	// binary and its SHA-256 (hex), written into its user data (default:
	// PublicURL + the gateway's download path, and the SHA-256 of
	// AgentBinary).
	AgentURL, AgentSHA256 string
	// PublicURL is the API's URL as cloud VMs reach it (e.g.
	// https://flotilla.example.com:7700): they download the agent there.
	PublicURL string

	// NATSMonitorURLs are the NATS servers' monitoring endpoints
	// (http://host:8222) and PatroniURLs the Patroni REST APIs
	// (http://host:8008) the gateway asks for the cluster status; empty:
	// what its bus connection sees, and the one database.
	NATSMonitorURLs, PatroniURLs []string
	// TrustedProxies are the reverse proxies whose X-Forwarded-For the
	// gateway believes (gateway.Proxies).
	TrustedProxies gateway.Proxies
	// CertificateWarning is how long before a node certificate ends the
	// fleet overview names its instance (0: 14 days).
	CertificateWarning time.Duration
	// MemberInterval, MemberTTL and MemberHealthyWithin tune the managers'
	// heartbeats (0: libs/membership's defaults, 5 s, 30 s and 15 s; tests
	// shorten them).
	MemberInterval, MemberTTL, MemberHealthyWithin time.Duration
	// HostName is the host the services are listed under in the managers'
	// bucket (empty: os.Hostname; tests name other hosts).
	HostName string

	// InventoryOptions and AgentStaleAfter tune the inventory (tests).
	InventoryOptions []app.Option
	AgentStaleAfter  time.Duration
}

// StartOrder lists the services in the order they start.
var StartOrder = []string{subjects.Inventory, subjects.CA, subjects.Secrets, subjects.Provisioner, subjects.AgentGW, subjects.Gateway}

// runs reports whether the stack runs service.
func (c *Config) runs(service string) bool {
	return len(c.Services) == 0 || slices.Contains(c.Services, service)
}

// Validate reports every problem with the configuration at once, naming
// each setting.
func (c *Config) Validate() error {
	var errs []error
	for _, s := range c.Services {
		if !slices.Contains(StartOrder, s) {
			errs = append(errs, fmt.Errorf("stack.Config.Services: %q is not one of %s", s, strings.Join(StartOrder, ", ")))
		}
	}
	if c.NATSServer == nil && c.NATSURL == "" {
		errs = append(errs, errors.New("stack.Config.NATSURL: is required (or NATSServer)"))
	}
	for _, s := range StartOrder {
		if c.runs(s) && c.NATSCreds[s] == "" {
			errs = append(errs, fmt.Errorf("stack.Config.NATSCreds: no bus credentials for %s", s))
		}
	}
	if (c.runs(subjects.Inventory) || c.runs(subjects.Secrets)) && c.DatabaseURL == "" {
		errs = append(errs, errors.New("stack.Config.DatabaseURL: is required by the inventory and the secret broker"))
	}
	if c.runs(subjects.Gateway) && c.HTTPAddr == "" {
		errs = append(errs, errors.New("stack.Config.HTTPAddr: is required by the gateway"))
	}
	if c.runs(subjects.AgentGW) && c.AgentAddr == "" {
		errs = append(errs, errors.New("stack.Config.AgentAddr: is required by the agent gateway"))
	}
	if c.runs(subjects.Provisioner) && c.AgentGatewayAddr == "" && !c.runs(subjects.AgentGW) {
		errs = append(errs, errors.New("stack.Config.AgentGatewayAddr: is required by the provisioner when the agent gateway runs elsewhere"))
	}
	if c.runs(subjects.CA) && (c.CACertFile == "" || c.CAKeyFile == "") {
		errs = append(errs, errors.New("stack.Config.CACertFile, CAKeyFile: are required by the CA"))
	}
	if c.runs(subjects.Secrets) && c.KMSKeyFile == "" && c.KMSAWS == nil {
		errs = append(errs, errors.New("stack.Config.KMSKeyFile: is required by the secret broker (or KMSAWS)"))
	}
	if c.KMSAWS != nil {
		if err := c.KMSAWS.validate("stack.Config.KMSAWS."); err != nil {
			errs = append(errs, err)
		}
	}
	if c.StreamReplicas != 0 && c.StreamReplicas != 1 && c.StreamReplicas != 3 {
		errs = append(errs, fmt.Errorf("stack.Config.StreamReplicas: must be 1 or 3, got %d", c.StreamReplicas))
	}
	return errors.Join(errs...)
}

// Stack is a started set of services.
type Stack struct {
	// The services this stack runs; nil for those it does not.
	Inventory   *inventory.Service
	CA          *ca.Service
	Secrets     *secrets.Service
	Provisioner *provisioner.Service
	AgentGW     *agentgw.Service
	Gateway     *gateway.Gateway

	// HTTPAddr, GRPCAddr, AgentAddr and MetricsAddr are where the stack
	// listens ("" for what it does not run).
	HTTPAddr, GRPCAddr, AgentAddr, MetricsAddr string

	cfg  Config
	log  *slog.Logger
	pool *pgxpool.Pool
	// health answers the inventory's and the secret broker's readiness
	// checks (pgstore.HealthPool).
	health *pgxpool.Pool
	// ownerPool migrates the schema while the services start; closed once
	// they have.
	ownerPool *pgxpool.Pool
	conns     []*nats.Conn
	runners   []runner
	// members are the services' heartbeats in the managers' bucket.
	members []*membership.Member
	// credsProblems says, by service, how its bus credentials differ from
	// this release's (connect), for its heartbeats.
	credsProblems map[string]string
	// listeners not yet owned by a service (closed by close).
	listeners []net.Listener
	metrics   *http.Server
	metricsL  net.Listener
}

type runner struct {
	name string
	run  func(context.Context) error
	// readiness is the service's (rpc.Service.Readiness), for its
	// heartbeat; nil for a service without a readiness check.
	readiness func() (notReady string, out bool)
	// features are what the service does that an earlier release's may
	// not, for its heartbeat (vocab.ManagerFeature).
	features []string
}

// Start builds the configured services. When it returns, every service takes
// bus requests and the listeners accept connections (served once Run
// starts). On error whatever was built is closed again.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.StreamReplicas == 0 {
		cfg.StreamReplicas = 1
	}
	if cfg.DatabaseWait == 0 {
		cfg.DatabaseWait = 60 * time.Second
	}
	st := &Stack{cfg: cfg, log: cfg.Log, credsProblems: map[string]string{}}
	defer func() {
		if err != nil {
			st.close()
		}
	}()

	// Listeners first: a port in use fails before anything is touched.
	var httpL, grpcL, agentL net.Listener
	if cfg.runs(subjects.Gateway) {
		if httpL, err = st.listen("HTTPAddr", cfg.HTTPAddr); err != nil {
			return nil, err
		}
		st.HTTPAddr = httpL.Addr().String()
		if cfg.GRPCAddr != "" {
			if grpcL, err = st.listen("GRPCAddr", cfg.GRPCAddr); err != nil {
				return nil, err
			}
			st.GRPCAddr = grpcL.Addr().String()
		}
	}
	if cfg.runs(subjects.AgentGW) {
		if agentL, err = st.listen("AgentAddr", cfg.AgentAddr); err != nil {
			return nil, err
		}
		st.AgentAddr = agentL.Addr().String()
	}
	if cfg.MetricsAddr != "" {
		if st.metricsL, err = st.listen("MetricsAddr", cfg.MetricsAddr); err != nil {
			return nil, err
		}
		st.MetricsAddr = st.metricsL.Addr().String()
	}

	if cfg.runs(subjects.Inventory) || cfg.runs(subjects.Secrets) {
		if st.pool, err = pgstore.Open(ctx, cfg.DatabaseURL, cfg.TracerProvider, cfg.DatabaseWait, cfg.databaseConns()); err != nil {
			return nil, err
		}
		if st.health, err = pgstore.HealthPool(ctx, st.pool); err != nil {
			return nil, err
		}
		if super, err := pgstore.IsSuperuser(ctx, st.pool); err != nil {
			return nil, err
		} else if super {
			st.log.WarnContext(ctx, "the services connect to PostgreSQL as a superuser: give them a role that only reads and writes rows (DatabaseURL), and the owner's to DatabaseOwnerURL",
				"role", st.pool.Config().ConnConfig.User)
		}
		if cfg.DatabaseOwnerURL != "" {
			if st.ownerPool, err = pgstore.Open(ctx, cfg.DatabaseOwnerURL, cfg.TracerProvider, cfg.DatabaseWait, 2); err != nil {
				return nil, err
			}
		}
	}

	d := deps{cfg: &cfg, st: st, agentL: agentL}
	builders := map[string]func(context.Context, *nats.Conn) (runner, error){
		subjects.Inventory:   d.inventory,
		subjects.CA:          d.ca,
		subjects.Secrets:     d.secrets,
		subjects.Provisioner: d.provisioner,
		subjects.AgentGW:     d.agentgw,
		subjects.Gateway: func(ctx context.Context, nc *nats.Conn) (runner, error) {
			return d.gateway(ctx, nc, httpL, grpcL)
		},
	}
	for _, name := range StartOrder {
		if !cfg.runs(name) {
			continue
		}
		nc, err := st.connect(name)
		if err != nil {
			return nil, err
		}
		r, err := builders[name](ctx, nc)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		if r, err = st.join(ctx, nc, r); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		st.runners = append(st.runners, r)
	}
	if st.ownerPool != nil {
		st.ownerPool.Close() // the schema is migrated: the owner's role is not needed while running
		st.ownerPool = nil
	}
	if st.metricsL != nil {
		st.metrics = telemetry.NewMetricsServer(cfg.Profiling)
	}
	return st, nil
}

// join lists r's service in the managers' bucket (libs/membership) and
// returns r heartbeating while it runs: its key is deleted when the service
// stops, and expires if the process dies.
func (st *Stack) join(ctx context.Context, nc *nats.Conn, r runner) (runner, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return runner{}, fmt.Errorf("jetstream: %w", err)
	}
	m, err := membership.Join(ctx, js, membership.Config{Service: r.name, Version: st.cfg.Version, Host: st.cfg.HostName,
		Interval: st.cfg.MemberInterval, TTL: st.cfg.MemberTTL, Replicas: st.cfg.StreamReplicas, Log: st.log.With("service", r.name),
		Readiness: r.readiness, CredentialsProblem: st.credsProblems[r.name], Features: r.features})
	if err != nil {
		return runner{}, err
	}
	st.members = append(st.members, m)
	run := r.run
	r.run = func(ctx context.Context) error {
		hctx, cancel := context.WithCancel(ctx)
		beating := make(chan struct{})
		go func() {
			defer close(beating)
			m.Run(hctx)
		}()
		err := run(ctx)
		cancel()
		<-beating
		return err
	}
	return r, nil
}

// listen opens a listener for the setting name.
func (st *Stack) listen(name, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	st.listeners = append(st.listeners, l)
	return l, nil
}

// own hands l to a service, which closes it from then on.
func (st *Stack) own(l net.Listener) {
	st.listeners = slices.DeleteFunc(st.listeners, func(x net.Listener) bool { return x == l })
}

// connect opens service's own NATS connection.
func (st *Stack) connect(service string) (*nats.Conn, error) {
	var (
		nc  *nats.Conn
		err error
	)
	name := "flotilla-" + service
	log := st.log.With("service", service)
	opts := append(busauth.ConnectOptions(service, st.cfg.NATSCreds[service]),
		// Asynchronous errors, a permissions violation among them, are the
		// bus refusing something this service tried: worth a warning.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("bus error", "error", err, "subscription", subject)
		}))
	if st.cfg.NATSTLS != nil {
		opts = append(opts, nats.Secure(st.cfg.NATSTLS.Clone()))
	}
	if st.cfg.NATSServer == nil {
		// A cluster's .creds files are copied by hand with each release
		// (flotilla up signs its own again at each start): one left from
		// another release is said at once, not by the calls it refuses.
		if err := busauth.CheckCreds(service, st.cfg.NATSCreds[service]); err != nil {
			st.credsProblems[service] = err.Error() // for the cluster status
			log.Error("bus credentials from another release: sign them again with this release's `flotilla admin bus-credentials init --dir DIR` and copy this service's .creds file here (docs/ha.md, \"Upgrading one host at a time\")",
				"error", err)
		}
	}
	if st.cfg.NATSServer != nil {
		nc, err = natsx.ConnectInProcess(st.cfg.NATSServer, name, opts...)
	} else {
		nc, err = natsx.Connect(st.cfg.NATSURL, name, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("connect %s to NATS: %w", service, err)
	}
	st.conns = append(st.conns, nc)
	return nc, nil
}

// deps builds each service from the configuration.
type deps struct {
	cfg    *Config
	st     *Stack
	agentL net.Listener
}

func (d deps) inventory(ctx context.Context, nc *nats.Conn) (runner, error) {
	c := d.cfg
	s, err := inventory.New(ctx, inventory.Deps{Pool: d.st.pool, MigrationPool: d.st.ownerPool, HealthPool: d.st.health, NATS: nc, Log: c.Log, TracerProvider: c.TracerProvider,
		Version: c.Version, Concurrency: c.BusConcurrency, StreamReplicas: c.StreamReplicas, AgentStaleAfter: c.AgentStaleAfter,
		AppOptions: append([]app.Option{app.WithReservedNames(c.agentServerNames(c.AgentAddr))}, c.InventoryOptions...)})
	if err != nil {
		return runner{}, err
	}
	d.st.Inventory = s
	return runner{name: subjects.Inventory, run: s.Run, readiness: s.Readiness}, nil
}

func (d deps) ca(ctx context.Context, nc *nats.Conn) (runner, error) {
	c := d.cfg
	s, err := ca.New(ctx, ca.Deps{NATS: nc, Log: c.Log, TracerProvider: c.TracerProvider, Version: c.Version, Concurrency: c.BusConcurrency,
		CertFile: c.CACertFile, KeyFile: c.CAKeyFile, Replicas: c.StreamReplicas, AgentCertTTL: c.AgentCertTTL,
		GatewayNames: c.agentServerNames(c.AgentAddr), CloudAccount: c.cloudAccount(nc)})
	if err != nil {
		return runner{}, err
	}
	d.st.CA = s
	return runner{name: subjects.CA, run: s.Run, readiness: s.Readiness}, nil
}

func (d deps) secrets(ctx context.Context, nc *nats.Conn) (runner, error) {
	c := d.cfg
	if err := c.KMSAWS.resolveAccount(ctx, d.st.pool, "kms.cloudAccountId"); err != nil {
		return runner{}, err
	}
	k, err := c.OpenKMS(ctx)
	if err != nil {
		return runner{}, err
	}
	var kmsAccount string
	if c.KMSAWS != nil {
		kmsAccount = c.KMSAWS.CloudAccountID
	}
	s, err := secrets.New(ctx, secrets.Deps{Pool: d.st.pool, MigrationPool: d.st.ownerPool, HealthPool: d.st.health, NATS: nc, KMS: k, KMSCloudAccountID: kmsAccount, Log: c.Log, TracerProvider: c.TracerProvider,
		Version: c.Version, Concurrency: c.BusConcurrency, StreamReplicas: c.StreamReplicas})
	if err != nil {
		return runner{}, err
	}
	d.st.Secrets = s
	return runner{name: subjects.Secrets, run: s.Run, readiness: s.Readiness, features: secrets.Features}, nil
}

func (d deps) provisioner(ctx context.Context, nc *nats.Conn) (runner, error) {
	c := d.cfg
	drivers := []driver.Driver{external.New()} // always: it needs nothing of this host
	if c.LocalRoot != "" {
		cmd := c.AgentCommand
		if len(cmd) == 0 {
			var err error
			if cmd, err = localAgentCommand(false); err != nil {
				return runner{}, err
			}
		}
		drv, err := local.New(local.Config{Root: c.LocalRoot, AgentCommand: cmd, Log: c.Log.With("provider", local.Name)})
		if err != nil {
			return runner{}, err
		}
		drivers = append(drivers, drv)
	}
	agentURL, agentSum, err := c.agentDownload()
	if err != nil {
		return runner{}, err
	}
	s, err := provisioner.New(ctx, provisioner.Deps{NATS: nc, Log: c.Log, TracerProvider: c.TracerProvider, Version: c.Version, Concurrency: c.BusConcurrency,
		Drivers: drivers, AgentGatewayAddr: d.agentGatewayAddr(), StreamReplicas: c.StreamReplicas, Workers: c.ProvisionerWorkers, Recheck: c.ProvisionerRecheck,
		AgentTimeout: c.ProvisionerAgentTimeout, CloudAccounts: c.CloudAccounts, AgentURL: agentURL, AgentSHA256: agentSum})
	if err != nil {
		return runner{}, err
	}
	d.st.Provisioner = s
	return runner{name: subjects.Provisioner, run: s.Run}, nil
}

func (d deps) agentgw(ctx context.Context, nc *nats.Conn) (runner, error) {
	c := d.cfg
	s, err := agentgw.New(ctx, agentgw.Deps{NATS: nc, Log: c.Log, TracerProvider: c.TracerProvider, Version: c.Version, Concurrency: c.BusConcurrency,
		Listener: d.agentL, ServerNames: c.agentServerNames(d.st.AgentAddr), StreamReplicas: c.StreamReplicas,
		RetentionInterval: c.LogRetentionInterval})
	if err != nil {
		return runner{}, err
	}
	d.st.own(d.agentL)
	d.st.AgentGW = s
	return runner{name: subjects.AgentGW, run: s.Run}, nil
}

func (d deps) gateway(ctx context.Context, nc *nats.Conn, httpL, grpcL net.Listener) (runner, error) {
	c := d.cfg
	g, err := gateway.New(ctx, gateway.Deps{NATS: nc, Log: c.Log, TracerProvider: c.TracerProvider, Version: c.Version,
		HTTPListener: httpL, GRPCListener: grpcL, MaxRequestBytes: c.MaxRequestBytes, RequestReadTimeout: c.RequestReadTimeout,
		LoginPolicy: c.SourceLoginPolicy, TLS: c.APITLS, AgentGatewayAddr: d.agentGatewayAddr(), AgentBinary: c.agentBinary(),
		NATSMonitorURLs: c.NATSMonitorURLs, PatroniURLs: c.PatroniURLs, MemberHealthyWithin: c.MemberHealthyWithin,
		TrustedProxies: c.TrustedProxies, CertificateWarning: c.CertificateWarning,
		InstanceReadTTL: c.InstanceReadTTL})
	if err != nil {
		return runner{}, err
	}
	d.st.own(httpL)
	if grpcL != nil {
		d.st.own(grpcL)
	}
	d.st.Gateway = g
	return runner{name: subjects.Gateway, run: g.Run}, nil
}

// agentGatewayAddr is where agents are told to connect:
// Config.AgentGatewayAddr, or this stack's agent gateway.
func (d deps) agentGatewayAddr() string {
	if d.cfg.AgentGatewayAddr != "" {
		return d.cfg.AgentGatewayAddr
	}
	return reachable(d.st.AgentAddr)
}

// agentServerNames are the agent gateway's names: AgentServerNames, or
// localhost and the host of addr (where it listens). The inventory and the
// CA keep them off instances' certificates.
func (c *Config) agentServerNames(addr string) []string {
	if len(c.AgentServerNames) > 0 {
		return c.AgentServerNames
	}
	host, _, _ := net.SplitHostPort(reachable(addr))
	return []string{"localhost", host}
}

// reachable turns a listening address into one a process on this host can
// dial: an unspecified IP (0.0.0.0, ::) becomes loopback.
func reachable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// stopTimeout bounds how long Run waits for one service to stop.
const stopTimeout = 30 * time.Second

// Run serves until ctx ends or a service fails, then stops the services in
// reverse start order, drains the NATS connections and closes the pool. It
// returns the first service's error, if any.
func (st *Stack) Run(ctx context.Context) error {
	type running struct {
		runner
		cancel context.CancelFunc
		done   chan error
	}
	failed := make(chan struct{}, len(st.runners)+1)
	var all []running
	for _, r := range st.runners {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		rr := running{runner: r, cancel: cancel, done: make(chan error, 1)}
		go func() {
			err := r.run(rctx)
			rr.done <- err
			if err != nil {
				failed <- struct{}{}
			}
		}()
		all = append(all, rr)
	}
	if st.metrics != nil {
		go func() {
			if err := st.metrics.Serve(st.metricsL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				st.log.Error("metrics server", "error", err)
			}
		}()
	}
	select {
	case <-ctx.Done():
	case <-failed:
	}
	var errs []error
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
			}
		case <-time.After(stopTimeout):
			errs = append(errs, fmt.Errorf("%s: did not stop within %v", r.name, stopTimeout))
		}
	}
	st.close()
	return errors.Join(errs...)
}

// close releases what Start built: the metrics server, unowned listeners,
// the NATS connections (drained, newest first) and the pool.
func (st *Stack) close() {
	if st.metrics != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = st.metrics.Shutdown(sctx)
		cancel()
	}
	if st.metricsL != nil {
		_ = st.metricsL.Close()
	}
	for _, l := range st.listeners {
		_ = l.Close()
	}
	for _, m := range st.members { // left already, unless Start failed
		lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		m.Leave(lctx)
		cancel()
	}
	for i := len(st.conns) - 1; i >= 0; i-- {
		if err := st.conns[i].Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			st.log.Warn("drain NATS connection", "error", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, nc := range st.conns {
		for !nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		nc.Close()
	}
	if st.ownerPool != nil {
		st.ownerPool.Close()
	}
	if st.health != nil {
		st.health.Close()
	}
	if st.pool != nil {
		st.pool.Close()
	}
}

// localAgentCommand is the command that starts a local VM's agent when none
// is configured: flotilla-agent beside this executable, the small binary
// (about a third of the memory of the whole flotilla binary; the agent runs
// the node software from flotilla-node beside it, smaller still). When it is
// not there and orSelf is set (flotilla up, whose binary has an agent
// command too), this executable's "agent" command.
func localAgentCommand(orSelf bool) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("local provider: find the agent: %w", err)
	}
	beside := filepath.Join(filepath.Dir(exe), "flotilla-agent")
	if _, err := os.Stat(beside); err == nil || !orSelf {
		return []string{beside}, nil
	}
	return []string{exe, "agent"}, nil
}

// agentBinary is the flotilla-agent the gateway serves to new cloud VMs:
// AgentBinary, or the one beside this executable ("" when there is none).
func (c *Config) agentBinary() string {
	if c.AgentBinary != "" {
		return c.AgentBinary
	}
	cmd, err := localAgentCommand(false)
	if err != nil {
		return ""
	}
	if st, err := os.Stat(cmd[0]); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	return cmd[0]
}

// agentDownload is where cloud VMs download the agent and its SHA-256:
// AgentURL and AgentSHA256, or the gateway's download path under
// PublicURL and the SHA-256 of AgentBinary ("" when either is unknown: an
// aws provision then fails naming what is missing).
func (c *Config) agentDownload() (string, string, error) {
	url, sum := c.AgentURL, c.AgentSHA256
	if url == "" && c.PublicURL != "" && c.Version != "" {
		url = strings.TrimRight(c.PublicURL, "/") + gateway.AgentDownloadPath(c.Version)
	}
	if sum == "" {
		if bin := c.agentBinary(); bin != "" {
			var err error
			if sum, err = filecopy.SHA256(bin); err != nil {
				return "", "", fmt.Errorf("the agent served to cloud VMs: %w", err)
			}
		}
	}
	return url, sum, nil
}

// databaseConns sizes the services' PostgreSQL pool to their bus
// concurrency: every request being served may hold a connection, and a
// few more serve the outbox forwarder, its NOTIFY listener and the
// housekeeping loops.
func (c *Config) databaseConns() int {
	n := c.BusConcurrency
	if n < 1 {
		n = rpc.DefaultConcurrency
	}
	return n + 4
}

// cloudAccount is where the CA reads the certificate keys a network
// references in AWS Secrets Manager: the network's cloud account, or for
// a network naming none (a local or external one), the account
// SecretsManager configures.
func (c Config) cloudAccount(nc *nats.Conn) ca.CloudAccountOf {
	accounts := cloudaccount.Resolver{Client: rpc.NewClient(nc, subjects.CA, 0)}
	return func(ctx context.Context, n *inventoryv1.Network) (awsx.Account, error) {
		if n.GetCloudAccountId() != "" {
			return accounts.OfNetwork(ctx, n)
		}
		if c.SecretsManager == nil {
			return awsx.Account{}, apierr.Invalid("privateKeyRef", "network %q names no cloud account, and no AWS Secrets Manager is configured (FLOTILLA_SECRETS_MANAGER_REGION)", n.GetName())
		}
		return *c.SecretsManager, nil
	}
}
