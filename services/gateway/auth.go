package gateway

import (
	"context"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/gateway/console"
)

type (
	userKey   struct{}
	tokenKey  struct{}
	clientKey struct{}
)

// clientAddr is the address (IP) a request came from, as the HTTP
// middleware (requireAuth) or the gRPC interceptors (grpcClient) found it:
// the peer's, or behind a trusted proxy the one the proxy saw (Proxies).
func clientAddr(ctx context.Context) string {
	a, _ := ctx.Value(clientKey{}).(string)
	return a
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// tokenFrom returns the bearer token a request was authenticated with.
func tokenFrom(ctx context.Context) string {
	t, _ := ctx.Value(tokenKey{}).(string)
	return t
}

// userFrom returns the authenticated user of a request, if any.
func userFrom(ctx context.Context) *authv1.VerifyTokenResponse {
	u, _ := ctx.Value(userKey{}).(*authv1.VerifyTokenResponse)
	return u
}

// actorFrom names who makes a request, for events and audit: the
// authenticated user, or the gateway itself for the calls that need no
// token (login, status).
func actorFrom(ctx context.Context) vocab.Actor {
	if u := userFrom(ctx); u != nil {
		return vocab.User(u.GetUsername())
	}
	return vocab.System(subjects.Gateway)
}

// bearerToken extracts the token of an "Authorization: Bearer <token>" value.
func bearerToken(header string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// authenticate resolves a bearer token to its user through the inventory.
func (g *Gateway) authenticate(ctx context.Context, token string) (context.Context, error) {
	if token == "" {
		return ctx, apierr.Unauthenticated("missing bearer token: log in with POST /api/v1/login and send \"Authorization: Bearer <token>\"")
	}
	u := g.tokens.get(token)
	if u == nil {
		var err error
		if u, err = call(ctx, g, endpoints.TokenVerify, &authv1.VerifyTokenRequest{Token: token, Source: clientAddr(ctx)}); err != nil {
			return ctx, err
		}
		g.tokens.put(token, u)
	}
	ctx = context.WithValue(ctx, tokenKey{}, token)
	return context.WithValue(ctx, userKey{}, u), nil
}

// requireAuth authenticates every /api/ request but those of the public
// routes (literal paths, from the access table) and puts the user in the
// request's context; what the user may call is checked once the request
// is routed (guardREST, guardGateway).
func (g *Gateway) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), clientKey{}, g.proxies.client(r.RemoteAddr, r.Header.Values("X-Forwarded-For"))))
		method := r.Method
		if method == http.MethodHead {
			method = http.MethodGet // as the mux routes it
		}
		if !strings.HasPrefix(r.URL.Path, "/api/") || g.routes.public[method+" "+r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		ctx, err := g.authenticate(r.Context(), requestToken(r))
		if err != nil {
			g.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// requestToken is a REST request's bearer token: its Authorization header,
// or for a read (GET, HEAD) without one, the web console's session cookie
// (the console's live feeds and downloads). A change needs the header: the
// console makes its changes in process with it, after checking its form.
func requestToken(r *http.Request) string {
	if t := bearerToken(r.Header.Get("Authorization")); t != "" {
		return t
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return console.SessionToken(r)
	}
	return ""
}

// guardREST checks a route the root mux serves (pattern) against the
// access table before its handler runs, and audits it if it changes
// anything.
func (g *Gateway) guardREST(pattern string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := g.routes.byKey[pattern] // New refuses a pattern without a rule
		values := make([]string, len(rt.vars))
		for i, v := range rt.vars {
			values[i] = r.PathValue(v)
		}
		g.serveGuarded(w, r, rt, values, next.ServeHTTP)
	})
}

