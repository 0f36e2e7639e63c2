// Package svcmain is the shared main of the per-service binaries under cmd/
// (cmd/inventory, cmd/gateway, ...), used when the services run as separate
// processes against an external NATS and PostgreSQL. It reads one typed
// config from the environment, builds telemetry, the NATS connection and
// (when asked) the database pool, runs the service until SIGINT/SIGTERM, and
// closes everything in reverse order.
package svcmain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/telemetry"
)

// Config is every setting a service binary reads, all from the environment.
type Config struct {
	NATSURL     string `env:"FLOTILLA_NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	NATSToken   string `env:"FLOTILLA_NATS_TOKEN"`
	DatabaseURL string `env:"FLOTILLA_DATABASE_URL"`
	HTTPAddr    string `env:"FLOTILLA_HTTP_ADDR" envDefault:":7700"`
	GRPCAddr    string `env:"FLOTILLA_GRPC_ADDR" envDefault:":7701"`
	MetricsAddr string `env:"FLOTILLA_METRICS_ADDR"`
	KMSKeyFile  string `env:"FLOTILLA_KMS_KEY_FILE"`
	CACertFile  string `env:"FLOTILLA_CA_CERT_FILE"`
	CAKeyFile   string `env:"FLOTILLA_CA_KEY_FILE"`
	// AgentAddr is where the agent gateway listens for agents.
	AgentAddr string `env:"FLOTILLA_AGENT_ADDR" envDefault:":7702"`
	// AgentServerNames are the names agents dial the agent gateway by (its
	// certificate's SANs): the load balancer's name in a cluster.
	AgentServerNames []string `env:"FLOTILLA_AGENT_SERVER_NAMES" envDefault:"localhost,127.0.0.1" envSeparator:","`
	// AgentGatewayAddr is the address the provisioner gives new agents.
	AgentGatewayAddr string `env:"FLOTILLA_AGENT_GATEWAY_ADDR" envDefault:"127.0.0.1:7702"`
	// LocalRoot enables the local provider, keeping its disks and VMs here.
	LocalRoot string `env:"FLOTILLA_LOCAL_ROOT"`
	// AgentCommand starts a local-provider agent (words separated by spaces);
	// empty means flotilla-agent beside this executable.
	AgentCommand   string `env:"FLOTILLA_AGENT_COMMAND"`
	StreamReplicas int    `env:"FLOTILLA_STREAM_REPLICAS" envDefault:"1"`
	LogLevel       string `env:"FLOTILLA_LOG_LEVEL" envDefault:"info"`
	LogJSON        bool   `env:"FLOTILLA_LOG_JSON"`
	OTLPEndpoint   string `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPProtocol   string `env:"OTEL_EXPORTER_OTLP_PROTOCOL"`
}

// Needs says which optional settings a service requires.
type Needs struct {
	Database    bool
	Listen      bool
	KMS         bool
	CA          bool
	AgentListen bool
}

// Validate reports every problem at once, naming the environment variable.
func (c Config) Validate(n Needs) error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("FLOTILLA_NATS_URL: is required"))
	}
	if n.Database && c.DatabaseURL == "" {
		errs = append(errs, errors.New("FLOTILLA_DATABASE_URL: is required by this service"))
	}
	if n.KMS && c.KMSKeyFile == "" {
		errs = append(errs, errors.New("FLOTILLA_KMS_KEY_FILE: is required by this service (the master key file every manager shares)"))
	}
	if n.CA && (c.CACertFile == "" || c.CAKeyFile == "") {
		errs = append(errs, errors.New("FLOTILLA_CA_CERT_FILE, FLOTILLA_CA_KEY_FILE: are required by this service (the fleet CA's PEM files, shared by every manager)"))
	}
	if n.AgentListen {
		if _, _, err := net.SplitHostPort(c.AgentAddr); err != nil {
			errs = append(errs, fmt.Errorf("FLOTILLA_AGENT_ADDR: %q is not host:port", c.AgentAddr))
		}
	}
	if n.Listen {
		for name, addr := range map[string]string{"FLOTILLA_HTTP_ADDR": c.HTTPAddr, "FLOTILLA_GRPC_ADDR": c.GRPCAddr} {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, addr))
			}
		}
	}
	if c.StreamReplicas != 1 && c.StreamReplicas != 3 {
		errs = append(errs, fmt.Errorf("FLOTILLA_STREAM_REPLICAS: must be 1 or 3, got %d", c.StreamReplicas))
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("FLOTILLA_LOG_LEVEL: %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// Deps are what Main built for the service.
type Deps struct {
	Config         Config
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	NATS           *nats.Conn
	// Pool is nil unless Needs.Database.
	Pool    *pgxpool.Pool
	Version string
}

// Runner is a constructed service.
type Runner interface {
	Run(ctx context.Context) error
}

// Main runs one service binary and exits; only it exits the process.
func Main(name, version string, needs Needs, build func(ctx context.Context, d Deps) (Runner, error)) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var cfg Config
	err := env.Parse(&cfg)
	if err == nil {
		err = cfg.Validate(needs)
	}
	if err == nil {
		err = run(ctx, name, version, cfg, needs, build)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "flotilla-%s: %v\n", name, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, name, version string, cfg Config, needs Needs, build func(context.Context, Deps) (Runner, error)) error {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := telemetry.NewLogger(os.Stderr, level, cfg.LogJSON).With("service", name)
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: name, ServiceVersion: version, OTLPEndpoint: cfg.OTLPEndpoint, OTLPProtocol: cfg.OTLPProtocol})
	if err != nil {
		return err
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	nc, err := natsx.Connect(cfg.NATSURL, "flotilla-"+name, cfg.NATSToken)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", cfg.NATSURL, err)
	}
	defer func() { _ = nc.Drain() }()
	d := Deps{Config: cfg, Log: log, TracerProvider: tel.TracerProvider(), NATS: nc, Version: version}
	if needs.Database {
		if d.Pool, err = pgstore.Open(ctx, cfg.DatabaseURL, tel.TracerProvider(), 60*time.Second); err != nil {
			return err
		}
		defer d.Pool.Close()
	}
	svc, err := build(ctx, d)
	if err != nil {
		return err
	}
	if cfg.MetricsAddr != "" {
		l, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("FLOTILLA_METRICS_ADDR: %w", err)
		}
		srv := telemetry.NewMetricsServer()
		go func() { _ = srv.Serve(l) }()
		defer func() { _ = srv.Close() }()
	}
	log.InfoContext(ctx, "service started", "nats", cfg.NATSURL, "version", version)
	err = svc.Run(ctx)
	log.Info("service stopped")
	return err
}
