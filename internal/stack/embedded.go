package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pgmanaged"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/telemetry"
	"flotilla.dev/flotilla/services/gateway"
)

// EmbeddedOptions configure Flotilla in one process (`flotilla up`).
type EmbeddedOptions struct {
	DataDir   string
	Overrides datadir.Overrides
	Log       *slog.Logger
	Version   string
	// OTLPEndpoint and OTLPProtocol come from OTEL_EXPORTER_OTLP_ENDPOINT /
	// OTEL_EXPORTER_OTLP_PROTOCOL; empty turns export off.
	OTLPEndpoint string
	OTLPProtocol string
	// SpanProcessors are added to the tracer provider (tests).
	SpanProcessors []sdktrace.SpanProcessor
	// AgentCommand starts a node agent for the local provider; empty means
	// flotilla-agent beside this executable, or its "agent" command when
	// there is none (see localAgentCommand).
	AgentCommand []string
	// InsecureHTTP lets the API listen without TLS on a bindAddress other
	// hosts can reach (flotilla up --insecure-http).
	InsecureHTTP bool
}

// Embedded is all of Flotilla in one process: the data directory, a managed
// PostgreSQL (unless the settings point at an external one), an embedded
// NATS server with JetStream, and every service, from the same Start the
// separate binaries use. Stopping it stops everything it started,
// PostgreSQL included.
type Embedded struct {
	*Stack
	Settings *datadir.Settings
	Dir      datadir.Dir

	log     *slog.Logger
	closers []func(context.Context) error
}

// StartEmbedded prepares the data directory and starts every dependency and
// service. On error, whatever was started is stopped again.
func StartEmbedded(ctx context.Context, o EmbeddedOptions) (_ *Embedded, err error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d := datadir.Dir(o.DataDir)
	// The directory is this process's alone (its PostgreSQL, its NATS
	// store) from before anything is read or started until the last
	// closer ran.
	release, err := datadir.Lock(d, "flotilla up")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	settings, err := datadir.Prepare(d, o.Overrides)
	if err != nil {
		return nil, err
	}
	if settings.APITLS == "" && !o.InsecureHTTP {
		if err := checkPlainAPIAddr(settings.Addr(datadir.OffsetHTTP)); err != nil {
			return nil, fmt.Errorf("bindAddress in %s: %w: start with --tls (a certificate from the fleet CA), --tls-cert and --tls-key, or --insecure-http", d.SettingsFile(), err)
		}
	}
	proxies, err := gateway.ParseProxies(settings.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("settings in %s: trustedProxies: %w", d.SettingsFile(), err)
	}
	var warning time.Duration
	if settings.CertificateWarning != "" {
		if warning, err = time.ParseDuration(settings.CertificateWarning); err == nil {
			err = CheckCertificateWarning(warning)
		}
		if err != nil {
			return nil, fmt.Errorf("settings in %s: certificateWarning: %q: %w", d.SettingsFile(), settings.CertificateWarning, err)
		}
	}
	if err := checkPortsFree(d, settings); err != nil {
		return nil, err
	}
	e := &Embedded{Settings: settings, Dir: d, log: o.Log}
	e.closers = append(e.closers, func(context.Context) error { release(); return nil })
	defer func() {
		if err != nil {
			_ = e.close(context.Background())
		}
	}()

	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "flotilla", ServiceVersion: o.Version,
		OTLPEndpoint: o.OTLPEndpoint, OTLPProtocol: o.OTLPProtocol, SpanProcessors: o.SpanProcessors,
	})
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, tel.Shutdown)

	if settings.ManagedPostgres {
		pg, err := managedPostgres(ctx, d, settings)
		if err != nil {
			return nil, err
		}
		if err := pg.Start(ctx); err != nil {
			if errors.Is(err, pgmanaged.ErrPortInUse) {
				return nil, fmt.Errorf("managed PostgreSQL: %w; %s", err, portsHint(d, settings))
			}
			return nil, fmt.Errorf("managed PostgreSQL: %w", err)
		}
		e.closers = append(e.closers, pg.Stop)
		if err := ensureServiceRole(ctx, settings); err != nil {
			return nil, fmt.Errorf("managed PostgreSQL: %w", err)
		}
		o.Log.InfoContext(ctx, "PostgreSQL started", "dir", d.Postgres(), "port", settings.Port(datadir.OffsetPostgres))
	}

	// Every service, and the observer for operators' tools, has bus
	// credentials of its own in config/bus/.
	auth, err := busauth.LoadOrCreate(d.Bus())
	if err != nil {
		return nil, err
	}
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{
		ServerName: "flotilla", Host: "127.0.0.1", Port: settings.Port(datadir.OffsetNATS),
		StoreDir: d.NATS(), Auth: auth.Configure, Logger: slog.New(warnOnly{o.Log.Handler()}).With("component", "nats"),
	})
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func(context.Context) error {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil
	})
	o.Log.InfoContext(ctx, "NATS started", "addr", ns.ClientURL(), "store", d.NATS())

	cmd := o.AgentCommand
	if len(cmd) == 0 {
		if cmd, err = localAgentCommand(true); err != nil {
			return nil, err
		}
	}
	caCert, caKey := settings.CAFiles(d)
	cfg := embeddedConfig(settings, d, ns, o.Log, tel, o.Version, caCert, caKey, cmd)
	cfg.NATSCreds = auth.Files()
	cfg.TrustedProxies, cfg.CertificateWarning = proxies, warning
	if settings.ManagedPostgres {
		// The services read and write rows as the service role; the
		// superuser, which owns the schema, only migrates it.
		cfg.DatabaseURL, cfg.DatabaseOwnerURL = datadir.ManagedServiceURL(settings), settings.DatabaseURL
	}
	if cfg.APITLS, err = apiTLS(settings, caCert, caKey); err != nil {
		return nil, err
	}
	e.Stack, err = Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return e, nil
}

