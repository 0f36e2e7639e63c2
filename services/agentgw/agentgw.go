package agentgw

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/every"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// ServerInstanceID is the instance id the gateway's own server certificate
// is issued for.
const ServerInstanceID = pki.GatewayInstanceID

// Defaults of the optional Deps.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultObserveRetry   = 30 * time.Second
	// stopTimeout caps the graceful stop of the gRPC server.
	stopTimeout = 10 * time.Second
	// stopGrace is how long a stopping gateway leaves its connections
	// open after their streams ended, for the streams' last messages.
	stopGrace = 500 * time.Millisecond
)

// Deps are what the service is built from; the caller owns them, except
// that Run closes the listener (until New succeeds, it is the caller's).
type Deps struct {
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// Concurrency is how many requests each of its endpoints serves at
	// once (0: rpc.DefaultConcurrency).
	Concurrency int
	// Listener is the agent port; Run serves gRPC over TLS on it. Required.
	Listener net.Listener
	// ServerNames are the DNS names and IP addresses agents dial the gateway
	// by (the HAProxy name in a cluster); they become the SANs of its server
	// certificate. Empty means "localhost" and "127.0.0.1", enough for
	// agents on the same host.
	ServerNames []string
	// RequestTimeout bounds each request to another service; 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// ObserveRetry is how long a connect, progress or disconnect event is
	// retried when the inventory does not take it; 0 means
	// DefaultObserveRetry. Heartbeats are sent once.
	ObserveRetry time.Duration
	// StreamReplicas is the replication of the agent log stream it
	// declares (1 or 3).
	StreamReplicas int
	// RetentionInterval is how often the instances' log retention is
	// enforced; 0 means DefaultRetentionInterval.
	RetentionInterval time.Duration
}

// Service is the running agent gateway.
type Service struct {
	// checks batches new streams' certificate checks (checks.go), events
	// the agents' events to the inventory (bus.go).
	checks         *batcher[*cav1.CheckAgentRequest]
	events         *batcher[*agentv1.AgentEvent]
	nc             *nats.Conn
	js             jetstream.JetStream
	log            *slog.Logger
	tp             trace.TracerProvider
	rpc            *rpc.Service
	bus            *rpc.Client
	grpc           *grpc.Server
	listener       net.Listener
	serverNames    []string
	requestTimeout time.Duration
	observeRetry   time.Duration
	retention      time.Duration

	caPool *x509.CertPool
	cert   atomic.Pointer[tls.Certificate]
	// tlsConfig is what agents' handshakes run on (serverTLS); its
	// session ticket keys come from the CA (keepTicketKeys), to be asked
	// for again at ticketKeysNext.
	tlsConfig      *tls.Config
	ticketKeysNext time.Time

	// commands serves each connected agent's command endpoint.
	commands *rpc.Subscriber

	mu    sync.Mutex
	conns map[string]*agentConn // instance id → its current stream
	// stopping refuses new streams once the gateway stops: an agent that
	// reconnects at once must not find the stopping gateway again.
	stopping bool

	// workers are the per-stream event senders, which may outlive their
	// stream by up to ObserveRetry.
	workers sync.WaitGroup
}

