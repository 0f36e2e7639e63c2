package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/telemetry"
	"flotilla.dev/flotilla/services/gateway"
)

// EnvConfig is every setting a per-service binary (cmd/flotilla-<svc>) reads,
// all from the environment. Nothing else in Flotilla reads the environment
// for settings.
type EnvConfig struct {
	NATSURL string `env:"FLOTILLA_NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	// NATSCreds is the service's bus credentials file (its .creds, minted
	// by `flotilla admin bus-credentials`).
	NATSCreds string `env:"FLOTILLA_NATS_CREDS"`
	// NATSCAFile makes the connection TLS, verifying the servers against
	// it; NATSCertFile and NATSKeyFile add a client certificate.
	NATSCAFile   string `env:"FLOTILLA_NATS_CA_FILE"`
	NATSCertFile string `env:"FLOTILLA_NATS_CERT_FILE"`
	NATSKeyFile  string `env:"FLOTILLA_NATS_KEY_FILE"`
	DatabaseURL  string `env:"FLOTILLA_DATABASE_URL"`
	// DatabaseOwnerURL connects as the schema's owner, for migrations only.
	DatabaseOwnerURL string `env:"FLOTILLA_DATABASE_OWNER_URL"`
	HTTPAddr         string `env:"FLOTILLA_HTTP_ADDR" envDefault:"127.0.0.1:7700"`
	GRPCAddr         string `env:"FLOTILLA_GRPC_ADDR" envDefault:"127.0.0.1:7701"`
	// TLSCertFile and TLSKeyFile serve the HTTP and gRPC API over TLS (PEM,
	// re-read when they change). Without them the gateway listens only on
	// loopback unless InsecureHTTP (behind a proxy that terminates TLS).
	TLSCertFile  string `env:"FLOTILLA_TLS_CERT_FILE"`
	TLSKeyFile   string `env:"FLOTILLA_TLS_KEY_FILE"`
	InsecureHTTP bool   `env:"FLOTILLA_INSECURE_HTTP"`
	// MaxRequestBytes and RequestReadTimeout bound what an API client sends.
	MaxRequestBytes    int64         `env:"FLOTILLA_MAX_REQUEST_BYTES" envDefault:"1048576"`
	RequestReadTimeout time.Duration `env:"FLOTILLA_REQUEST_READ_TIMEOUT" envDefault:"30s"`
	MetricsAddr        string        `env:"FLOTILLA_METRICS_ADDR"`
	// Profiling serves /debug/pprof/ on the metrics address.
	Profiling bool `env:"FLOTILLA_PPROF"`
	// BusConcurrency is how many requests each endpoint serves at once.
	BusConcurrency int `env:"FLOTILLA_BUS_CONCURRENCY" envDefault:"32"`
	// KMSProvider chooses what wraps the secrets' data keys: "local" (the
	// master key in KMSKeyFile) or "aws" (the AWS KMS key KMSAWSKeyID, with
	// the host's default AWS credentials or the role KMSAWSRoleARN; a
	// KMSKeyFile given then is the previous local key, read only).
	KMSProvider string `env:"FLOTILLA_KMS_PROVIDER" envDefault:"local"`
	KMSKeyFile  string `env:"FLOTILLA_KMS_KEY_FILE"`
	KMSAWSKeyID string `env:"FLOTILLA_KMS_AWS_KEY_ID"`
	// KMSAWSRegion, KMSAWSEndpointURL (a private endpoint; "" for AWS's)
	// and KMSAWSRoleARN locate and sign in to the AWS key.
	KMSAWSRegion      string `env:"FLOTILLA_KMS_AWS_REGION"`
	KMSAWSEndpointURL string `env:"FLOTILLA_KMS_AWS_ENDPOINT_URL"`
	KMSAWSRoleARN     string `env:"FLOTILLA_KMS_AWS_ROLE_ARN"`
	// KMSAWSCloudAccountID takes region, endpoint and role from a cloud
	// account instead (one without static keys).
	KMSAWSCloudAccountID string `env:"FLOTILLA_KMS_AWS_CLOUD_ACCOUNT_ID"`
	CACertFile           string `env:"FLOTILLA_CA_CERT_FILE"`
	CAKeyFile            string `env:"FLOTILLA_CA_KEY_FILE"`
	// SecretsManagerRegion (and SecretsManagerEndpointURL) is the AWS
	// Secrets Manager the CA reads referenced certificate keys in, with the
	// host's default credential chain.
	SecretsManagerRegion      string `env:"FLOTILLA_SECRETS_MANAGER_REGION"`
	SecretsManagerEndpointURL string `env:"FLOTILLA_SECRETS_MANAGER_ENDPOINT_URL"`
	// AgentAddr is where the agent gateway listens for agents.
	AgentAddr string `env:"FLOTILLA_AGENT_ADDR" envDefault:":7702"`
	// AgentServerNames are the names agents dial the agent gateway by (its
	// certificate's SANs): the load balancer's name in a cluster.
	AgentServerNames []string `env:"FLOTILLA_AGENT_SERVER_NAMES" envDefault:"localhost,127.0.0.1" envSeparator:","`
	// AgentGatewayAddr is the address the provisioner gives new agents, and
	// the gateway gives operators with join tokens for external instances.
	AgentGatewayAddr string `env:"FLOTILLA_AGENT_GATEWAY_ADDR" envDefault:"127.0.0.1:7702"`
	// LocalRoot enables the local provider, keeping its disks and VMs here;
	// without it the provisioner runs the external provider alone.
	LocalRoot string `env:"FLOTILLA_LOCAL_ROOT"`
	// AgentCommand starts a local-provider agent (words separated by spaces);
	// empty means flotilla-agent beside this executable.
	AgentCommand   string `env:"FLOTILLA_AGENT_COMMAND"`
	StreamReplicas int    `env:"FLOTILLA_STREAM_REPLICAS" envDefault:"1"`
	// NATSMonitorURLs are the NATS servers' monitoring endpoints
	// (http://host:8222, comma-separated): the gateway reports the servers
	// and the JetStream meta leader from them in GET /api/v1/cluster.
	NATSMonitorURLs []string `env:"FLOTILLA_NATS_MONITOR_URLS" envSeparator:","`
	// PatroniURLs are Patroni's REST APIs (http://host:8008,
	// comma-separated): the gateway reports the PostgreSQL members from them.
	PatroniURLs []string `env:"FLOTILLA_PATRONI_URLS" envSeparator:","`
	// TrustedProxies are the reverse proxies in front of the gateway
	// (addresses or CIDR prefixes, comma-separated) whose X-Forwarded-For
	// names the client: its address for the per-address login limit and
	// in audit records (empty: the connection's peer, always).
	TrustedProxies []string `env:"FLOTILLA_TRUSTED_PROXIES" envSeparator:","`
	// PublicURL is the API's URL as cloud VMs reach it: they download the
	// agent there (gateway.AgentDownloadPath).
	PublicURL string `env:"FLOTILLA_PUBLIC_URL"`
	// CertificateWarning is how long before a node certificate ends the
	// fleet overview names its instance (gateway).
	CertificateWarning time.Duration `env:"FLOTILLA_CERTIFICATE_WARNING" envDefault:"336h"`
	// HostName is the host the process is listed under in the cluster's
	// managers (default: the machine's host name).
	HostName     string `env:"FLOTILLA_HOST_NAME"`
	LogLevel     string `env:"FLOTILLA_LOG_LEVEL" envDefault:"info"`
	LogJSON      bool   `env:"FLOTILLA_LOG_JSON"`
	OTLPEndpoint string `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPProtocol string `env:"OTEL_EXPORTER_OTLP_PROTOCOL"`
}

