// Package datadir lays out a Flotilla data directory and reads and writes its
// settings file, config/settings.json.
//
//	<dir>/config/settings.json   settings (mode 0600: it holds generated credentials)
//	<dir>/config/bus/            bus credentials: one .creds file per service, the observer's, the authority's keys (0600)
//	<dir>/logs/                  flotilla.log and the managed PostgreSQL's log
//	<dir>/postgres/              the managed PostgreSQL cluster, unless databaseURL is external
//	<dir>/nats/                  the embedded NATS server's JetStream store
//	<dir>/ca/                    the fleet CA's certificate and key (0600), unless the settings name others
//	<dir>/keys/                  the local KMS master key (0600)
//	<dir>/disks/, <dir>/vms/     the local provider's data disks and VMs
//
// The first start creates the layout and settings with fresh credentials;
// later starts read them, so a restart keeps every record.
package datadir

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// DefaultBasePort is the first of the consecutive ports Flotilla uses.
const DefaultBasePort = 7700

// Port offsets from the base port.
const (
	OffsetHTTP     = 0 // REST API, OpenAPI document, web console
	OffsetGRPC     = 1 // gRPC API
	OffsetAgentGW  = 2 // agent gateway (mTLS gRPC)
	OffsetNATS     = 3 // embedded NATS
	OffsetPostgres = 4 // managed PostgreSQL
	OffsetMetrics  = 5 // Prometheus metrics
	PortCount      = 6
)

// Settings are the contents of config/settings.json.
type Settings struct {
	// BasePort is the first of Flotilla's consecutive ports.
	BasePort int `json:"basePort"`
	// BindAddress is the address the HTTP, gRPC and agent ports listen on.
	BindAddress string `json:"bindAddress"`
	// DatabaseURL is the PostgreSQL connection URL.
	DatabaseURL string `json:"databaseURL"`
	// ManagedPostgres says Flotilla runs its own PostgreSQL in <dir>/postgres;
	// false means DatabaseURL points at an external server.
	ManagedPostgres bool `json:"managedPostgres"`
	// PostgresPassword is the managed PostgreSQL's password: its superuser,
	// which owns the schema and runs the migrations.
	PostgresPassword string `json:"postgresPassword,omitempty"`
	// ServicePostgresPassword is the password of ServiceRole, the managed
	// PostgreSQL's role the services connect as (rows only).
	ServicePostgresPassword string `json:"servicePostgresPassword,omitempty"`
	// NATSToken was the one bus token every client shared, before each
	// service had credentials of its own (config/bus/); a start drops it.
	NATSToken string `json:"natsToken,omitempty"`
	// CACertFile and CAKeyFile are the fleet CA's signing certificate and key
	// (PEM). Empty means <dir>/ca/ca.crt and ca.key, generated at first start;
	// an operator may point them at their own.
	CACertFile string `json:"caCertFile,omitempty"`
	CAKeyFile  string `json:"caKeyFile,omitempty"`
	// MaxRequestBytes caps an API request body (0: 1 MiB).
	MaxRequestBytes int64 `json:"maxRequestBytes,omitempty"`
	// APITLS serves the HTTP and gRPC API over TLS: "" (not at all; only on
	// a loopback bindAddress), APITLSFleetCA (a certificate the fleet CA
	// issues for APIServerNames, renewed while running) or APITLSFiles
	// (TLSCertFile and TLSKeyFile, re-read when they change).
	APITLS      string `json:"apiTLS,omitempty"`
	TLSCertFile string `json:"tlsCertFile,omitempty"`
	TLSKeyFile  string `json:"tlsKeyFile,omitempty"`
	// APIServerNames are the names the fleet CA's API certificate carries
	// (empty: localhost, 127.0.0.1, bindAddress and this host's name).
	APIServerNames []string `json:"apiServerNames,omitempty"`
	// KMS chooses what wraps the secrets' data keys; nil means the local
	// master key (<dir>/keys/master.key).
	KMS *KMSSettings `json:"kms,omitempty"`
	// TrustedProxies are the reverse proxies in front of the API
	// (addresses or CIDR prefixes) whose X-Forwarded-For names the client,
	// for the per-address login limit and the audit records (empty: none;
	// checked at start, gateway.ParseProxies).
	TrustedProxies []string `json:"trustedProxies,omitempty"`
	// CertificateWarning is how long before a node certificate ends the
	// fleet overview names its instance, a Go duration ("720h"; empty: 14
	// days).
	CertificateWarning string `json:"certificateWarning,omitempty"`
}

