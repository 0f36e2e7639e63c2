package gateway_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/services/gateway"
)

// caller is one credential the matrix calls every route with.
type caller struct {
	name string
	role vocab.Role
	// api: an API token (never a login session).
	api   bool
	token string
	// login makes a fresh session of this caller (for logout, which ends it).
	login func() string
}

// policy is who may call each route, written out here apart from the
// gateway's table: "public", or the least role, with "+session" when an
// API token may not call it. A route the gateway serves that is missing
// here fails the test, as does any difference from the gateway's table.
var policy = map[string]string{
	"GET /api/v1/status":       "public",
	"POST /api/v1/login":       "public",
	"GET /api/v1/openapi.json": "public",

	"POST /api/v1/logout":                                       "viewer",
	"GET /api/v1/users/me":                                      "viewer",
	"POST /api/v1/users/me:change-password":                     "viewer+session",
	"POST /api/v1/tokens":                                       "viewer+session",
	"GET /api/v1/tokens":                                        "viewer",
	"DELETE /api/v1/tokens/{id}":                                "viewer",
	"GET /api/v1/networks":                                      "viewer",
	"GET /api/v1/networks/{id}":                                 "viewer",
	"GET /api/v1/templates":                                     "viewer",
	"GET /api/v1/templates/{id}":                                "viewer",
	"GET /api/v1/instances":                                     "viewer",
	"GET /api/v1/instances/{id}":                                "viewer",
	"GET /api/v1/instances/{id}/logs":                           "viewer",
	"/flotilla.inventory.v1.InstanceService/FollowInstanceLogs": "viewer",
	"GET /api/v1/instances/{id}/events":                         "viewer",
	"GET /api/v1/events":                                        "viewer",
	"GET /api/v1/instances/{instance_id}/secrets":               "viewer",
	"GET /api/v1/secrets":                                       "viewer",
	"GET /api/v1/secrets/{name}":                                "viewer",
	"GET /api/v1/cloud-accounts":                                "viewer",
	"GET /api/v1/cloud-accounts/{id}":                           "viewer",
	"GET /api/v1/ca":                                            "viewer",
	"GET /api/v1/ca/certificate":                                "viewer",
	"GET /api/v1/cluster":                                       "viewer",
	"GET /api/v1/overview":                                      "viewer",
	"GET /api/v1/rollouts":                                      "viewer",
	"GET /api/v1/rollouts/{id}":                                 "viewer",

	"POST /api/v1/networks":                                 "operator",
	"PATCH /api/v1/networks/{network.id}":                   "operator",
	"DELETE /api/v1/networks/{id}":                          "operator",
	"POST /api/v1/templates":                                "operator",
	"PATCH /api/v1/templates/{template.id}":                 "operator",
	"DELETE /api/v1/templates/{id}":                         "operator",
	"POST /api/v1/instances":                                "operator",
	"PATCH /api/v1/instances/{instance.id}":                 "operator",
	"DELETE /api/v1/instances/{id}":                         "operator",
	"POST /api/v1/instances/{id}:provision":                 "operator",
	"POST /api/v1/instances/{id}:deprovision":               "operator",
	"POST /api/v1/instances/{id}:reprovision":               "operator",
	"POST /api/v1/instances/{id}:refresh-certificate":       "operator",
	"POST /api/v1/instances/{id}:upgrade-agent":             "operator",
	"POST /api/v1/instances/{id}:refresh-configuration":     "operator",
	"POST /api/v1/instances/{id}:joinToken":                 "operator",
	"POST /api/v1/instances/{instance_id}/secrets":          "operator",
	"DELETE /api/v1/instances/{instance_id}/secrets/{name}": "operator",
	"PUT /api/v1/secrets/{name}":                            "operator",
	"DELETE /api/v1/secrets/{name}":                         "operator",
	"POST /api/v1/cloud-accounts/{id}:verify":               "operator",
	"POST /api/v1/rollouts":                                 "operator",
	"POST /api/v1/rollouts/{id}:pause":                      "operator",
	"POST /api/v1/rollouts/{id}:resume":                     "operator",
	"POST /api/v1/rollouts/{id}:cancel":                     "operator",

	"POST /api/v1/users":                              "admin",
	"GET /api/v1/users":                               "admin",
	"GET /api/v1/users/{id}":                          "admin",
	"PATCH /api/v1/users/{id}":                        "admin",
	"DELETE /api/v1/users/{id}":                       "admin",
	"POST /api/v1/users/{id}:reset-password":          "admin",
	"POST /api/v1/cloud-accounts":                     "admin",
	"PATCH /api/v1/cloud-accounts/{cloud_account.id}": "admin",
	"DELETE /api/v1/cloud-accounts/{id}":              "admin",
	"DELETE /api/v1/cluster/managers/{name}":          "admin",
	"GET /api/v1/audit":                               "admin",
}

// allowed is what the policy promises the caller on the route.
func (c caller) allowed(route string) bool {
	p := policy[route]
	if p == "public" {
		return true
	}
	role, session := strings.CutSuffix(p, "+session")
	if session && c.api {
		return false
	}
	return c.role.AtLeast(vocab.Role(role))
}