// LoadEnvConfig reads the settings of flotilla-<service> as the binary does:
// environ (nil: the process's environment), then the command line args over
// it (--creds FILE is FLOTILLA_NATS_CREDS). It does not validate them.
func LoadEnvConfig(service string, environ map[string]string, args []string) (EnvConfig, error) {
	var ec EnvConfig
	if err := env.ParseWithOptions(&ec, env.Options{Environment: environ}); err != nil {
		return ec, err
	}
	return ec, parseFlags(&ec, service, args)
}

// Validate reports every problem at once for a binary running service,
// naming the environment variable: the settings (ValidateSettings) and the
// files they name on this host (CheckFiles).
func (c EnvConfig) Validate(service string) error {
	return errors.Join(c.ValidateSettings(service), c.CheckFiles(service))
}

// ConfigFile is a file or directory a setting names.
type ConfigFile struct {
	// Var is the environment variable that names it.
	Var  string
	Path string
	// Given means it must exist before the service starts (credentials,
	// keys an operator supplies); otherwise the service creates it when
	// missing (the fleet CA, the local provider's root) and must be able to
	// write where it lives.
	Given bool
}

// Files lists the files and directories service reads or writes that the
// settings name, those not set left out.
func (c EnvConfig) Files(service string) []ConfigFile {
	var fs []ConfigFile
	add := func(name, path string, given bool) {
		if path != "" {
			fs = append(fs, ConfigFile{Var: name, Path: path, Given: given})
		}
	}
	add("FLOTILLA_NATS_CREDS", c.NATSCreds, true)
	add("FLOTILLA_NATS_CA_FILE", c.NATSCAFile, true)
	add("FLOTILLA_NATS_CERT_FILE", c.NATSCertFile, true)
	add("FLOTILLA_NATS_KEY_FILE", c.NATSKeyFile, true)
	switch service {
	case subjects.Gateway:
		add("FLOTILLA_TLS_CERT_FILE", c.TLSCertFile, true)
		add("FLOTILLA_TLS_KEY_FILE", c.TLSKeyFile, true)
	case subjects.Secrets:
		add("FLOTILLA_KMS_KEY_FILE", c.KMSKeyFile, true)
	case subjects.CA:
		// Generated there at first start when neither exists.
		add("FLOTILLA_CA_CERT_FILE", c.CACertFile, false)
		add("FLOTILLA_CA_KEY_FILE", c.CAKeyFile, false)
	case subjects.Provisioner:
		add("FLOTILLA_LOCAL_ROOT", c.LocalRoot, false)
	}
	return fs
}

