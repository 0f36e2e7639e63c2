// Package allinone runs Flotilla in one process (`flotilla up`): it prepares
// the data directory, starts the managed PostgreSQL (unless the settings
// point at an external one) and an embedded NATS server with JetStream, and
// runs all six services from the same constructors their own binaries use.
// Stopping it stops everything it started, PostgreSQL included.
package allinone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"golang.org/x/sync/errgroup"

	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pgmanaged"
	"flotilla.dev/flotilla/libs/pgstore"
	"flotilla.dev/flotilla/libs/telemetry"
	"flotilla.dev/flotilla/services/agentgw"
	"flotilla.dev/flotilla/services/ca"
	"flotilla.dev/flotilla/services/gateway"
	"flotilla.dev/flotilla/services/inventory"
	"flotilla.dev/flotilla/services/provisioner"
	"flotilla.dev/flotilla/services/provisioner/driver"
	"flotilla.dev/flotilla/services/provisioner/driver/local"
	"flotilla.dev/flotilla/services/secrets"
)

// Options configure an all-in-one Flotilla.
type Options struct {
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
	// this executable's "agent" command.
	AgentCommand []string
}

// Stack is a started all-in-one Flotilla.
type Stack struct {
	Settings *datadir.Settings
	Dir      datadir.Dir
	// HTTPAddr and GRPCAddr are where the API listens.
	HTTPAddr, GRPCAddr string

	log      *slog.Logger
	tel      *telemetry.Telemetry
	pg       *pgmanaged.Server
	ns       *server.Server
	conns    []*nats.Conn
	pool     *pgxpool.Pool
	runners  []runner
	closers  []func(context.Context) error
	metrics  *http.Server
	metricsL net.Listener
}

type runner struct {
	name string
	run  func(context.Context) error
}