func embeddedConfig(s *datadir.Settings, d datadir.Dir, ns *server.Server, log *slog.Logger, tel *telemetry.Telemetry, version, caCert, caKey string, agentCmd []string) Config {
	c := Config{
		Version:         version,
		Log:             log,
		TracerProvider:  tel.TracerProvider(),
		NATSServer:      ns,
		StreamReplicas:  1,
		DatabaseURL:     s.DatabaseURL,
		DatabaseWait:    30 * time.Second,
		HTTPAddr:        s.Addr(datadir.OffsetHTTP),
		GRPCAddr:        s.Addr(datadir.OffsetGRPC),
		MaxRequestBytes: s.MaxRequestBytes,
		MetricsAddr:     s.Addr(datadir.OffsetMetrics),
		Profiling:       os.Getenv("FLOTILLA_PPROF") == "true",
		AgentAddr:       s.Addr(datadir.OffsetAgentGW),
		CACertFile:      caCert,
		CAKeyFile:       caKey,
		KMSKeyFile:      d.MasterKey(),
		CreateKMSKey:    true,
		SecretsManager:  secretsManager(os.Getenv("FLOTILLA_SECRETS_MANAGER_REGION"), os.Getenv("FLOTILLA_SECRETS_MANAGER_ENDPOINT_URL")),
		LocalRoot:       string(d),
		AgentCommand:    agentCmd,
	}
	c.KMSAWS = embeddedKMS(s)
	// Cloud VMs download the agent from this API: a reachable address of it.
	c.PublicURL = LocalAPIServer(s)
	return c
}

// LocalAPIServer is the URL of the API that flotilla up serves with
// settings s, as a process on this host reaches it (an unspecified bind
// address is loopback): the server a client logs in to.
func LocalAPIServer(s *datadir.Settings) string {
	scheme := "http"
	if s.APITLS != "" {
		scheme = "https"
	}
	return scheme + "://" + reachable(s.Addr(datadir.OffsetHTTP))
}