// CheckFiles reports every file service must be given (Files) that does
// not exist on this host, naming the environment variable.
func (c EnvConfig) CheckFiles(service string) error {
	var errs []error
	for _, f := range c.Files(service) {
		if !f.Given {
			continue
		}
		if _, err := os.Stat(f.Path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Var, err))
		}
	}
	return errors.Join(errs...)
}

// ValidateSettings reports every problem with the settings for a binary
// running service, naming the environment variable, without looking at the
// files they name (CheckFiles).
func (c EnvConfig) ValidateSettings(service string) error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("FLOTILLA_NATS_URL: is required"))
	}
	if (c.NATSCertFile == "") != (c.NATSKeyFile == "") {
		errs = append(errs, errors.New("FLOTILLA_NATS_CERT_FILE, FLOTILLA_NATS_KEY_FILE: give both or neither"))
	}
	if c.NATSCertFile != "" && c.NATSCAFile == "" {
		errs = append(errs, errors.New("FLOTILLA_NATS_CA_FILE: is required with a client certificate (it makes the connection TLS)"))
	}
	if c.NATSCreds == "" {
		errs = append(errs, errors.New("FLOTILLA_NATS_CREDS: is required: the service's bus credentials file (flotilla admin bus-credentials)"))
	}
	hostPort := func(name, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, v))
		}
	}
	switch service {
	case subjects.Inventory:
		if c.DatabaseURL == "" {
			errs = append(errs, errors.New("FLOTILLA_DATABASE_URL: is required by this service"))
		}
	case subjects.Secrets:
		if c.DatabaseURL == "" {
			errs = append(errs, errors.New("FLOTILLA_DATABASE_URL: is required by this service"))
		}
		if err := c.validateKMS(); err != nil {
			errs = append(errs, err)
		}
	case subjects.CA:
		if c.CACertFile == "" || c.CAKeyFile == "" {
			errs = append(errs, errors.New("FLOTILLA_CA_CERT_FILE, FLOTILLA_CA_KEY_FILE: are required by this service (the fleet CA's PEM files, shared by every manager)"))
		}
	case subjects.AgentGW:
		hostPort("FLOTILLA_AGENT_ADDR", c.AgentAddr)
	case subjects.Gateway:
		hostPort("FLOTILLA_HTTP_ADDR", c.HTTPAddr)
		if c.MaxRequestBytes < 1<<10 || c.MaxRequestBytes > 64<<20 {
			errs = append(errs, fmt.Errorf("FLOTILLA_MAX_REQUEST_BYTES: %d must be between 1024 and %d (64 MiB)", c.MaxRequestBytes, 64<<20))
		}
		if c.RequestReadTimeout < time.Second {
			errs = append(errs, fmt.Errorf("FLOTILLA_REQUEST_READ_TIMEOUT: %v must be at least 1s", c.RequestReadTimeout))
		}
		hostPort("FLOTILLA_GRPC_ADDR", c.GRPCAddr)
		hostPort("FLOTILLA_AGENT_GATEWAY_ADDR", c.AgentGatewayAddr)
		if _, err := gateway.ParseProxies(c.TrustedProxies); err != nil {
			errs = append(errs, fmt.Errorf("FLOTILLA_TRUSTED_PROXIES: %w", err))
		}
		if err := CheckCertificateWarning(c.CertificateWarning); c.CertificateWarning != 0 && err != nil { // 0: the default
			errs = append(errs, fmt.Errorf("FLOTILLA_CERTIFICATE_WARNING: %w", err))
		}
		if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
			errs = append(errs, errors.New("FLOTILLA_TLS_CERT_FILE, FLOTILLA_TLS_KEY_FILE: give both or neither"))
		}
		if c.TLSCertFile == "" && !c.InsecureHTTP {
			for name, addr := range map[string]string{"FLOTILLA_HTTP_ADDR": c.HTTPAddr, "FLOTILLA_GRPC_ADDR": c.GRPCAddr} {
				if err := checkPlainAPIAddr(addr); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w: set FLOTILLA_TLS_CERT_FILE and FLOTILLA_TLS_KEY_FILE, or FLOTILLA_INSECURE_HTTP=true behind a proxy that terminates TLS", name, err))
				}
			}
		}
	case subjects.Provisioner:
		hostPort("FLOTILLA_AGENT_GATEWAY_ADDR", c.AgentGatewayAddr)
		if c.PublicURL != "" {
			if err := checkHTTPURL(c.PublicURL); err != nil {
				errs = append(errs, fmt.Errorf("FLOTILLA_PUBLIC_URL: %w", err))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("%q is not a Flotilla service", service))
	}
	if c.MetricsAddr != "" {
		hostPort("FLOTILLA_METRICS_ADDR", c.MetricsAddr)
	}
	for name, urls := range map[string][]string{"FLOTILLA_NATS_MONITOR_URLS": c.NATSMonitorURLs, "FLOTILLA_PATRONI_URLS": c.PatroniURLs} {
		for _, u := range urls {
			if err := checkHTTPURL(u); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	if c.BusConcurrency < 1 || c.BusConcurrency > 1024 {
		errs = append(errs, fmt.Errorf("FLOTILLA_BUS_CONCURRENCY: must be between 1 and 1024, got %d", c.BusConcurrency))
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

// Config is the stack configuration that runs service alone.
func (c EnvConfig) Config(service string) Config {
	return Config{
		Services:           []string{service},
		NATSURL:            c.NATSURL,
		NATSCreds:          map[string]string{service: c.NATSCreds},
		StreamReplicas:     c.StreamReplicas,
		DatabaseURL:        c.DatabaseURL,
		DatabaseOwnerURL:   c.DatabaseOwnerURL,
		HTTPAddr:           c.HTTPAddr,
		GRPCAddr:           c.GRPCAddr,
		MaxRequestBytes:    c.MaxRequestBytes,
		RequestReadTimeout: c.RequestReadTimeout,
		MetricsAddr:        c.MetricsAddr,
		BusConcurrency:     c.BusConcurrency,
		Profiling:          c.Profiling,
		AgentAddr:          c.AgentAddr,
		AgentServerNames:   c.AgentServerNames,
		AgentGatewayAddr:   c.AgentGatewayAddr,
		CACertFile:         c.CACertFile,
		CAKeyFile:          c.CAKeyFile,
		KMSKeyFile:         c.KMSKeyFile,
		KMSAWS:             c.kmsAWS(),
		SecretsManager:     secretsManager(c.SecretsManagerRegion, c.SecretsManagerEndpointURL),
		LocalRoot:          c.LocalRoot,
		AgentCommand:       strings.Fields(c.AgentCommand),
		NATSMonitorURLs:    c.NATSMonitorURLs,
		PatroniURLs:        c.PatroniURLs,
		TrustedProxies:     trustedProxies(c.TrustedProxies),
		CertificateWarning: c.CertificateWarning,
		HostName:           c.HostName,
		PublicURL:          c.PublicURL,
	}
}

// Main runs one service as its own process (cmd/flotilla-<svc>) until
// SIGINT or SIGTERM, and returns the exit status for the binary's main to
// exit with: 0, or 1 after printing the error.
func Main(service, version string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ec, err := LoadEnvConfig(service, nil, os.Args[1:])
	if err == nil {
		err = ec.Validate(service)
	}
	if err == nil {
		err = runService(ctx, service, version, ec)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flotilla-%s: %v\n", service, err)
		return 1
	}
	return 0
}

// parseFlags applies the command line over the environment: --creds FILE
// is FLOTILLA_NATS_CREDS.
func parseFlags(ec *EnvConfig, service string, args []string) error {
	fs := flag.NewFlagSet("flotilla-"+service, flag.ContinueOnError)
	fs.StringVar(&ec.NATSCreds, "creds", ec.NATSCreds, "the service's bus credentials file (FLOTILLA_NATS_CREDS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: settings come from the environment (see FLOTILLA_* in the README)", fs.Args())
	}
	return nil
}

func runService(ctx context.Context, service, version string, ec EnvConfig) error {
	var level slog.Level
	_ = level.UnmarshalText([]byte(ec.LogLevel))
	log := telemetry.NewLogger(os.Stderr, level, ec.LogJSON).With("service", service)
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: service, ServiceVersion: version,
		OTLPEndpoint: ec.OTLPEndpoint, OTLPProtocol: ec.OTLPProtocol})
	if err != nil {
		return err
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	cfg := ec.Config(service)
	cfg.Version, cfg.Log, cfg.TracerProvider = version, log, tel.TracerProvider()
	if ec.NATSCAFile != "" {
		if cfg.NATSTLS, err = natsx.ClientTLS(ec.NATSCAFile, ec.NATSCertFile, ec.NATSKeyFile); err != nil {
			return fmt.Errorf("FLOTILLA_NATS_CA_FILE: %w", err)
		}
	}
	if ec.TLSCertFile != "" && service == subjects.Gateway {
		get, err := pki.FileCertificate(ec.TLSCertFile, ec.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("FLOTILLA_TLS_CERT_FILE: %w", err)
		}
		cfg.APITLS = &tls.Config{GetCertificate: get}
	}
	st, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "service started", "nats", ec.NATSURL, "version", version)
	err = st.Run(ctx)
	log.Info("service stopped")
	return err
}

