package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/caarlos0/env/v11"
	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/telemetry"
)

// envConfig is what `flotilla up` reads from the environment.
type envConfig struct {
	OTLPEndpoint string `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPProtocol string `env:"OTEL_EXPORTER_OTLP_PROTOCOL"`
	LogLevel     string `env:"FLOTILLA_LOG_LEVEL" envDefault:"info"`
	LogJSON      bool   `env:"FLOTILLA_LOG_JSON"`
}

func newUp() *cobra.Command {
	var (
		dir              string
		port             int
		dbURL            string
		useTLS, insecure bool
		tlsCert, tlsKey  string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run all of Flotilla in one process (embedded NATS, managed PostgreSQL, every service)",
		Long: `Run all of Flotilla in one process.

The data directory holds the settings (config/settings.json), logs, the
managed PostgreSQL cluster and the NATS store; it is created on first start.
Flotilla listens on the base port and the next five:

  base+0  HTTP API (REST, OpenAPI document, web console)
  base+1  gRPC API
  base+2  agent gateway
  base+3  NATS (loopback only)
  base+4  managed PostgreSQL (loopback only)
  base+5  Prometheus metrics

The HTTP and gRPC API are served without TLS only on a loopback
bindAddress (the default, 127.0.0.1). To serve them over TLS, start once
with --tls (a certificate from the fleet CA for localhost, the bind
address and this host's name; apiServerNames in the settings lists
others) or --tls-cert and --tls-key (your own, re-read when they change);
the choice is saved in the settings. --insecure-http serves a non-loopback
bindAddress in the clear, for a proxy in front that terminates TLS.`,
		Example: `  flotilla up                                   # ./.flotilla, API at http://127.0.0.1:7700
  flotilla up --data-dir /var/lib/flotilla --tls  # the API over TLS from the fleet CA`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ec envConfig
			if err := env.Parse(&ec); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(ec.LogLevel)); err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
				return err
			}
			logFile, err := os.OpenFile(filepath.Join(dir, "logs", "flotilla.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
			if err != nil {
				return err
			}
			defer logFile.Close()
			log := telemetry.NewLogger(io.MultiWriter(os.Stderr, logFile), level, ec.LogJSON)
			o := stack.EmbeddedOptions{
				DataDir: dir, Log: log, Version: version,
				OTLPEndpoint: ec.OTLPEndpoint, OTLPProtocol: ec.OTLPProtocol,
				Overrides:    datadir.Overrides{DatabaseURL: dbURL},
				InsecureHTTP: insecure,
			}
			switch {
			case useTLS && tlsCert != "":
				return errors.New("--tls and --tls-cert: choose one (a certificate from the fleet CA, or your own)")
			case (tlsCert == "") != (tlsKey == ""):
				return errors.New("--tls-cert and --tls-key: give both")
			case useTLS:
				o.Overrides.APITLS = datadir.APITLSFleetCA
			case tlsCert != "":
				certAbs, err1 := filepath.Abs(tlsCert)
				keyAbs, err2 := filepath.Abs(tlsKey)
				if err := errors.Join(err1, err2); err != nil {
					return err
				}
				o.Overrides.APITLS, o.Overrides.TLSCertFile, o.Overrides.TLSKeyFile = datadir.APITLSFiles, certAbs, keyAbs
			}
			if cmd.Flags().Changed("port") {
				o.Overrides.BasePort = port
			}
			st, err := stack.StartEmbedded(cmd.Context(), o)
			if err != nil {
				return err
			}
			err = st.Run(cmd.Context())
			if err == nil {
				log.Info("Flotilla stopped")
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	cmd.Flags().IntVar(&port, "port", datadir.DefaultBasePort, "base port (the HTTP API); the next five ports are used too")
	cmd.Flags().StringVar(&dbURL, "database-url", "", "use this external PostgreSQL instead of a managed one (saved in the settings)")
	cmd.Flags().BoolVar(&useTLS, "tls", false, "serve the API over TLS with a certificate from the fleet CA (saved in the settings)")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "serve the API over TLS with this certificate file (PEM; saved in the settings)")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "the private key file (PEM) of --tls-cert")
	cmd.Flags().BoolVar(&insecure, "insecure-http", false, "serve the API without TLS on a bindAddress other hosts can reach (behind a proxy that terminates TLS)")
	return cmd
}
