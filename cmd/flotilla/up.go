package main

import (
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
		dir   string
		port  int
		dbURL string
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
  base+5  Prometheus metrics`,
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
				Overrides: datadir.Overrides{DatabaseURL: dbURL},
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
	return cmd
}