// embeddedKMS is the AWS KMS key the settings choose, nil for the local
// master key. With it, <dir>/keys/master.key stays the previous key, read
// only and never created (Config.OpenKMS).
func embeddedKMS(s *datadir.Settings) *AWSKMS {
	if s.KMS == nil || s.KMS.Provider != datadir.KMSAWS {
		return nil
	}
	return &AWSKMS{KeyID: s.KMS.KeyID, CloudAccountID: s.KMS.CloudAccountID, Account: awsx.Account{
		Region: s.KMS.Region, EndpointURL: s.KMS.EndpointURL, RoleARN: s.KMS.RoleARN,
	}}
}

// EmbeddedKMSConfig is the KMS part of the configuration `flotilla up`
// runs with from the data directory's settings (for OpenKMS).
func EmbeddedKMSConfig(s *datadir.Settings, d datadir.Dir) Config {
	return Config{KMSKeyFile: d.MasterKey(), CreateKMSKey: true, KMSAWS: embeddedKMS(s)}
}

// apiTLS is the API's TLS configuration from the settings; nil for none.
func apiTLS(s *datadir.Settings, caCert, caKey string) (*tls.Config, error) {
	var get pki.GetCertificate
	var err error
	switch s.APITLS {
	case "":
		return nil, nil
	case datadir.APITLSFiles:
		get, err = pki.FileCertificate(s.TLSCertFile, s.TLSKeyFile)
	case datadir.APITLSFleetCA:
		var auth *pki.Authority
		if auth, _, err = pki.LoadOrCreate(caCert, caKey, time.Now()); err == nil {
			get, err = pki.ServingCertificate(auth, apiServerNames(s), APICertTTL, time.Now)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("API TLS: %w", err)
	}
	return &tls.Config{GetCertificate: get}, nil
}

// APICertTTL is how long an API certificate from the fleet CA is valid; a
// new one is issued when two thirds of it have passed.
const APICertTTL = 30 * 24 * time.Hour

// apiServerNames are the names the fleet CA's API certificate carries.
func apiServerNames(s *datadir.Settings) []string {
	if len(s.APIServerNames) > 0 {
		return s.APIServerNames
	}
	names := []string{"localhost", "127.0.0.1"}
	if ip := net.ParseIP(s.BindAddress); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		names = append(names, s.BindAddress)
	}
	if h, err := os.Hostname(); err == nil {
		if n, _, err := pki.ParseServerName(h); err == nil && n != "localhost" {
			names = append(names, n)
		}
	}
	return names
}

