package natsx

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Connect connects to the NATS server(s) at url (a comma-separated list of
// nats:// URLs for a cluster) as client name. The connection reconnects
// forever; opts are applied after the defaults and carry the credentials
// (busauth.ConnectOptions) and may override the defaults (e.g.
// nats.RetryOnFailedConnect, handlers that log disconnects).
//
// With several URLs the first is the connection's home (the server beside
// a cluster host's services): lost, the connection moves to another, and
// comes back once home has been up for HomeStable (see homing).
func Connect(url, name string, opts ...nats.Option) (*nats.Conn, error) {
	all := connectOptions(name, opts)
	h := newHoming(url)
	if h != nil {
		all = append(all, nats.ReconnectToServer(h.pick))
	}
	nc, err := nats.Connect(url, all...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s as %s: %w", url, name, err)
	}
	watch(nc)
	if h != nil {
		go h.follow(nc)
	}
	return nc, nil
}

// ConnectInProcess connects to the embedded server ns without a network
// socket, as client name. It works with a server started with DontListen.
// Settings are those of Connect.
func ConnectInProcess(ns *server.Server, name string, opts ...nats.Option) (*nats.Conn, error) {
	all := append([]nats.Option{nats.InProcessServer(ns)}, connectOptions(name, opts)...)
	nc, err := nats.Connect("", all...)
	if err != nil {
		return nil, fmt.Errorf("connect to in-process nats as %s: %w", name, err)
	}
	watch(nc)
	return nc, nil
}

func connectOptions(name string, extra []nats.Option) []nats.Option {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, 2*time.Second),
		// A server cut off without a word (a partitioned host) is given up
		// after about 10 s, and the next one in the list is tried.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		// The servers in the order given: a cluster host lists its own
		// first, so a service talks to the server beside it while it is up.
		nats.DontRandomize(),
	}
	return append(opts, extra...)
}

// ClientTLS is the TLS a client connects to NATS with: the servers'
// certificates verified against the CA bundle in caFile, and, when certFile
// and keyFile are given, a client certificate for servers that require one.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("NATS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("NATS CA file %s: no PEM certificate in it", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" || keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("NATS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