// KMSSettings choose what wraps the secrets' data keys.
//
// With provider "aws" new data keys are wrapped by the AWS KMS key KeyID,
// signing in with the host's default AWS credentials (environment, shared
// files, instance profile) or the role RoleARN; the local master key, when
// there is one, stays as the previous key to read what it wrapped until
// `flotilla admin rewrap-secrets` has rewrapped everything.
type KMSSettings struct {
	// Provider is "local" (the default) or "aws".
	Provider string `json:"provider"`
	// KeyID is the AWS key's id, ARN or alias ("alias/flotilla-secrets").
	KeyID string `json:"keyId,omitempty"`
	// Region is the AWS region of the key.
	Region string `json:"region,omitempty"`
	// EndpointURL replaces AWS KMS's endpoint (a private endpoint).
	EndpointURL string `json:"endpointUrl,omitempty"`
	// RoleARN is a role to assume with the host's credentials.
	RoleARN string `json:"roleArn,omitempty"`
	// CloudAccountID takes region, endpoint and role from that cloud
	// account instead (one signing in with the host's credentials or a
	// role: static keys are kept sealed under this very key).
	CloudAccountID string `json:"cloudAccountId,omitempty"`
}

// The KMS providers (KMSSettings.Provider).
const (
	KMSLocal = "local"
	KMSAWS   = "aws"
)

// validate reports every problem, naming each field as kms.<field>.
func (k *KMSSettings) validate() []error {
	var errs []error
	switch k.Provider {
	case "", KMSLocal:
		if k.KeyID != "" || k.Region != "" || k.EndpointURL != "" || k.RoleARN != "" || k.CloudAccountID != "" {
			errs = append(errs, errors.New(`kms.keyId, kms.region, kms.endpointUrl, kms.roleArn, kms.cloudAccountId: apply only when kms.provider is "aws"`))
		}
	case KMSAWS:
		if k.KeyID == "" {
			errs = append(errs, errors.New(`kms.keyId: is required when kms.provider is "aws" (a key id, key ARN or alias/NAME)`))
		}
		if k.CloudAccountID != "" {
			if _, err := uuid.Parse(k.CloudAccountID); err != nil {
				errs = append(errs, fmt.Errorf("kms.cloudAccountId: %q is not a cloud account id (a UUID)", k.CloudAccountID))
			}
			for _, f := range []struct{ name, value string }{{"kms.region", k.Region}, {"kms.endpointUrl", k.EndpointURL}, {"kms.roleArn", k.RoleARN}} {
				if f.value != "" {
					errs = append(errs, fmt.Errorf("%s: comes from the cloud account kms.cloudAccountId names: leave it out", f.name))
				}
			}
		} else if k.Region == "" {
			errs = append(errs, errors.New(`kms.region: is required when kms.provider is "aws" (or kms.cloudAccountId)`))
		}
		if k.EndpointURL != "" {
			if u, err := url.Parse(k.EndpointURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				errs = append(errs, fmt.Errorf("kms.endpointUrl: %q is not an http:// or https:// URL with a host", k.EndpointURL))
			}
		}
		if k.RoleARN != "" && !strings.HasPrefix(k.RoleARN, "arn:") {
			errs = append(errs, fmt.Errorf("kms.roleArn: %q is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)", k.RoleARN))
		}
	default:
		errs = append(errs, fmt.Errorf("kms.provider: %q is not %q or %q", k.Provider, KMSLocal, KMSAWS))
	}
	return errs
}

