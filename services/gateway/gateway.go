// Package gateway is Flotilla's public API: REST+JSON (through grpc-gateway)
// and gRPC under /api/v1, the OpenAPI document, authentication with bearer
// tokens, and the status endpoint load balancers check. It never touches the
// database: every call is forwarded over the bus to the service that owns the
// data, and what it caches (verified tokens, instances read lately) is
// dropped by the events it watches.
package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/openapi"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/gateway/console"
	"flotilla.dev/flotilla/services/gateway/overview"
)

// Deps are what the gateway is built from; the caller owns them.
type Deps struct {
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// HTTPListener serves REST, the OpenAPI document and the web console.
	HTTPListener net.Listener
	// AgentBinary is the flotilla-agent of this version, served to new
	// cloud VMs at AgentDownloadPath ("": none).
	AgentBinary string
	// CertificateWarning is how long before a node certificate ends the
	// fleet overview names its instance (0: 14 days).
	CertificateWarning time.Duration
	// GRPCListener serves the gRPC API; nil disables it.
	GRPCListener net.Listener
	// RequestTimeout bounds each call to a backing service (default 15s).
	RequestTimeout time.Duration
	// MaxRequestBytes caps a request body or gRPC message
	// (DefaultMaxRequestBytes); RequestReadTimeout bounds reading a body
	// (DefaultRequestReadTimeout).
	MaxRequestBytes    int64
	RequestReadTimeout time.Duration
	// LoginPolicy slows logins from an address after failures
	// (SourceLoginPolicy when zero).
	LoginPolicy attempts.Policy
	// TokenCacheTTL is how long a verified bearer token is trusted without
	// asking the inventory again (0: DefaultTokenCacheTTL; negative: ask
	// every time). Revocations take effect at once either way.
	TokenCacheTTL time.Duration
	// InstanceReadTTL is how long GET /instances/{id} is answered from
	// the copy the gateway read last, unless the instance's event says it
	// changed first (0: DefaultInstanceReadTTL; negative: read every time).
	InstanceReadTTL time.Duration
	// TLS, when set, serves HTTP and gRPC over TLS with it (its
	// certificates or GetCertificate); nil serves them in the clear.
	TLS *tls.Config
	// AgentGatewayAddr is the agent gateway's host:port, handed to
	// operators with the join tokens they mint for external instances.
	AgentGatewayAddr string
	// NATSMonitorURLs are the NATS servers' monitoring endpoints and
	// PatroniURLs Patroni's REST APIs, for GET /api/v1/cluster (empty:
	// what the bus connection sees, and the one database).
	NATSMonitorURLs, PatroniURLs []string
	// MemberHealthyWithin is how recent a manager's heartbeat must be for
	// it to be reported healthy (0: membership.HealthyWithin).
	MemberHealthyWithin time.Duration
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client (none: every request's client is its peer).
	TrustedProxies Proxies
}

// SourceLoginPolicy is how failed logins from one client address slow its
// next: twenty are free (several users may share an address), then each
// waits twice as long as the last, from 5 s up to 15 minutes; an hour
// without a failure forgets them. Each gateway counts its own.
var SourceLoginPolicy = attempts.Policy{Free: 20, Base: 5 * time.Second, Max: 15 * time.Minute, Forget: time.Hour}

// Gateway is the running public API.
type Gateway struct {
	log            *slog.Logger
	version        string
	requestTimeout time.Duration
	// maxRequestBytes and readTimeout bound what a client sends.
	maxRequestBytes int64
	readTimeout     time.Duration
	// logins counts failed logins by client address.
	logins *attempts.Limiter
	// proxies are the trusted reverse proxies (proxies.go).
	proxies Proxies
	tokens  *tokenCache
	// instances are the instances read lately (instances.go).
	instances *instanceCache
	status    *freshCache[*systemv1.Status]
	// lastStatus is the status last checked ("ok", "degraded"), for
	// noteStatus.
	lastStatus atomic.Value
	cluster    *freshCache[*systemv1.Cluster]
	// overview is the fleet overview (fleet.go).
	overview *overview.Overview
	// web asks the NATS monitoring endpoints and Patroni.
	web     *http.Client
	httpSrv *http.Server
	grpcSrv *grpc.Server
	mux     *runtime.ServeMux
	js      jetstream.JetStream
	// late stores the audit records calls could not wait for (lateaudit.go).
	late *lateAudits
	bus  *rpc.Client
	deps Deps
	// routes is every route with who may call it (access.go).
	routes *routeTable
}

// New builds the gateway's HTTP and gRPC servers; Run serves them.
func New(ctx context.Context, d Deps) (*Gateway, error) {
	if d.NATS == nil || d.Log == nil || d.TracerProvider == nil || d.HTTPListener == nil {
		return nil, errors.New("gateway: NATS, Log, TracerProvider and HTTPListener are required")
	}
	g := &Gateway{
		log:            d.Log.With("service", "gateway"),
		version:        d.Version,
		requestTimeout: d.RequestTimeout,
		deps:           d,
		proxies:        d.TrustedProxies,
	}
	if g.requestTimeout == 0 {
		g.requestTimeout = 15 * time.Second
	}
	g.maxRequestBytes, g.readTimeout = d.MaxRequestBytes, d.RequestReadTimeout
	if g.maxRequestBytes <= 0 {
		g.maxRequestBytes = DefaultMaxRequestBytes
	}
	if g.readTimeout <= 0 {
		g.readTimeout = DefaultRequestReadTimeout
	}
	policy := d.LoginPolicy
	if policy == (attempts.Policy{}) {
		policy = SourceLoginPolicy
	}
	g.logins = attempts.NewLimiter(policy, 100000, nil)
	ttl := d.TokenCacheTTL
	if ttl == 0 {
		ttl = DefaultTokenCacheTTL
	}
	g.tokens = newTokenCache(ttl, time.Now)
	readTTL := d.InstanceReadTTL
	if readTTL == 0 {
		readTTL = DefaultInstanceReadTTL
	}
	g.instances = newInstanceCache(readTTL, time.Now)
	g.status = newFreshCache[*systemv1.Status](statusFresh)
	g.cluster = newFreshCache[*systemv1.Cluster](clusterFresh)
	g.overview = overview.New(d.CertificateWarning)
	fleet.Store(g.overview)
	g.web = &http.Client{Timeout: clusterCheckTimeout}
	g.bus = rpc.NewClient(d.NATS, subjects.Gateway, g.requestTimeout)
	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	g.js = js
	g.late = newLateAudits(js, g.log)
	h, restOnly, err := g.handler(ctx)
	if err != nil {
		return nil, err
	}
	g.httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	opts := []grpc.ServerOption{}
	if d.TLS != nil {
		g.httpSrv.TLSConfig = d.TLS.Clone()
		g.httpSrv.TLSConfig.MinVersion = max(g.httpSrv.TLSConfig.MinVersion, tls.VersionTLS12)
		opts = append(opts, grpc.Creds(credentials.NewTLS(g.httpSrv.TLSConfig)))
	}
	g.grpcSrv = grpc.NewServer(append(opts,
		grpc.MaxRecvMsgSize(int(g.maxRequestBytes)),
		grpc.ConnectionTimeout(g.readTimeout),
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(d.TracerProvider), otelgrpc.WithPropagators(natsx.Propagator))),
		grpc.ChainUnaryInterceptor(g.unaryAuth),
		grpc.ChainStreamInterceptor(g.streamAuth),
	)...)
	registerGRPC(g.grpcSrv, g)
	if g.routes, err = buildRoutes(g.grpcSrv.GetServiceInfo(), restOnly); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return g, nil
}

