package pki

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// GetCertificate is a tls.Config.GetCertificate.
type GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// ServingCertificate serves a certificate a issues for names (DNS names and
// IP addresses) for ttl, issuing the next when two thirds of it have
// passed, so a server that runs for months never presents an expired one.
func ServingCertificate(a *Authority, names []string, ttl time.Duration, now func() time.Time) (GetCertificate, error) {
	var dns []string
	var ips []net.IP
	for _, raw := range names {
		n, ip, err := ParseServerName(raw)
		if err != nil {
			return nil, fmt.Errorf("server name %s", err)
		}
		if ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	if len(dns)+len(ips) == 0 {
		return nil, fmt.Errorf("no server names")
	}
	var (
		mu      sync.Mutex
		current *tls.Certificate
		renewAt time.Time
	)
	issue := func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		t := now()
		if current != nil && t.Before(renewAt) {
			return current, nil
		}
		key, err := GenerateKey()
		if err != nil {
			return nil, err
		}
		cn := names[0]
		iss, err := a.Issue(key.Public(), ServerProfile(cn, dns, ips, t, ttl))
		if err != nil {
			return nil, err
		}
		chain := [][]byte{iss.Certificate.Raw}
		for _, c := range a.intermediates() {
			chain = append(chain, c.Raw)
		}
		current = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: iss.Certificate}
		renewAt = iss.Certificate.NotBefore.Add(iss.Certificate.NotAfter.Sub(iss.Certificate.NotBefore) * 2 / 3)
		return current, nil
	}
	if _, err := issue(); err != nil {
		return nil, err
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return issue() }, nil
}

// FileCertificate serves the certificate and key in certFile and keyFile
// (PEM), read again whenever either file changes, so a renewal by another
// tool (certbot, cert-manager) needs no restart. It fails at once if the
// files cannot be read or do not match; a later unreadable pair keeps the
// last good one.
func FileCertificate(certFile, keyFile string) (GetCertificate, error) {
	var (
		mu      sync.Mutex
		current *tls.Certificate
		stamp   [2]time.Time
	)
	load := func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		var now [2]time.Time
		for i, f := range []string{certFile, keyFile} {
			if fi, err := os.Stat(f); err == nil {
				now[i] = fi.ModTime()
			}
		}
		if current != nil && now == stamp {
			return current, nil
		}
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			if current != nil {
				return current, nil
			}
			return nil, fmt.Errorf("TLS certificate %s and key %s: %w", certFile, keyFile, err)
		}
		current, stamp = &c, now
		return current, nil
	}
	if _, err := load(); err != nil {
		return nil, err
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return load() }, nil
}