var pathVariable = regexp.MustCompile(`\{[^}]+\}`)

// TestEveryRouteAndRole calls every route the gateway serves, over REST
// and over gRPC, as an admin, an operator and a viewer (each with a login
// session) and with an admin's API token: each call is refused with 403
// permission_denied exactly when the access table does not allow it. A
// route added without a rule stops the gateway from starting, so this
// test (and every other) fails.
func TestEveryRouteAndRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	callers := []caller{{name: "admin", role: vocab.RoleAdmin, token: e.token, login: func() string { return e.login(adminUser, adminPass) }}}
	for _, role := range []vocab.Role{vocab.RoleOperator, vocab.RoleViewer} {
		name := "matrix-" + string(role)
		_, token := e.user(name, string(role))
		callers = append(callers, caller{name: name, role: role, token: token, login: func() string { return e.login(name, name+"-pass") }})
	}
	apiToken := func() string {
		return e.must(200, "POST", "/api/v1/tokens", reply{"name": "matrix-" + uuid.NewString(), "role": "admin"})["token"].(string)
	}
	callers = append(callers, caller{name: "admin's API token", role: vocab.RoleAdmin, api: true, token: apiToken(), login: apiToken})

	routes := e.gw.Routes()
	served := map[string]bool{}
	for _, r := range routes {
		served[r.Route] = true
		want, ok := policy[r.Route]
		if !ok {
			t.Errorf("the gateway serves %s, which this test's policy does not name: add it", r.Route)
			continue
		}
		got := string(r.Role)
		if r.Public {
			got = "public"
		} else if r.SessionOnly {
			got += "+session"
		}
		if got != want {
			t.Errorf("%s: the gateway's table says %s, the policy %s", r.Route, got, want)
		}
	}
	for route := range policy {
		if !served[route] {
			t.Errorf("the policy names %s, which the gateway does not serve", route)
		}
	}
	for _, k := range gateway.RuleKeys() {
		if !served[k] {
			t.Errorf("the access table names %s, which the gateway does not serve", k)
		}
	}
	conn, _ := e.grpcConn(context.Background())
	for _, r := range routes {
		verb, path, rest := strings.Cut(r.Route, " ")
		// Ids the API has never seen: an allowed call finds nothing (or
		// refuses the empty body), a refused one never gets that far.
		path = pathVariable.ReplaceAllStringFunc(path, func(v string) string {
			if strings.Contains(v, "name") {
				return "no-such-name"
			}
			return uuid.NewString()
		})
		for _, c := range callers {
			token := c.token
			if strings.HasSuffix(r.Route, "/logout") {
				token = c.login() // logging out ends the session
			}
			if !rest { // served over gRPC only
				checkGRPC(t, conn, r, c, token)
				continue
			}
			var body any
			if verb != "GET" {
				body = "{}"
			}
			code, out := e.as(token, verb, path, body)
			if c.allowed(r.Route) {
				if code == 403 || code == 401 {
					t.Errorf("REST %s as %s: %d %v %v, want it allowed", r.Route, c.name, code, out["reason"], out["message"])
				}
			} else if code != 403 || out["reason"] != "permission_denied" {
				t.Errorf("REST %s as %s: %d %v, want 403 permission_denied", r.Route, c.name, code, out["reason"])
			}

			if r.Method == "" {
				continue // served over REST only
			}
			if strings.HasSuffix(r.Route, "/logout") {
				token = c.login()
			}
			checkGRPC(t, conn, r, c, token)
		}
	}
}

// checkGRPC calls the route's gRPC method as the caller: refused with
// PermissionDenied exactly when the policy does not allow it.
func checkGRPC(t *testing.T, conn *grpc.ClientConn, r gateway.RouteAccess, c caller, token string) {
	t.Helper()
	err := invoke(t, conn, r.Method, token)
	if c.allowed(r.Route) {
		switch status.Code(err) {
		case codes.PermissionDenied, codes.Unauthenticated:
			t.Errorf("gRPC %s as %s: %v, want it allowed", r.Method, c.name, err)
		case codes.Unknown, codes.Internal:
			t.Errorf("gRPC %s as %s with an empty request: %v, want a Flotilla error", r.Method, c.name, err)
		}
	} else if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC %s as %s: %v, want PermissionDenied", r.Method, c.name, err)
	}
}

// invoke calls a gRPC method with an empty request and the token (a
// server stream: until its first answer or error).
func invoke(t *testing.T, conn *grpc.ClientConn, method, token string) error {
	t.Helper()
	service, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(name))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	if !md.IsStreamingServer() {
		return conn.Invoke(ctx, method, dynamicpb.NewMessage(md.Input()), dynamicpb.NewMessage(md.Output()))
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err == nil {
		err = st.SendMsg(dynamicpb.NewMessage(md.Input()))
	}
	if err == nil {
		err = st.CloseSend()
	}
	if err == nil {
		err = st.RecvMsg(dynamicpb.NewMessage(md.Output()))
	}
	return err
}
