package testkit

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/pki"
)

// natsReadyTimeout bounds the wait for an embedded server to accept clients.
const natsReadyTimeout = 10 * time.Second

// NATS starts an embedded nats-server with JetStream on a random port of
// 127.0.0.1, storing its streams in a temp dir of tb, and shuts it down when
// tb ends. Each call starts a separate server.
func NATS(tb testing.TB) *server.Server {
	tb.Helper()
	return Serve(tb, &server.Options{JetStream: true, StoreDir: tb.TempDir()})
}

// Serve starts a nats-server with opts (on 127.0.0.1 and a random port
// unless they say otherwise; quiet, no signal handlers) and shuts it down
// when tb ends.
func Serve(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	if opts.ServerName == "" {
		opts.ServerName = "testkit"
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = -1
	}
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("testkit: create nats-server: %v", err)
	}
	// Registered after the caller's TempDir, so it runs before the store is removed.
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	ns.Start()
	if !ns.ReadyForConnections(natsReadyTimeout) {
		tb.Fatalf("testkit: nats-server not ready for connections after %v", natsReadyTimeout)
	}
	return ns
}

// DropConnection has ns drop nc's connection, as a server killed or cut
// off would, and waits until nc knows it; nc comes back by itself after
// its reconnect wait.
func DropConnection(tb testing.TB, ns *server.Server, nc *nats.Conn) {
	tb.Helper()
	id, err := nc.GetClientID()
	if err != nil {
		tb.Fatalf("testkit: the connection's id: %v", err)
	}
	if err := ns.DisconnectClientByID(id); err != nil {
		tb.Fatalf("testkit: drop connection %d: %v", id, err)
	}
	WaitFor(tb, 5*time.Second, "the client to notice its connection dropped", func() bool { return nc.Status() != nats.CONNECTED })
}