// New fetches the fleet CA certificate, gets the gateway's server
// certificate from the CA and builds the gRPC server; Run serves it. The CA
// service must answer on the bus (New waits up to RequestTimeout for it to
// appear).
func New(ctx context.Context, d Deps) (*Service, error) {
	registerMetrics()
	if d.NATS == nil || d.Log == nil || d.TracerProvider == nil || d.Listener == nil {
		return nil, errors.New("agentgw: NATS, Log, TracerProvider and Listener are required")
	}
	s := &Service{
		nc:             d.NATS,
		log:            d.Log.With("service", subjects.AgentGW),
		tp:             d.TracerProvider,
		listener:       d.Listener,
		serverNames:    d.ServerNames,
		requestTimeout: d.RequestTimeout,
		observeRetry:   d.ObserveRetry,
		retention:      d.RetentionInterval,
		conns:          map[string]*agentConn{},
	}
	s.checks, s.events = s.newChecks(), s.newEvents()
	if len(s.serverNames) == 0 {
		s.serverNames = []string{"localhost", "127.0.0.1"}
	}
	if s.requestTimeout <= 0 {
		s.requestTimeout = DefaultRequestTimeout
	}
	if s.observeRetry <= 0 {
		s.observeRetry = DefaultObserveRetry
	}
	if s.retention <= 0 {
		s.retention = DefaultRetentionInterval
	}
	s.bus = rpc.NewClient(d.NATS, subjects.AgentGW, s.requestTimeout)
	var err error
	// Log lines are published without waiting for each acknowledgement; one
	// that does not come within the request timeout fails its stream.
	if s.js, err = jetstream.New(d.NATS, jetstream.WithPublishAsyncMaxPending(maxLogsPending),
		jetstream.WithPublishAsyncTimeout(s.requestTimeout)); err != nil {
		return nil, fmt.Errorf("agentgw: jetstream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, s.js, d.StreamReplicas, endpoints.StreamsOf(subjects.AgentGW)...); err != nil {
		return nil, fmt.Errorf("agentgw: %w", err)
	}

	caCert, err := callWaiting(ctx, s, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil {
		return nil, fmt.Errorf("agentgw: get the fleet CA certificate: %w", err)
	}
	if s.caPool, err = pki.CertPool([]byte(caCert.GetCertificatePem())); err != nil {
		return nil, fmt.Errorf("agentgw: fleet CA certificate: %w", err)
	}
	cert, err := s.issueServerCert(ctx)
	if err != nil {
		return nil, err
	}
	s.cert.Store(cert)

	s.tlsConfig = &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"}, // gRPC
		// Join needs no certificate; the interceptor requires one for
		// everything else. A certificate that is given must verify.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  s.caPool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
	// The keys before the first agent: after a restart, thousands of
	// agents come back at once, and resume only with them.
	s.ticketKeysNext = s.refreshTicketKeys(ctx)
	s.grpc = grpc.NewServer(
		grpc.Creds(serverTLS(s.tlsConfig)),
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(d.TracerProvider))),
		grpc.ChainUnaryInterceptor(s.unaryAuth),
		grpc.ChainStreamInterceptor(s.streamAuth),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Thousands of connections, nearly all quiet between heartbeats: small
		// buffers (gRPC holds a write buffer only while it writes). The
		// defaults, 32 KiB each, are allocated for every connection a
		// restart brings back at once.
		grpc.ReadBufferSize(8<<10),
		grpc.WriteBufferSize(8<<10),
		// Run waits for the streams' event senders once every handler has
		// returned, so Stop must not return before them.
		grpc.WaitForHandlers(true),
	)
	agentv1.RegisterAgentGatewayServer(s.grpc, &server{s: s})

	if s.rpc, err = rpc.New(d.NATS, subjects.AgentGW, d.Version, "Flotilla agent gateway", s.log, d.TracerProvider, nil, rpc.WithConcurrency(d.Concurrency)); err != nil {
		return nil, err
	}
	s.commands = rpc.NewSubscriber(s.nc)
	s.log.InfoContext(ctx, "agent gateway ready", "addr", d.Listener.Addr().String(),
		"server_names", s.serverNames, "certificate_not_after", cert.Leaf.NotAfter)
	return s, nil
}