// guardGateway is the grpc-gateway middleware that checks each route it
// serves against the access table, and audits it if it changes anything.
func (g *Gateway) guardGateway(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		pat, _ := runtime.HTTPPattern(r.Context())
		rt := g.routes.byKey[restKey(r.Method, pat.String())]
		if rt == nil {
			// Every route has a rule (New checks): this one was not built
			// from the services the gateway registered.
			g.writeError(w, r, apierr.PermissionDenied("%s %s is not in the gateway's access table", r.Method, pat.String()))
			return
		}
		values := make([]string, len(rt.vars))
		for i, v := range rt.vars {
			values[i] = params[v]
		}
		g.serveGuarded(w, r, rt, values, func(w http.ResponseWriter, r *http.Request) { next(w, r, params) })
	}
}

// serveGuarded serves a routed REST request if its user may call the
// route, and audits a mutating one, refused or not.
func (g *Gateway) serveGuarded(w http.ResponseWriter, r *http.Request, rt *route, values []string, serve http.HandlerFunc) {
	note := &callNote{}
	r = r.WithContext(context.WithValue(r.Context(), noteKey{}, note))
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	if err := authorize(r.Context(), rt); err != nil {
		g.writeError(sw, r, err)
	} else if err := rt.checkQuery(r.URL.Query()); err != nil {
		g.writeError(sw, r, err)
	} else {
		serve(sw, r)
	}
	g.audit(r.Context(), callRecord{rt: rt, values: values, created: note.created, status: sw.status, reason: note.reason})
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (flushes for
// server-sent events, deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes a flush on (streamed answers).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		w.wrote = true
		f.Flush()
	}
}

// grpcToken is the bearer token of a gRPC call's metadata.
func grpcToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		return bearerToken(v[0])
	}
	return ""
}

// unaryAuth is the gRPC counterpart of requireAuth and the guards: the
// same table, by the route of the method's HTTP rule.
func (g *Gateway) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx = g.grpcClient(ctx)
	rt := g.routes.byMethod[info.FullMethod]
	if rt == nil {
		return nil, apierr.GRPCStatus(ctx, g.log, apierr.PermissionDenied("%s is not in the gateway's access table", info.FullMethod))
	}
	if rt.rule.public {
		resp, err := handler(ctx, req)
		return resp, g.grpcError(ctx, err)
	}
	ctx, err := g.authenticate(ctx, grpcToken(ctx))
	if err != nil {
		return nil, apierr.GRPCStatus(ctx, g.log, err)
	}
	var resp any
	if err = authorize(ctx, rt); err == nil {
		resp, err = handler(ctx, req)
	}
	err = g.grpcError(ctx, err)
	if rt.mutating {
		c := callRecord{rt: rt}
		if m, ok := req.(proto.Message); ok {
			for _, v := range rt.vars {
				c.values = append(c.values, fieldValue(m, v))
			}
		}
		if m, ok := resp.(proto.Message); ok && err == nil {
			c.created = idOf(m)
		}
		c.status, c.reason = grpcResult(err)
		g.audit(ctx, c)
	}
	return resp, err
}

// grpcError makes a gRPC status of an error that is not one yet (a
// handler's own), as REST maps it.
func (g *Gateway) grpcError(ctx context.Context, err error) error {
	if _, isStatus := status.FromError(err); err != nil && !isStatus {
		return apierr.GRPCStatus(ctx, g.log, err)
	}
	return err
}

// streamAuth guards streaming gRPC methods the same way.
func (g *Gateway) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := g.grpcClient(ss.Context())
	rt := g.routes.byMethod[info.FullMethod]
	if rt == nil {
		return apierr.GRPCStatus(ctx, g.log, apierr.PermissionDenied("%s is not in the gateway's access table", info.FullMethod))
	}
	if !rt.rule.public {
		var err error
		if ctx, err = g.authenticate(ctx, grpcToken(ctx)); err == nil {
			err = authorize(ctx, rt)
		}
		if err != nil {
			return apierr.GRPCStatus(ctx, g.log, err)
		}
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// contextStream is a server stream with the authenticated user in its context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