// Start prepares the data directory and starts every dependency and service.
// On error, whatever was started is stopped again.
func Start(ctx context.Context, o Options) (_ *Stack, err error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d := datadir.Dir(o.DataDir)
	settings, err := datadir.Prepare(d, o.Overrides)
	if err != nil {
		return nil, err
	}
	st := &Stack{Settings: settings, Dir: d, log: o.Log}
	defer func() {
		if err != nil {
			_ = st.close(context.Background())
		}
	}()

	st.tel, err = telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "flotilla", ServiceVersion: o.Version,
		OTLPEndpoint: o.OTLPEndpoint, OTLPProtocol: o.OTLPProtocol, SpanProcessors: o.SpanProcessors,
	})
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, st.tel.Shutdown)
	tp := st.tel.TracerProvider()

	if settings.ManagedPostgres {
		st.pg, err = pgmanaged.Init(ctx, pgmanaged.Options{
			Dir: d.Postgres(), LogFile: d.Path("logs", "postgresql.log"),
			Port: settings.Port(datadir.OffsetPostgres), Password: settings.PostgresPassword, Database: "flotilla",
		})
		if err != nil {
			return nil, fmt.Errorf("managed PostgreSQL: %w", err)
		}
		if err := st.pg.Start(ctx); err != nil {
			return nil, fmt.Errorf("managed PostgreSQL: %w", err)
		}
		st.closers = append(st.closers, st.pg.Stop)
		o.Log.InfoContext(ctx, "PostgreSQL started", "dir", d.Postgres(), "addr", fmt.Sprintf("127.0.0.1:%d", settings.Port(datadir.OffsetPostgres)))
	}

	st.ns, err = natsx.StartEmbedded(natsx.EmbeddedOptions{
		ServerName: "flotilla", Host: "127.0.0.1", Port: settings.Port(datadir.OffsetNATS),
		StoreDir: d.NATS(), Token: settings.NATSToken, Logger: slog.New(warnOnly{o.Log.Handler()}).With("component", "nats"),
	})
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, func(context.Context) error {
		st.ns.Shutdown()
		st.ns.WaitForShutdown()
		return nil
	})
	o.Log.InfoContext(ctx, "NATS started", "addr", st.ns.ClientURL(), "store", d.NATS())

	connect := func(name string) (*nats.Conn, error) {
		nc, err := natsx.ConnectInProcess(st.ns, "flotilla-"+name, settings.NATSToken)
		if err != nil {
			return nil, fmt.Errorf("connect %s to NATS: %w", name, err)
		}
		st.conns = append(st.conns, nc)
		return nc, nil
	}

	st.pool, err = pgstore.Open(ctx, settings.DatabaseURL, tp, 30*time.Second)
	if err != nil {
		return nil, err
	}

	// Services start in dependency order; the gateway, which takes outside
	// traffic, last.
	nc, err := connect("inventory")
	if err != nil {
		return nil, err
	}
	inv, err := inventory.New(ctx, inventory.Deps{Pool: st.pool, NATS: nc, Log: o.Log, TracerProvider: tp, Version: o.Version, StreamReplicas: 1})
	if err != nil {
		return nil, err
	}
	st.runners = append(st.runners, runner{"inventory", inv.Run})

	// Agents on this host reach the agent gateway on loopback when it binds
	// to every address.
	agentHost := settings.BindAddress
	if ip := net.ParseIP(agentHost); ip == nil || ip.IsUnspecified() {
		agentHost = "127.0.0.1"
	}
	agentAddr := net.JoinHostPort(agentHost, strconv.Itoa(settings.Port(datadir.OffsetAgentGW)))
	type simple interface{ Run(context.Context) error }
	for _, svc := range []struct {
		name string
		new  func(nc *nats.Conn) (simple, error)
	}{
		{"ca", func(nc *nats.Conn) (simple, error) {
			cert, key := settings.CAFiles(d)
			return ca.New(ctx, ca.Deps{NATS: nc, Log: o.Log, TracerProvider: tp, Version: o.Version, CertFile: cert, KeyFile: key, Replicas: 1})
		}},
		{"secrets", func(nc *nats.Conn) (simple, error) {
			k, err := kms.OpenLocal(d.Path("keys", "master.key"))
			if err != nil {
				return nil, err
			}
			return secrets.New(ctx, secrets.Deps{Pool: st.pool, NATS: nc, KMS: k, Log: o.Log, TracerProvider: tp, Version: o.Version, StreamReplicas: 1})
		}},
		{"provisioner", func(nc *nats.Conn) (simple, error) {
			cmd := o.AgentCommand
			if len(cmd) == 0 {
				exe, err := os.Executable()
				if err != nil {
					return nil, fmt.Errorf("local provider: find the agent: %w", err)
				}
				cmd = []string{exe, "agent"}
			}
			drv, err := local.New(local.Config{Root: string(d), AgentCommand: cmd, Log: o.Log.With("provider", local.Name)})
			if err != nil {
				return nil, err
			}
			return provisioner.New(ctx, provisioner.Deps{NATS: nc, Log: o.Log, TracerProvider: tp, Version: o.Version,
				Drivers: []driver.Driver{drv}, AgentGatewayAddr: agentAddr, StreamReplicas: 1})
		}},
		{"agentgw", func(nc *nats.Conn) (simple, error) {
			l, err := net.Listen("tcp", settings.Addr(datadir.OffsetAgentGW))
			if err != nil {
				return nil, fmt.Errorf("agent port: %w", err)
			}
			gw, err := agentgw.New(ctx, agentgw.Deps{NATS: nc, Log: o.Log, TracerProvider: tp, Version: o.Version, Listener: l,
				ServerNames: []string{"localhost", agentHost}})
			if err != nil {
				return nil, errors.Join(err, l.Close())
			}
			return gw, nil
		}},
	} {
		nc, err := connect(svc.name)
		if err != nil {
			return nil, err
		}
		s, err := svc.new(nc)
		if err != nil {
			return nil, err
		}
		st.runners = append(st.runners, runner{svc.name, s.Run})
	}

	httpL, err := net.Listen("tcp", settings.Addr(datadir.OffsetHTTP))
	if err != nil {
		return nil, fmt.Errorf("HTTP port: %w", err)
	}
	grpcL, err := net.Listen("tcp", settings.Addr(datadir.OffsetGRPC))
	if err != nil {
		_ = httpL.Close()
		return nil, fmt.Errorf("gRPC port: %w", err)
	}
	st.HTTPAddr, st.GRPCAddr = httpL.Addr().String(), grpcL.Addr().String()
	if nc, err = connect("gateway"); err != nil {
		_ = httpL.Close()
		_ = grpcL.Close()
		return nil, err
	}
	gw, err := gateway.New(ctx, gateway.Deps{NATS: nc, Log: o.Log, TracerProvider: tp, Version: o.Version, HTTPListener: httpL, GRPCListener: grpcL})
	if err != nil {
		_ = httpL.Close()
		_ = grpcL.Close()
		return nil, err
	}
	st.runners = append(st.runners, runner{"gateway", gw.Run})

	if st.metricsL, err = net.Listen("tcp", settings.Addr(datadir.OffsetMetrics)); err != nil {
		return nil, fmt.Errorf("metrics port: %w", err)
	}
	st.metrics = telemetry.NewMetricsServer()
	return st, nil
}

// Run serves until ctx ends or a service fails, then stops everything: the
// gateway stops taking requests, services stop, NATS connections drain, the
// pool closes, NATS and PostgreSQL stop, telemetry flushes.
func (st *Stack) Run(ctx context.Context) error {
	st.log.InfoContext(ctx, "Flotilla is up",
		"api", "http://"+st.HTTPAddr+"/api/v1", "grpc", st.GRPCAddr,
		"agents", st.Settings.Addr(datadir.OffsetAgentGW), "metrics", "http://"+st.metricsL.Addr().String()+"/metrics",
		"data_dir", string(st.Dir))
	eg, gctx := errgroup.WithContext(ctx)
	for _, r := range st.runners {
		eg.Go(func() error {
			if err := r.run(gctx); err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			return nil
		})
	}
	eg.Go(func() error {
		if err := st.metrics.Serve(st.metricsL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics: %w", err)
		}
		return nil
	})
	eg.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return st.metrics.Shutdown(sctx)
	})
	err := eg.Wait()
	st.log.Info("stopping Flotilla")
	cerr := st.close(context.Background())
	if err != nil {
		return err
	}
	return cerr
}

// close stops what Start started, in reverse order.
func (st *Stack) close(ctx context.Context) error {
	var errs []error
	for i := len(st.conns) - 1; i >= 0; i-- {
		if err := st.conns[i].Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, err)
		}
	}
	for _, nc := range st.conns {
		for !nc.IsClosed() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if st.pool != nil {
		st.pool.Close()
	}
	if st.metricsL != nil && st.metrics == nil {
		_ = st.metricsL.Close()
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i := len(st.closers) - 1; i >= 0; i-- {
		if err := st.closers[i](sctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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
