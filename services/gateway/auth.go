package gateway

import (
	"context"
	"net"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

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

// clientAddr is the address (IP) a request came from: for REST, what the
// HTTP middleware saw; for gRPC, the peer. Behind a proxy it is the proxy's.
func clientAddr(ctx context.Context) string {
	if a, ok := ctx.Value(clientKey{}).(string); ok {
		return a
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return hostOf(p.Addr.String())
	}
	return ""
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
		if u, err = call(ctx, g, endpoints.TokenVerify, &authv1.VerifyTokenRequest{Token: token}); err != nil {
			return ctx, err
		}
		g.tokens.put(token, u)
	}
	ctx = context.WithValue(ctx, tokenKey{}, token)
	return context.WithValue(ctx, userKey{}, u), nil
}

// publicPaths answer without a token.
var publicPaths = map[string]bool{
	"/api/v1/status":       true,
	"/api/v1/login":        true,
	"/api/v1/openapi.json": true,
}

// publicMethods are the gRPC methods that need no token.
var publicMethods = map[string]bool{
	"/flotilla.system.v1.SystemService/GetStatus": true,
	"/flotilla.auth.v1.AuthService/Login":         true,
}

// requireAuth rejects /api/v1 requests without a valid bearer token, except
// the public paths, and puts the user in the request context.
func (g *Gateway) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), clientKey{}, hostOf(r.RemoteAddr)))
		if publicPaths[r.URL.Path] || !strings.HasPrefix(r.URL.Path, "/api/") {
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

// unaryAuth is the gRPC counterpart of requireAuth.
func (g *Gateway) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !publicMethods[info.FullMethod] {
		md, _ := metadata.FromIncomingContext(ctx)
		token := ""
		if v := md.Get("authorization"); len(v) > 0 {
			token = bearerToken(v[0])
		}
		var err error
		if ctx, err = g.authenticate(ctx, token); err != nil {
			return nil, apierr.GRPCStatus(ctx, g.log, err)
		}
	}
	return handler(ctx, req)
}

// streamAuth guards streaming gRPC methods the same way.
func (g *Gateway) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	token := ""
	if v := md.Get("authorization"); len(v) > 0 {
		token = bearerToken(v[0])
	}
	ctx, err := g.authenticate(ss.Context(), token)
	if err != nil {
		return apierr.GRPCStatus(ss.Context(), g.log, err)
	}
	return handler(srv, authedStream{ServerStream: ss, ctx: ctx})
}

// authedStream is a server stream whose context carries the caller.
type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authedStream) Context() context.Context { return s.ctx }
