package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/pki"
)

// heldCert is the agent's current certificate and when it got it.
type heldCert struct {
	tls      *tls.Certificate
	obtained time.Time
}

// renewAt is when less than a third of the certificate's lifetime, counted
// from when the agent got it (a CA backdates NotBefore), remains.
func (h *heldCert) renewAt() time.Time {
	leaf := h.tls.Leaf
	start := leaf.NotBefore
	if h.obtained.After(start) && h.obtained.Before(leaf.NotAfter) {
		start = h.obtained
	}
	return leaf.NotAfter.Add(-leaf.NotAfter.Sub(start) / 3)
}

// loadRoots reads the fleet CA bundle.
func loadRoots(path string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool, err := pki.CertPool(data)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-file %s: %w", path, err)
	}
	certs, err := pki.ParseCertificatesPEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-file %s: %w", path, err)
	}
	return pool, pki.GatewayCAs(certs), nil
}

// loadOrCreateKey reads the agent's key from dir, or makes an ECDSA P-256
// key and writes it with mode 0600.
func loadOrCreateKey(dir string) (crypto.Signer, bool, error) {
	path := filepath.Join(dir, keyFileName)
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := pki.ParsePrivateKeyPEM(data)
		if err != nil {
			return nil, false, fmt.Errorf("agent key %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, false, fmt.Errorf("agent key %s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("agent key: %w", err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, false, err
	}
	pemData, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(path, pemData, 0o600); err != nil {
		return nil, false, fmt.Errorf("save agent key: %w", err)
	}
	return key, true, nil
}

// loadCert reads the saved certificate when it is for key, chains to roots
// and is valid now. Otherwise it returns nil and why not.
func loadCert(dir string, key crypto.Signer, roots *x509.CertPool, now time.Time) (*heldCert, string) {
	path := filepath.Join(dir, certFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "the agent has no certificate yet"
	}
	if err != nil {
		return nil, err.Error()
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err.Error()
	}
	tc, err := CertificateFor(data, key, roots, now)
	if err != nil {
		return nil, fmt.Sprintf("the saved certificate %s is unusable: %v", path, err)
	}
	return &heldCert{tls: tc, obtained: fi.ModTime()}, ""
}

// certificateFor parses a PEM certificate chain and checks that it
// certifies key as an agent, chains to roots and is valid at now.
func CertificateFor(pemData []byte, key crypto.Signer, roots *x509.CertPool, now time.Time) (*tls.Certificate, error) {
	certs, err := pki.ParseCertificatesPEM(pemData)
	if err != nil {
		return nil, err
	}
	leaf := certs[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("it is not for the agent's key")
	}
	if _, err := pki.AgentInstanceID(leaf); err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, err
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

// ensureCert makes sure the agent holds a valid certificate: the saved one,
// or a new one from Join with the join token, retried while the gateway
// cannot be reached.
func (a *agent) ensureCert(ctx context.Context) error {
	if h := a.cert.Load(); h != nil && time.Now().Before(h.tls.Leaf.NotAfter) {
		return nil
	}
	h, why := loadCert(a.cfg.StateDir, a.key, a.roots, time.Now())
	if h != nil {
		a.cert.Store(h)
		return nil
	}
	a.logf(ctx, "joining the fleet: %s", why)
	bo := NewBackoff()
	for {
		err := a.join(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !Transient(err) {
			return err
		}
		wait := bo.Next()
		a.logf(ctx, "join failed (retrying in %s): %v", wait.Round(time.Millisecond), err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// join exchanges the join token and a CSR for a certificate, and saves it.
func (a *agent) join(ctx context.Context) error {
	token, err := a.token()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(a.key, "flotilla-agent")
	if err != nil {
		return err
	}
	conn, err := a.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewAgentGatewayClient(conn).Join(ctx, &agentv1.JoinRequest{
		Token: token, CsrDer: csr, AgentVersion: a.cfg.Version,
	})
	if err != nil {
		if !Transient(err) {
			return fmt.Errorf("join the fleet: the gateway refused the join token: %v", status.Convert(err).Message())
		}
		return fmt.Errorf("join the fleet: %w", err)
	}
	if err := a.saveCert([]byte(resp.GetCertificatePem())); err != nil {
		return fmt.Errorf("join the fleet: %w", err)
	}
	if err := a.state.Update(func(s *state) { s.InstanceID = resp.GetInstanceId() }); err != nil {
		return err
	}
	a.logf(ctx, "joined the fleet as instance %s; certificate valid until %s",
		resp.GetInstanceId(), resp.GetNotAfter().AsTime().Format(time.RFC3339))
	return nil
}

// token returns the join token from the settings; a token file is read
// each time, so an operator can put a fresh one there.
func (a *agent) token() (string, error) {
	if a.cfg.TokenFile != "" {
		data, err := os.ReadFile(a.cfg.TokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		if t := strings.TrimSpace(string(data)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("--token-file %s: is empty", a.cfg.TokenFile)
	}
	if a.cfg.Token != "" {
		return a.cfg.Token, nil
	}
	return "", errors.New("the agent has no valid certificate and no join token: give it --token-file or --token")
}

// saveCert checks a certificate from the gateway, writes it (mode 0600)
// and makes it the one presented from now on.
func (a *agent) saveCert(pemData []byte) error {
	tc, err := CertificateFor(pemData, a.key, a.roots, time.Now())
	if err != nil {
		return fmt.Errorf("certificate from the gateway: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(a.cfg.StateDir, certFileName), pemData, 0o600); err != nil {
		return fmt.Errorf("save certificate: %w", err)
	}
	a.cert.Store(&heldCert{tls: tc, obtained: time.Now()})
	return nil
}

// renewLoop renews the certificate when less than a third of its lifetime
// remains, until ctx ends. A renewal makes the stream reconnect with the new
// certificate.
func (a *agent) renewLoop(ctx context.Context) {
	for {
		h := a.cert.Load()
		wait := max(time.Until(h.renewAt()), time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		retry := time.Second
		for {
			err := a.renew(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			left := time.Until(a.cert.Load().tls.Leaf.NotAfter)
			a.logf(ctx, "renewing the agent certificate failed (%s left; retrying in %s): %v",
				left.Round(time.Second), retry, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
			retry = min(2*retry, max(left/10, time.Second), 30*time.Second)
		}
		select {
		case a.cycle <- struct{}{}:
		default:
		}
	}
}

// renew asks the gateway for a new certificate for the agent's key.
func (a *agent) renew(ctx context.Context) error {
	csr, err := pki.NewCSR(a.key, "flotilla-agent")
	if err != nil {
		return err
	}
	conn, err := a.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewAgentGatewayClient(conn).Renew(ctx, &agentv1.RenewRequest{CsrDer: csr})
	if err != nil {
		return err
	}
	if err := a.saveCert([]byte(resp.GetCertificatePem())); err != nil {
		return err
	}
	a.logf(ctx, "renewed the agent certificate; valid until %s", resp.GetNotAfter().AsTime().Format(time.RFC3339))
	return nil
}

// tlsCert is the certificate the agent holds, if any.
func (a *agent) tlsCert() *tls.Certificate {
	if h := a.cert.Load(); h != nil {
		return h.tls
	}
	return nil
}

// SessionCache keeps an agent's TLS sessions with its gateway, so that a
// reconnect — the gateway restarted, or the agent moved to another behind
// the same address — resumes the session instead of a full handshake. A
// session speaks for the certificate it was made with, so the cache holds
// only the sessions of the certificate cert returns: when cert returns
// another (renewed, or joined again) the earlier ones are dropped, and
// with none (joining) nothing is kept. Forget drops them too: the gateway
// refused the certificate a session carries.
type SessionCache struct {
	cert     func() *tls.Certificate
	mu       sync.Mutex
	of       *tls.Certificate
	sessions tls.ClientSessionCache
}

// NewSessionCache returns an empty cache of the sessions of the
// certificate cert returns.
func NewSessionCache(cert func() *tls.Certificate) *SessionCache {
	return &SessionCache{cert: cert}
}

// current returns the sessions of the certificate held now (nil: none).
// The caller holds c.mu.
func (c *SessionCache) current() tls.ClientSessionCache {
	cert := c.cert()
	if cert == nil {
		return nil
	}
	if cert != c.of || c.sessions == nil {
		c.of, c.sessions = cert, tls.NewLRUClientSessionCache(4)
	}
	return c.sessions
}

// Get implements tls.ClientSessionCache.
func (c *SessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.current(); s != nil {
		return s.Get(key)
	}
	return nil, false
}

// Put implements tls.ClientSessionCache.
func (c *SessionCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.current(); s != nil {
		s.Put(key, cs)
	}
}

// Forget drops every session.
func (c *SessionCache) Forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sessions = nil
}

// dial makes a client of the gateway (GatewayTLSConfig, GatewayKeepalive)
// with the bundle the agent was given, whatever certificate it holds at
// handshake time, and its sessions.
func (a *agent) dial() (*grpc.ClientConn, error) {
	tlsCfg := GatewayTLSConfig(a.roots, a.gatewayCAs, a.tlsCert, a.tlsSessions)
	conn, err := grpc.NewClient(a.cfg.GatewayAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithContextDialer(a.dialTCP),
		grpc.WithKeepaliveParams(GatewayKeepalive),
	)
	if err != nil {
		return nil, fmt.Errorf("--gateway %s: %w", a.cfg.GatewayAddr, err)
	}
	return conn, nil
}

// GatewayKeepalive is how an agent keeps its connection to the gateway
// checked while the stream is quiet.
var GatewayKeepalive = keepalive.ClientParameters{Time: 15 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// GatewayTLSConfig is how an agent meets its gateway: TLS 1.3, roots (the
// bundle it was given) as its only roots, the gateway's chain passing
// through one of gatewayCAs (when the bundle has one: a VM bootstrapped by
// an older manager has only the fleet CA), the certificate cert returns at
// handshake time (nil: none yet, which Join needs none of), and the
// sessions it may resume (nil: none).
func GatewayTLSConfig(roots *x509.CertPool, gatewayCAs []*x509.Certificate, cert func() *tls.Certificate, sessions tls.ClientSessionCache) *tls.Config {
	tlsCfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		RootCAs:            roots,
		ClientSessionCache: sessions,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	}
	if len(gatewayCAs) > 0 {
		tlsCfg.VerifyConnection = pki.RequireGatewayCA(gatewayCAs)
	}
	return tlsCfg
}

// dialTCP connects to the gateway and remembers the local address, which is
// the instance's private IP as the fleet sees it.
func (a *agent) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
		ip := ta.IP.String()
		a.privateIP.Store(&ip)
	}
	return c, nil
}

// Transient reports whether a failed call to the gateway may work later:
// the gateway or a service behind it is unreachable, not a refusal.
func Transient(err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Internal, codes.ResourceExhausted, codes.Canceled:
		return true
	}
	return false
}