// jsonCodec is the REST wire format: lowerCamelCase names, and unknown fields
// rejected rather than silently dropped.
var jsonCodec = bodyCodec{&runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}}

// bodyCodec says "request body" in decoding errors, so a client knows the
// JSON it sent is at fault and where.
type bodyCodec struct{ *runtime.JSONPb }

func (c bodyCodec) NewDecoder(r io.Reader) runtime.Decoder {
	d := c.JSONPb.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		if err := d.Decode(v); err != nil {
			if err == io.EOF {
				return err // an empty body: grpc-gateway treats it as {}
			}
			msg := strings.TrimPrefix(err.Error(), "proto: ")
			if errors.Is(err, io.ErrUnexpectedEOF) {
				msg = "truncated JSON"
			}
			return fmt.Errorf("request body: %s", msg)
		}
		return nil
	})
}

// handler assembles the HTTP routes, and names those under /api/ that
// only REST serves (the others are the gRPC services' HTTP rules).
func (g *Gateway) handler(ctx context.Context) (http.Handler, []string, error) {
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, jsonCodec),
		runtime.WithErrorHandler(g.restError),
		runtime.WithForwardResponseOption(statusCode),
		runtime.WithForwardResponseOption(noteResponse),
		runtime.WithMiddlewares(g.guardGateway),
	)
	g.mux = mux
	regs := []func(context.Context, *runtime.ServeMux) error{
		func(ctx context.Context, m *runtime.ServeMux) error {
			return inventoryv1.RegisterNetworkServiceHandlerServer(ctx, m, networkServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return inventoryv1.RegisterCloudAccountServiceHandlerServer(ctx, m, cloudAccountServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return inventoryv1.RegisterTemplateServiceHandlerServer(ctx, m, templateServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return inventoryv1.RegisterInstanceServiceHandlerServer(ctx, m, instanceServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return inventoryv1.RegisterRolloutServiceHandlerServer(ctx, m, rolloutServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return authv1.RegisterAuthServiceHandlerServer(ctx, m, authServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return systemv1.RegisterSystemServiceHandlerServer(ctx, m, systemServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return secretsv1.RegisterSecretServiceHandlerServer(ctx, m, secretServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return cav1.RegisterCAServiceHandlerServer(ctx, m, caServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return authv1.RegisterUserServiceHandlerServer(ctx, m, userServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return authv1.RegisterTokenServiceHandlerServer(ctx, m, tokenServer{g: g})
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return auditv1.RegisterAuditServiceHandlerServer(ctx, m, auditServer{g: g})
		},
	}
	for _, r := range regs {
		if err := r(ctx, mux); err != nil {
			return nil, nil, fmt.Errorf("register REST handlers: %w", err)
		}
	}
	// Every route under /api/ the root mux serves itself is checked
	// against the access table (guardedMux); the rest of /api/ goes to
	// grpc-gateway, whose middleware checks its routes.
	root := &guardedMux{ServeMux: http.NewServeMux(), g: g}
	root.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.JSON())
	})
	root.HandleFunc("GET /api/v1/ca/certificate", g.caPEM)
	root.HandleFunc("GET /api/v1/instances/{id}/logs", g.instanceLogs)
	root.HandleFunc("GET /api/v1/events", g.fleetEvents)
	root.ServeMux.Handle("/api/", mux)
	root.ServeMux.HandleFunc("/api", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	if g.version != "" {
		root.Handle("GET "+AgentDownloadPath(g.version), &agentDownload{path: g.deps.AgentBinary})
	}
	// The console calls the API through the whole handler, as any client.
	var api http.Handler
	con, err := console.New(console.Deps{Log: g.log, Version: g.version,
		API: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { api.ServeHTTP(w, r) })})
	if err != nil {
		return nil, nil, err
	}
	root.Handle("/", con)
	api = otelhttp.NewHandler(g.requireAuth(g.limitBody(root)), "gateway",
		otelhttp.WithTracerProvider(g.deps.TracerProvider),
		otelhttp.WithPropagators(natsx.Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
	)
	return api, root.api, nil
}

// guardedMux is the gateway's root mux: a route it serves under /api/ is
// checked against the access table (and audited) before its handler runs.
type guardedMux struct {
	*http.ServeMux
	g *Gateway
	// api are the patterns under /api/ it serves.
	api []string
}

// Handle serves pattern with h, guarded when it is under /api/.
func (m *guardedMux) Handle(pattern string, h http.Handler) {
	if _, path, _ := strings.Cut(pattern, " "); strings.HasPrefix(path, "/api/") {
		m.api = append(m.api, pattern)
		h = m.g.guardREST(pattern, h)
	}
	m.ServeMux.Handle(pattern, h)
}

// HandleFunc serves pattern with f, guarded when it is under /api/.
func (m *guardedMux) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(f))
}

// statusCode answers a degraded status with 503, so load balancers take this
// node out of rotation while it cannot reach the services behind it.
func statusCode(_ context.Context, w http.ResponseWriter, m proto.Message) error {
	if s, ok := m.(*systemv1.Status); ok && s.GetStatus() != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return nil
}

// restError writes an error as {"code": <gRPC code>, "reason": "...",
// "message": "...", "field": "..."} with the HTTP status grpc-gateway maps
// the code to (or the routing status, for a path or method the API lacks).
func (g *Gateway) restError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	httpStatus := 0
	var hse *runtime.HTTPStatusError
	if errors.As(err, &hse) {
		httpStatus, err = hse.HTTPStatus, hse.Err
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.Convert(apierr.GRPCStatus(ctx, g.log, err))
	}
	if httpStatus == 0 {
		httpStatus = runtime.HTTPStatusFromCode(st.Code())
	}
	e := apierr.FromStatus(st)
	noteError(ctx, e.Reason)
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	body, merr := json.Marshal(restErrorBody{Code: int32(st.Code()), Reason: string(e.Reason), Message: e.Message, Field: e.Field})
	if merr != nil {
		body = []byte(`{"code":13,"reason":"internal","message":"internal error"}`)
	}
	w.Header().Del("Trailer")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// restErrorBody is the JSON body of every REST error. Clients branch on
// reason (see docs/errors.md); message is for people.
type restErrorBody struct {
	Code    int32  `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// writeError writes an error outside grpc-gateway's handlers (the auth
// middleware, the logs and events endpoints).
func (g *Gateway) writeError(w http.ResponseWriter, r *http.Request, err error) {
	g.restError(r.Context(), g.mux, jsonCodec, w, r, err)
}

// Run serves HTTP and gRPC until ctx ends, then shuts both down gracefully.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.tokens.watch(ctx, g.deps.NATS); err != nil {
		return fmt.Errorf("watch token revocations: %w", err)
	}
	if err := g.instances.watch(ctx, g.deps.NATS); err != nil {
		return fmt.Errorf("watch instance events: %w", err)
	}
	go g.late.work()
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { g.keepOverview(ctx); return nil })
	eg.Go(func() error {
		serve := g.httpSrv.Serve
		if g.httpSrv.TLSConfig != nil {
			serve = func(l net.Listener) error { return g.httpSrv.ServeTLS(l, "", "") }
		}
		if err := serve(g.deps.HTTPListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	if g.deps.GRPCListener != nil {
		eg.Go(func() error {
			if err := g.grpcSrv.Serve(g.deps.GRPCListener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("serve gRPC: %w", err)
			}
			return nil
		})
	}
	eg.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Followers would hold the graceful stops below until their
		// deadline: they are told to follow again.
		g.tokens.stop()
		err := g.httpSrv.Shutdown(sctx)
		stopped := make(chan struct{})
		go func() { g.grpcSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-sctx.Done():
			g.grpcSrv.Stop()
		}
		// No call is served now: the audit records still late get a last
		// chance.
		fctx, cancel := context.WithTimeout(context.Background(), lateAuditFlush)
		defer cancel()
		g.late.close(fctx)
		return err
	})
	return eg.Wait()
}