// ensureServiceRole makes the managed PostgreSQL's service role, as its
// superuser.
func ensureServiceRole(ctx context.Context, s *datadir.Settings) error {
	conn, err := pgx.Connect(ctx, s.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgstore.EnsureServiceRole(ctx, conn, datadir.ServiceRole, s.ServicePostgresPassword, "flotilla")
}

func managedPostgres(ctx context.Context, d datadir.Dir, s *datadir.Settings) (*pgmanaged.Server, error) {
	pg, err := pgmanaged.Init(ctx, managedPostgresOptions(d, s))
	if err != nil {
		return nil, fmt.Errorf("managed PostgreSQL: %w", err)
	}
	return pg, nil
}

// managedPostgresOptions are the managed PostgreSQL's options in d.
func managedPostgresOptions(d datadir.Dir, s *datadir.Settings) pgmanaged.Options {
	return pgmanaged.Options{
		Dir: d.Postgres(), LogFile: d.Path("logs", "postgresql.log"),
		Port: s.Port(datadir.OffsetPostgres), Password: s.PostgresPassword, Database: "flotilla",
	}
}

// APIURL is the base URL of the REST API, as a process on this host
// reaches it.
func (e *Embedded) APIURL() string { return LocalAPIServer(e.Settings) + "/api/v1" }

// Run serves until ctx ends or a service fails, then stops the services (see
// Stack.Run), NATS and PostgreSQL, and flushes telemetry.
func (e *Embedded) Run(ctx context.Context) error {
	e.log.InfoContext(ctx, "Flotilla is up",
		"api", e.APIURL(), "grpc", e.GRPCAddr,
		"agents", e.AgentAddr, "metrics", "http://"+e.MetricsAddr+"/metrics",
		"data_dir", string(e.Dir))
	err := e.Stack.Run(ctx)
	e.log.Info("stopping Flotilla")
	return errors.Join(err, e.close(context.Background()))
}

// close stops what StartEmbedded started besides the stack, in reverse order.
func (e *Embedded) close(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		if err := e.closers[i](sctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WithDatabase runs f with a pool on the data directory's database, whether
// or not `flotilla up` is running on it: a managed PostgreSQL that is not
// running is started for the duration of f and stopped again.
func WithDatabase(ctx context.Context, dataDir string, o datadir.Overrides, f func(ctx context.Context, pool *pgxpool.Pool) error) error {
	return withDatabase(ctx, dataDir, o, func(ctx context.Context, _ *datadir.Settings, pool *pgxpool.Pool) error { return f(ctx, pool) })
}

// withDatabase is WithDatabase, also handing f the data directory's settings.
func withDatabase(ctx context.Context, dataDir string, o datadir.Overrides, f func(ctx context.Context, s *datadir.Settings, pool *pgxpool.Pool) error) error {
	d := datadir.Dir(dataDir)
	s, err := datadir.Prepare(d, o)
	if err != nil {
		return err
	}
	if s.ManagedPostgres {
		// While `flotilla up` runs, its PostgreSQL serves (and up holds the
		// directory). Otherwise this command takes the directory, so an
		// up started meanwhile does not take the PostgreSQL it is about to
		// stop.
		release, err := datadir.Lock(d, "a flotilla admin command")
		switch {
		case errors.Is(err, datadir.ErrInUse):
		case err != nil:
			return err
		default:
			defer release()
		}
		pg, err := managedPostgres(ctx, d, s)
		if err != nil {
			return err
		}
		if release != nil && !pg.Running() {
			if err := pg.Start(ctx); err != nil {
				return fmt.Errorf("managed PostgreSQL: %w", err)
			}
			defer func() { _ = pg.Stop(context.Background()) }()
		}
	}
	pool, err := pgstore.Open(ctx, s.DatabaseURL, noop.NewTracerProvider(), 30*time.Second, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(ctx, s, pool)
}

// warnOnly passes on warnings and errors only (the NATS server's start-up
// banner is not worth a log line each).
type warnOnly struct{ slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}

func (w warnOnly) WithAttrs(attrs []slog.Attr) slog.Handler {
	return warnOnly{w.Handler.WithAttrs(attrs)}
}

func (w warnOnly) WithGroup(name string) slog.Handler { return warnOnly{w.Handler.WithGroup(name)} }

// portNames say what flotilla up listens on at each offset from its base
// port.
var portNames = [datadir.PortCount]string{
	datadir.OffsetHTTP: "the HTTP API", datadir.OffsetGRPC: "the gRPC API", datadir.OffsetAgentGW: "the agent gateway",
	datadir.OffsetNATS: "NATS", datadir.OffsetPostgres: "the managed PostgreSQL", datadir.OffsetMetrics: "metrics",
}

// checkPortsFree fails, before anything starts, when a port flotilla up
// listens on is taken, naming it, what it is for and the base port. The
// managed PostgreSQL's is left to pgmanaged, which takes a crash's
// leftover server on it for its own.
func checkPortsFree(d datadir.Dir, s *datadir.Settings) error {
	for off := range datadir.PortCount {
		addr := s.Addr(off)
		switch off {
		case datadir.OffsetPostgres:
			continue
		case datadir.OffsetNATS:
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port(off))) // NATS listens on loopback only
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s (%s, base port + %d): %w; %s", addr, portNames[off], off, err, portsHint(d, s))
		}
		if err := ln.Close(); err != nil {
			return fmt.Errorf("check port %s: %w", addr, err)
		}
	}
	return nil
}

// portsHint says which ports flotilla up takes and how to choose others.
func portsHint(d datadir.Dir, s *datadir.Settings) string {
	return fmt.Sprintf("flotilla up takes the %d ports %d-%d (basePort in %s): stop what listens there, or choose another base with --port",
		datadir.PortCount, s.Port(0), s.Port(datadir.PortCount-1), d.SettingsFile())
}