// The ways of serving the API over TLS (Settings.APITLS).
const (
	APITLSFleetCA = "fleet-ca"
	APITLSFiles   = "files"
)

// CAFiles returns the CA certificate and key paths, defaults filled in.
func (s *Settings) CAFiles(d Dir) (cert, key string) {
	cert, key = s.CACertFile, s.CAKeyFile
	if cert == "" {
		cert = d.Path("ca", "ca.crt")
	}
	if key == "" {
		key = d.Path("ca", "ca.key")
	}
	return cert, key
}

// Port returns the port at the given offset from the base port.
func (s *Settings) Port(offset int) int { return s.BasePort + offset }

// Addr returns BindAddress:port for the given offset.
func (s *Settings) Addr(offset int) string {
	return net.JoinHostPort(s.BindAddress, strconv.Itoa(s.Port(offset)))
}

// Validate reports every problem with the settings, naming each setting.
func (s *Settings) Validate() error {
	var errs []error
	if s.BasePort < 1 || s.BasePort > 65535-PortCount {
		errs = append(errs, fmt.Errorf("basePort: %d must be between 1 and %d", s.BasePort, 65535-PortCount))
	}
	if net.ParseIP(s.BindAddress) == nil {
		errs = append(errs, fmt.Errorf("bindAddress: %q is not an IP address", s.BindAddress))
	}
	if s.DatabaseURL == "" {
		errs = append(errs, errors.New("databaseURL: is required"))
	} else if u, err := url.Parse(s.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		errs = append(errs, errors.New("databaseURL: must be a postgres:// URL"))
	}
	if s.ManagedPostgres && s.PostgresPassword == "" {
		errs = append(errs, errors.New("postgresPassword: is required when managedPostgres is true"))
	}
	if s.MaxRequestBytes != 0 && (s.MaxRequestBytes < 1<<10 || s.MaxRequestBytes > 64<<20) {
		errs = append(errs, fmt.Errorf("maxRequestBytes: %d must be between 1024 and %d (64 MiB), or 0 for 1 MiB", s.MaxRequestBytes, 64<<20))
	}
	switch s.APITLS {
	case "", APITLSFleetCA:
		if s.TLSCertFile != "" || s.TLSKeyFile != "" {
			errs = append(errs, fmt.Errorf("tlsCertFile, tlsKeyFile: apply only when apiTLS is %q", APITLSFiles))
		}
	case APITLSFiles:
		if s.TLSCertFile == "" || s.TLSKeyFile == "" {
			errs = append(errs, fmt.Errorf("tlsCertFile, tlsKeyFile: are required when apiTLS is %q", APITLSFiles))
		}
	default:
		errs = append(errs, fmt.Errorf("apiTLS: %q is not \"\", %q or %q", s.APITLS, APITLSFleetCA, APITLSFiles))
	}
	if (s.CACertFile == "") != (s.CAKeyFile == "") {
		errs = append(errs, errors.New("caCertFile, caKeyFile: give both or neither"))
	}
	if s.KMS != nil {
		errs = append(errs, s.KMS.validate()...)
	}
	return errors.Join(errs...)
}

// Dir is a Flotilla data directory.
type Dir string

// SettingsFile returns the path of config/settings.json.
func (d Dir) SettingsFile() string { return filepath.Join(string(d), "config", "settings.json") }

// Logs returns the logs directory.
func (d Dir) Logs() string { return filepath.Join(string(d), "logs") }

// Postgres returns the managed PostgreSQL cluster directory.
func (d Dir) Postgres() string { return filepath.Join(string(d), "postgres") }

// Bus returns the directory of the bus credentials (config/bus): the keys
// of the bus authority and one .creds file per identity, all 0600.
func (d Dir) Bus() string { return filepath.Join(string(d), "config", "bus") }

// NATS returns the JetStream store directory.
func (d Dir) NATS() string { return filepath.Join(string(d), "nats") }

// MasterKey returns the local KMS master key's file (keys/master.key).
func (d Dir) MasterKey() string { return filepath.Join(string(d), "keys", "master.key") }