// Run serves agents on the listener until ctx ends, then ends every agent
// stream, stops the gRPC server gracefully (for at most 10s) and stops
// taking bus requests.
func (s *Service) Run(ctx context.Context) error {
	defer func() { _ = s.rpc.Stop() }()
	defer s.commands.Close()
	eg, gctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		if err := s.grpc.Serve(s.listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("agentgw: serve agents: %w", err)
		}
		return nil
	})
	eg.Go(func() error {
		s.renewServerCert(gctx)
		return nil
	})
	eg.Go(func() error {
		s.keepTicketKeys(gctx, s.ticketKeysNext)
		return nil
	})
	eg.Go(func() error {
		// Several gateways may do it at once: a purge is idempotent.
		every.Run(gctx, s.retention, s.log, "enforce log retention", s.EnforceRetention)
		return nil
	})
	eg.Go(func() error {
		<-gctx.Done()
		deadline := time.Now().Add(stopTimeout)
		// New streams are refused, and the listener closes, before the
		// streams end: their agents come back to another gateway, or to
		// this one's successor, instead of each handshaking with this
		// one as it stops, which with thousands of agents held the stop
		// up for seconds.
		t0 := time.Now()
		s.markStopping()
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		streams := s.closeAll("the agent gateway is shutting down")
		t1 := time.Now()
		// Once every stream has ended, what is left is each agent closing
		// its connection, which the graceful stop would wait for (with
		// thousands of agents, for seconds): their last messages get a
		// moment to go out, then the connections close.
		s.awaitStreamsEnded(deadline)
		t2 := time.Now()
		select {
		case <-stopped:
		case <-time.After(min(stopGrace, time.Until(deadline))):
			s.grpc.Stop()
		}
		t3 := time.Now()
		// Let the streams' last events (progress, log acknowledgements'
		// reports) reach the bus.
		done := make(chan struct{})
		go func() { s.workers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Until(deadline)):
			s.log.Warn("agent events still being sent at shutdown")
		}
		// Where a slow stop spends its time.
		s.log.Info("agent gateway stopped", "streams", streams,
			"streams_told_s", t1.Sub(t0).Seconds(), "streams_ended_s", t2.Sub(t1).Seconds(),
			"connections_closed_s", t3.Sub(t2).Seconds(), "events_sent_s", time.Since(t3).Seconds())
		return nil
	})
	return eg.Wait()
}

// issueServerCert makes a new key and has the CA certify it for the
// gateway's server names.
func (s *Service) issueServerCert(ctx context.Context) (*tls.Certificate, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("agentgw: %w", err)
	}
	csr, err := pki.NewCSR(key, ServerInstanceID)
	if err != nil {
		return nil, fmt.Errorf("agentgw: %w", err)
	}
	req := &cav1.SignServerRequest{InstanceId: ServerInstanceID, CsrDer: csr, Sans: s.serverNames}
	resp, err := callWaiting(ctx, s, endpoints.ServerSign, req)
	if err != nil {
		return nil, fmt.Errorf("agentgw: get a server certificate for %v: %w", s.serverNames, err)
	}
	certs, err := pki.ParseCertificatesPEM([]byte(resp.GetCertificatePem()))
	if err != nil {
		return nil, fmt.Errorf("agentgw: server certificate from the CA: %w", err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

// renewServerCert replaces the server certificate when less than a third
// of its lifetime remains, until ctx ends. New handshakes use the new one.
func (s *Service) renewServerCert(ctx context.Context) {
	for {
		leaf := s.cert.Load().Leaf
		wait := time.Until(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3))
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, time.Second)):
		}
		cert, err := s.issueServerCert(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.ErrorContext(ctx, "renew the agent gateway's server certificate; retrying in 30s", "error", err, "not_after", leaf.NotAfter)
			select {
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Second):
			}
			continue
		}
		s.cert.Store(cert)
		s.log.InfoContext(ctx, "renewed the agent gateway's server certificate", "not_after", cert.Leaf.NotAfter)
	}
}

// callWaiting calls ep, and keeps trying, for up to RequestTimeout, while no
// instance of its service listens (a service started at the same time).
func callWaiting[Req, Resp proto.Message](ctx context.Context, s *Service, ep endpoints.Endpoint[Req, Resp], req Req) (Resp, error) {
	deadline := time.Now().Add(s.requestTimeout)
	wait := 100 * time.Millisecond
	for {
		resp, err := rpc.Call(ctx, s.bus, ep, req)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return resp, err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// awaitStreamsEnded waits until no agent stream is registered, or until
// deadline.
func (s *Service) awaitStreamsEnded(deadline time.Time) {
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeAll ends every agent stream and says how many there were;
// markStopping, called first, has the gateway refuse new ones, so the
// graceful stop does not wait for streams opened meanwhile.
func (s *Service) closeAll(reason string) int {
	s.mu.Lock()
	conns := make([]*agentConn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(reason, false)
	}
	return len(conns)
}