// checkPlainAPIAddr refuses an address other hosts can reach (any but a
// loopback address or localhost) for an API served in the clear: bearer
// tokens and passwords would cross the network readable.
func checkPlainAPIAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil // reported as not host:port
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is reachable from other hosts, and the API would be served without TLS", addr)
}

// checkHTTPURL refuses anything but an absolute http or https URL with a
// host, such as http://10.0.0.1:8222.
func checkHTTPURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL with a host", raw)
	}
	return nil
}

// secretsManager is the account of FLOTILLA_SECRETS_MANAGER_REGION, if set.
func secretsManager(region, endpoint string) *awsx.Account {
	if region == "" {
		return nil
	}
	return &awsx.Account{Region: region, EndpointURL: endpoint}
}

// trustedProxies are the proxies of FLOTILLA_TRUSTED_PROXIES, which
// ValidateSettings checked; a list it refuses trusts nobody.
func trustedProxies(entries []string) gateway.Proxies {
	p, _ := gateway.ParseProxies(entries)
	return p
}

// CheckCertificateWarning checks the fleet overview's window for node
// certificates: an hour to a year.
func CheckCertificateWarning(d time.Duration) error {
	if d < time.Hour || d > 365*24*time.Hour {
		return fmt.Errorf("%v must be between 1h and 8760h (365 days), such as 720h for 30 days", d)
	}
	return nil
}
