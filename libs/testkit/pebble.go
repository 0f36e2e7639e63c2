package testkit

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"

	"github.com/letsencrypt/challtestsrv"
	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// Pebble is an ACME server of a test's own (Let's Encrypt's Pebble, in
// process), with challtestsrv as its DNS (every name resolves to 127.0.0.1)
// or a DNS server of the test's (StartDNS); HTTP-01 is validated on
// HTTPPort, DNS-01 through that DNS server.
type Pebble struct {
	// DirectoryURL is the ACME directory (HTTPS).
	DirectoryURL string
	// DirectoryCAPEM is the PEM root the directory's HTTPS is served with.
	DirectoryCAPEM string
	// Roots holds Pebble's issuing root: what verifies its certificates.
	Roots *x509.CertPool
	// HTTPPort is where Pebble validates HTTP-01 challenges.
	HTTPPort int

	srv *httptest.Server
}

// Close stops the ACME server before the test ends (to make orders fail).
func (p *Pebble) Close() { p.srv.Close() }

// PebbleOptions adjust StartPebbleWith.
type PebbleOptions struct {
	// HTTPPort is where Pebble validates HTTP-01 challenges.
	HTTPPort int
	// DNSAddr is the DNS server Pebble resolves names and DNS-01 TXT
	// records with (StartDNS); empty means a challtestsrv of its own,
	// answering 127.0.0.1 for every name and no TXT record.
	DNSAddr string
}

// StartPebble starts Pebble validating HTTP-01 on httpPort, without the
// validation delays and bad-nonce rejections it makes by default, and
// stops it when the test ends.
func StartPebble(tb testing.TB, httpPort int) *Pebble {
	tb.Helper()
	return StartPebbleWith(tb, PebbleOptions{HTTPPort: httpPort})
}

// StartPebbleWith starts Pebble as StartPebble does, with o.
func StartPebbleWith(tb testing.TB, o PebbleOptions) *Pebble {
	tb.Helper()
	// Read by va.New and wfe.New; the same for every Pebble of the process.
	_ = os.Setenv("PEBBLE_VA_NOSLEEP", "1")
	_ = os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		logger = log.New(os.Stderr, "pebble ", log.LstdFlags)
	}
	httpPort, dnsAddr := o.HTTPPort, o.DNSAddr
	if httpPort == 0 {
		httpPort = FreePort(tb)
	}
	if dnsAddr == "" {
		dnsAddr = "127.0.0.1:" + strconv.Itoa(FreePort(tb))
		dns, err := challtestsrv.New(challtestsrv.Config{DNSAddrs: []string{dnsAddr}, Log: logger})
		if err != nil {
			tb.Fatalf("testkit: challtestsrv: %v", err)
		}
		dns.Run()
		tb.Cleanup(dns.Shutdown)
	}

	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, httpPort, FreePort(tb), false, dnsAddr, store)
	front := wfe.New(logger, store, validator, authority, nil, false, false, 3, 5)
	srv := httptest.NewTLSServer(front.Handler())
	// An ACME client still in an order (an agent a failed test left) would
	// keep Close waiting: its connections are cut first.
	tb.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})

	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)
	return &Pebble{
		DirectoryURL:   srv.URL + wfe.DirectoryPath,
		DirectoryCAPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})),
		Roots:          roots,
		HTTPPort:       httpPort,
		srv:            srv,
	}
}