// NATSConn connects to ns, named after the test, and closes the connection
// when tb ends.
func NATSConn(tb testing.TB, ns *server.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.Name(tb.Name())}, opts...)
	nc, err := nats.Connect(ns.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("testkit: connect to nats-server %s: %v", ns.ClientURL(), err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// Bus is an embedded nats-server with JetStream that authenticates like
// Flotilla's: a bus authority (libs/busauth) whose operator it trusts, and
// a credentials file per identity with only that identity's permissions.
type Bus struct {
	Server *server.Server
	// URL is the server's client URL.
	URL string
	// Creds holds each identity's credentials file (the six services and
	// the observer).
	Creds map[string]string
	// TLS, for a bus started with SecureNATSOverTLS, is what a client
	// connects with: the server's CA and a client certificate.
	TLS *tls.Config
	// MonitorURL, for a bus started with SecureNATSMonitored, is the
	// server's HTTP monitoring endpoint (http://127.0.0.1:<port>).
	MonitorURL string
	authority  *busauth.Authority
}

// SecureNATS starts a Bus for tb, shut down when tb ends.
func SecureNATS(tb testing.TB) *Bus {
	tb.Helper()
	return secureNATS(tb, &server.Options{JetStream: true, StoreDir: tb.TempDir()})
}

func secureNATS(tb testing.TB, opts *server.Options) *Bus {
	tb.Helper()
	auth, err := busauth.LoadOrCreate(filepath.Join(tb.TempDir(), "bus"))
	if err != nil {
		tb.Fatalf("testkit: bus authority: %v", err)
	}
	if err := auth.Configure(opts); err != nil {
		tb.Fatalf("testkit: %v", err)
	}
	ns := Serve(tb, opts)
	return &Bus{Server: ns, URL: ns.ClientURL(), Creds: auth.Files(), authority: auth}
}

// SecureNATSMonitored is SecureNATS with the server's HTTP monitoring
// endpoint (/varz, /jsz, ...) on a random port of 127.0.0.1, Bus.MonitorURL.
func SecureNATSMonitored(tb testing.TB) *Bus {
	tb.Helper()
	b := secureNATS(tb, &server.Options{JetStream: true, StoreDir: tb.TempDir(), HTTPHost: "127.0.0.1", HTTPPort: -1})
	addr := b.Server.MonitorAddr()
	if addr == nil {
		tb.Fatal("testkit: nats-server has no monitoring address")
	}
	b.MonitorURL = "http://" + addr.String()
	return b
}

// SecureNATSOverTLS is SecureNATS accepting only TLS connections that
// present a client certificate from the server's own throwaway CA; Bus.TLS
// is what a client needs.
func SecureNATSOverTLS(tb testing.TB) *Bus {
	tb.Helper()
	now := time.Now()
	ca, err := pki.GenerateCA(now)
	if err != nil {
		tb.Fatal(err)
	}
	pair := func(p pki.Profile) tls.Certificate {
		key, err := pki.GenerateKey()
		if err != nil {
			tb.Fatal(err)
		}
		iss, err := ca.Issue(key.Public(), p)
		if err != nil {
			tb.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{iss.Certificate.Raw}, PrivateKey: key, Leaf: iss.Certificate}
	}
	srvCert := pair(pki.ServerProfile("localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, now, time.Hour))
	client := pair(pki.Profile{Subject: pkix.Name{CommonName: "flotilla-service"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})
	b := secureNATS(tb, &server.Options{JetStream: true, StoreDir: tb.TempDir(), TLS: true, TLSVerify: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	b.TLS = &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client}, MinVersion: tls.VersionTLS12}
	b.URL = strings.Replace(b.URL, "nats://", "tls://", 1)
	return b
}

// Conn connects to the bus as identity (a service name or
// busauth.Observer), closed when tb ends.
func (b *Bus) Conn(tb testing.TB, identity string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	creds, ok := b.Creds[identity]
	if !ok {
		tb.Fatalf("testkit: no bus identity %q", identity)
	}
	if b.TLS != nil {
		opts = append(opts, nats.Secure(b.TLS.Clone()))
	}
	return NATSConn(tb, b.Server, append(busauth.ConnectOptions(identity, creds), opts...)...)
}

// Unrestricted connects with a user that may publish and subscribe to
// anything: for tests that play a part no identity plays (a forged
// request, a raw discovery query). Closed when tb ends.
func (b *Bus) Unrestricted(tb testing.TB) *nats.Conn {
	tb.Helper()
	creds, err := b.authority.Mint("testkit", jwt.Permissions{})
	if err != nil {
		tb.Fatalf("testkit: %v", err)
	}
	path := filepath.Join(tb.TempDir(), "unrestricted.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return NATSConn(tb, b.Server, nats.UserCredentials(path))
}

// Authority is the bus's authority (to rotate credentials in a test).
func (b *Bus) Authority() *busauth.Authority { return b.authority }

// Violations collects the permission errors the server sends one
// connection: what it was refused.
type Violations struct {
	nc   *nats.Conn
	mu   sync.Mutex
	pub  map[string]bool
	sub  map[string]bool
	rest []string
}

// Watch connects to the bus as identity, recording what the server
// refuses it.
func (b *Bus) Watch(tb testing.TB, identity string) (*nats.Conn, *Violations) {
	tb.Helper()
	v := &Violations{pub: map[string]bool{}, sub: map[string]bool{}}
	v.nc = b.Conn(tb, identity, nats.ErrorHandler(v.handle))
	return v.nc, v
}

func (v *Violations) handle(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	msg := err.Error()
	subject := ""
	if i := strings.Index(msg, `"`); i >= 0 {
		subject = strings.Trim(msg[i:], `"`)
	}
	switch {
	case strings.Contains(msg, "Permissions Violation for Publish to"):
		v.pub[subject] = true
	case strings.Contains(msg, "Permissions Violation for Subscription to"):
		v.sub[subject] = true
	default:
		v.rest = append(v.rest, msg)
	}
}

// Settle waits until the server has answered everything sent so far.
func (v *Violations) Settle(tb testing.TB) {
	tb.Helper()
	if err := v.nc.FlushTimeout(5 * time.Second); err != nil {
		tb.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // -ERR lines are handled asynchronously
}

// PublishRefused reports whether a publish to subject was refused.
func (v *Violations) PublishRefused(subject string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pub[subject]
}

// SubscribeRefused reports whether a subscription to subject was refused.
func (v *Violations) SubscribeRefused(subject string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sub[subject]
}

// JetStreamCluster starts n NATS servers with JetStream, named s1 to sn and
// routed to each other as one cluster on 127.0.0.1, each changed by
// configure (nil: not changed) before it starts; Serve shuts each down when
// tb ends. Their meta group elects its leader after they return.
func JetStreamCluster(tb testing.TB, n int, configure func(*server.Options)) []*server.Server {
	tb.Helper()
	ports := FreePorts(tb, 2*n)
	var routes []*url.URL
	for i := range n {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[n+i])})
	}
	servers := make([]*server.Server, n)
	for i := range n {
		opts := &server.Options{ServerName: fmt.Sprintf("s%d", i+1), Port: ports[i], JetStream: true,
			StoreDir: tb.TempDir(), Routes: routes,
			Cluster: server.ClusterOpts{Name: "testkit", Host: "127.0.0.1", Port: ports[n+i]}}
		if configure != nil {
			configure(opts)
		}
		servers[i] = Serve(tb, opts)
	}
	return servers
}