// Path joins elem to the data directory.
func (d Dir) Path(elem ...string) string {
	return filepath.Join(append([]string{string(d)}, elem...)...)
}

// Overrides change settings at start (command-line flags); zero values keep
// what the file says.
type Overrides struct {
	BasePort    int
	DatabaseURL string
	// APITLS, TLSCertFile and TLSKeyFile (flotilla up --tls, --tls-cert,
	// --tls-key) are saved like the others.
	APITLS                  string
	TLSCertFile, TLSKeyFile string
}

// Prepare creates the layout and the settings on first use, applies the
// overrides, saves the settings if they changed and returns them.
func Prepare(d Dir, o Overrides) (*Settings, error) {
	if !filepath.IsAbs(string(d)) {
		abs, err := filepath.Abs(string(d))
		if err != nil {
			return nil, err
		}
		d = Dir(abs)
	}
	// The root stays enterable (the managed PostgreSQL's user and local
	// VMs reach their own directories below it); what holds credentials or
	// the bus's data is the manager's alone.
	for sub, mode := range map[string]os.FileMode{string(d): 0o755, d.Logs(): 0o755, filepath.Dir(d.SettingsFile()): 0o700, d.NATS(): 0o700} {
		if err := os.MkdirAll(sub, mode); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
		if err := os.Chmod(sub, mode); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	s, err := Load(d)
	changed := false
	switch {
	case errors.Is(err, os.ErrNotExist):
		s = &Settings{BasePort: DefaultBasePort, BindAddress: "127.0.0.1", ManagedPostgres: true,
			PostgresPassword: randomHex(24)}
		changed = true
	case err != nil:
		return nil, err
	}
	if s.NATSToken != "" {
		s.NATSToken, changed = "", true
	}
	if o.BasePort != 0 && o.BasePort != s.BasePort {
		s.BasePort, changed = o.BasePort, true
	}
	if o.APITLS != "" && (o.APITLS != s.APITLS || o.TLSCertFile != s.TLSCertFile || o.TLSKeyFile != s.TLSKeyFile) {
		s.APITLS, s.TLSCertFile, s.TLSKeyFile, changed = o.APITLS, o.TLSCertFile, o.TLSKeyFile, true
	}
	if o.DatabaseURL != "" && o.DatabaseURL != s.DatabaseURL {
		s.DatabaseURL, s.ManagedPostgres, s.PostgresPassword, s.ServicePostgresPassword, changed = o.DatabaseURL, false, "", "", true
	}
	if s.ManagedPostgres {
		if want := ManagedURL(s); want != s.DatabaseURL {
			s.DatabaseURL, changed = want, true
		}
		if s.ServicePostgresPassword == "" {
			s.ServicePostgresPassword, changed = randomHex(24), true
		}
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("settings in %s: %w", d.SettingsFile(), err)
	}
	if changed {
		if err := Save(d, s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ServiceRole is the managed PostgreSQL's role the services connect as.
const ServiceRole = "flotilla_service"

// ManagedURL is the URL of the managed PostgreSQL for these settings, as
// its superuser (the schema's owner).
func ManagedURL(s *Settings) string { return managedURL(s, "flotilla", s.PostgresPassword) }

// ManagedServiceURL is the URL of the managed PostgreSQL as ServiceRole.
func ManagedServiceURL(s *Settings) string {
	return managedURL(s, ServiceRole, s.ServicePostgresPassword)
}

func managedURL(s *Settings, user, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port(OffsetPostgres))),
		Path:     "/flotilla",
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Load reads the settings file; the error wraps os.ErrNotExist if there is none.
func Load(d Dir) (*Settings, error) {
	b, err := os.ReadFile(d.SettingsFile())
	if err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	s := &Settings{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("settings %s: %w", d.SettingsFile(), err)
	}
	return s, nil
}

// Save writes the settings atomically with mode 0600.
func Save(d Dir, s *Settings) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.SettingsFile() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	if err := os.Rename(tmp, d.SettingsFile()); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}
