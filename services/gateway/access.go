package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

// access is who may call a route.
type access struct {
	// public: no token needed (and then nothing else applies).
	public bool
	// min is the least role that may call it.
	min vocab.Role
	// session: only with a login session, never an API token (minting
	// tokens, changing the password: what a leaked token must not do).
	session bool
	// pending: also while the user must change the password an admin set
	// (reading oneself, changing it, logging out).
	pending bool
}

var (
	public   = access{public: true}
	viewer   = access{min: vocab.RoleViewer}
	operator = access{min: vocab.RoleOperator}
	admin    = access{min: vocab.RoleAdmin}
)

// rules is the one table of who may call what, for REST and gRPC alike
// (and the web console, which calls the same API): every route the
// gateway serves under /api/, "METHOD /path" as the protos' google.api.http
// rules (or the mux's pattern, for a route served only over REST) spell
// it, to the least role allowed. A gRPC method is checked as the route of
// its HTTP rule; one without (served over gRPC only) by its full name. The gateway refuses to start with a route the table does
// not name, so a new endpoint cannot go unchecked; TestEveryRouteAndRole
// calls every route with every role.
var rules = map[string]access{
	"GET /api/v1/status":       public,
	"POST /api/v1/login":       public,
	"GET /api/v1/openapi.json": public,

	// Every user: their own account and tokens, and reading the fleet.
	"POST /api/v1/logout":                                       {min: vocab.RoleViewer, pending: true},
	"GET /api/v1/users/me":                                      {min: vocab.RoleViewer, pending: true},
	"POST /api/v1/users/me:change-password":                     {min: vocab.RoleViewer, pending: true, session: true},
	"POST /api/v1/tokens":                                       {min: vocab.RoleViewer, session: true},
	"GET /api/v1/tokens":                                        viewer,
	"DELETE /api/v1/tokens/{id}":                                viewer,
	"GET /api/v1/networks":                                      viewer,
	"GET /api/v1/networks/{id}":                                 viewer,
	"GET /api/v1/templates":                                     viewer,
	"GET /api/v1/templates/{id}":                                viewer,
	"GET /api/v1/instances":                                     viewer,
	"GET /api/v1/instances/{id}":                                viewer,
	"/flotilla.inventory.v1.InstanceService/FollowInstanceLogs": viewer, // gRPC only (REST: logs?follow=true)
	"GET /api/v1/instances/{id}/logs":                           viewer,
	"GET /api/v1/instances/{id}/events":                         viewer,
	"GET /api/v1/events":                                        viewer, // the fleet's event feed (the console's live updates)
	"GET /api/v1/instances/{instance_id}/secrets":               viewer, // names only, below operator (ListSecrets)
	"GET /api/v1/secrets":                                       viewer, // names and templates only, below operator (ListFleetSecrets)
	"GET /api/v1/secrets/{name}":                                viewer, // name and templates only, below operator (GetFleetSecret)
	"GET /api/v1/cloud-accounts":                                viewer,
	"GET /api/v1/cloud-accounts/{id}":                           viewer,
	"GET /api/v1/ca":                                            viewer,
	"GET /api/v1/ca/certificate":                                viewer,
	"GET /api/v1/cluster":                                       viewer,
	"GET /api/v1/overview":                                      viewer,
	"GET /api/v1/rollouts":                                      viewer,
	"GET /api/v1/rollouts/{id}":                                 viewer,

	// Operators run the fleet.
	"POST /api/v1/networks":                                 operator,
	"PATCH /api/v1/networks/{network.id}":                   operator,
	"DELETE /api/v1/networks/{id}":                          operator,
	"POST /api/v1/templates":                                operator,
	"PATCH /api/v1/templates/{template.id}":                 operator,
	"DELETE /api/v1/templates/{id}":                         operator,
	"POST /api/v1/instances":                                operator,
	"PATCH /api/v1/instances/{instance.id}":                 operator,
	"DELETE /api/v1/instances/{id}":                         operator,
	"POST /api/v1/instances/{id}:provision":                 operator,
	"POST /api/v1/instances/{id}:deprovision":               operator,
	"POST /api/v1/instances/{id}:reprovision":               operator,
	"POST /api/v1/instances/{id}:refresh-certificate":       operator,
	"POST /api/v1/instances/{id}:upgrade-agent":             operator,
	"POST /api/v1/instances/{id}:refresh-configuration":     operator,
	"POST /api/v1/instances/{id}:joinToken":                 operator,
	"POST /api/v1/instances/{instance_id}/secrets":          operator,
	"DELETE /api/v1/instances/{instance_id}/secrets/{name}": operator,
	"PUT /api/v1/secrets/{name}":                            operator,
	"DELETE /api/v1/secrets/{name}":                         operator,
	"POST /api/v1/cloud-accounts/{id}:verify":               operator,
	"POST /api/v1/rollouts":                                 operator,
	"POST /api/v1/rollouts/{id}:pause":                      operator,
	"POST /api/v1/rollouts/{id}:resume":                     operator,
	"POST /api/v1/rollouts/{id}:cancel":                     operator,

	// Admins: users, cloud accounts' credentials, the audit trail, the
	// cluster's managers.
	"POST /api/v1/users":                              admin,
	"GET /api/v1/users":                               admin,
	"GET /api/v1/users/{id}":                          admin,
	"PATCH /api/v1/users/{id}":                        admin,
	"DELETE /api/v1/users/{id}":                       admin,
	"POST /api/v1/users/{id}:reset-password":          admin,
	"POST /api/v1/cloud-accounts":                     admin,
	"PATCH /api/v1/cloud-accounts/{cloud_account.id}": admin,
	"DELETE /api/v1/cloud-accounts/{id}":              admin,
	"DELETE /api/v1/cluster/managers/{name}":          admin,
	"GET /api/v1/audit":                               admin,
}

// route is one route the gateway serves, with its rule.
type route struct {
	// key is "METHOD /path", as rules names it.
	key string
	// method is the gRPC method serving it ("/pkg.Service/Method"); ""
	// for a route served only over REST.
	method string
	// vars are the path's variables in order ("id", "network.id").
	vars []string
	rule access
	// mutating: anything but GET, audited.
	mutating bool
	// in is the gRPC method's request message, whose fields the query
	// may set (nil for a route only REST serves); body is its HTTP rule's
	// body ("*": every field, and the query none).
	in   protoreflect.MessageDescriptor
	body string
	// extraQuery are the query parameters it takes beyond in's fields
	// (restQuery).
	extraQuery []string
	// self: the route acts on the caller's own user (/users/me…), the
	// target its audit record names.
	self bool
}

// routeTable is every route by key, and by gRPC method.
type routeTable struct {
	byKey    map[string]*route
	byMethod map[string]*route
	// public are the public routes, which need no authentication
	// (literal paths only).
	public map[string]bool
}

var pathVar = regexp.MustCompile(`\{([^}=]+)(=[^}]*)?\}`)

// newRoute makes the route of key with its rule, or fails when the table
// has none.
func newRoute(key, method string) (*route, error) {
	rule, ok := rules[key]
	if !ok {
		return nil, fmt.Errorf("route %s has no rule in the gateway's access table (services/gateway/access.go)", key)
	}
	verb, path, _ := strings.Cut(key, " ")
	rt := &route{key: key, method: method, rule: rule, mutating: verb != http.MethodGet, extraQuery: restQuery[key],
		self: path == "/api/v1/users/me" || strings.HasPrefix(path, "/api/v1/users/me:")}
	for _, m := range pathVar.FindAllStringSubmatch(path, -1) {
		rt.vars = append(rt.vars, m[1])
	}
	if rule.public && len(rt.vars) > 0 {
		return nil, fmt.Errorf("public route %s has path variables: a public route must be a literal path", key)
	}
	return rt, nil
}

// httpRuleKey is the "METHOD /path" of a method's google.api.http rule, or
// "" when it has none.
func httpRuleKey(m protoreflect.MethodDescriptor) string {
	rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
	if rule == nil {
		return ""
	}
	for verb, path := range map[string]string{http.MethodGet: rule.GetGet(), http.MethodPost: rule.GetPost(),
		http.MethodPatch: rule.GetPatch(), http.MethodPut: rule.GetPut(), http.MethodDelete: rule.GetDelete()} {
		if path != "" {
			return verb + " " + path
		}
	}
	if c := rule.GetCustom(); c != nil {
		return c.GetKind() + " " + c.GetPath()
	}
	return ""
}

// buildRoutes makes the route table of the gRPC services and the
// REST-only routes under /api/, each checked against the rules. A gRPC
// method without an HTTP rule is named by its full method in the table.
func buildRoutes(services map[string]grpc.ServiceInfo, restOnly []string) (*routeTable, error) {
	t := &routeTable{byKey: map[string]*route{}, byMethod: map[string]*route{}, public: map[string]bool{}}
	var errs []error
	add := func(key, method string, md protoreflect.MethodDescriptor) {
		rt, ok := t.byKey[key]
		if !ok {
			var err error
			if rt, err = newRoute(key, method); err != nil {
				errs = append(errs, err)
				return
			}
			t.byKey[key] = rt
		}
		if method != "" {
			rt.method = method
			t.byMethod[method] = rt
		}
		if md != nil {
			rt.in = md.Input()
			if rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule); rule != nil {
				rt.body = rule.GetBody()
			}
		}
		if rt.rule.public {
			t.public[key] = true
		}
	}
	for name, info := range services {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", name, err)
		}
		sd := d.(protoreflect.ServiceDescriptor)
		for _, m := range info.Methods {
			md := sd.Methods().ByName(protoreflect.Name(m.Name))
			full := "/" + name + "/" + m.Name
			key := httpRuleKey(md)
			if key == "" {
				key = full
			}
			add(key, full, md)
		}
	}
	for _, p := range restOnly {
		add(p, "", nil)
	}
	return t, errors.Join(errs...)
}

// restKey is the table's key of a route grpc-gateway matched: its
// pattern spells a variable "{id=*}" where the rule has "{id}".
func restKey(method, pattern string) string {
	return method + " " + pathVar.ReplaceAllStringFunc(pattern, func(v string) string {
		if name, rest, ok := strings.Cut(v, "="); ok && rest == "*}" {
			return name + "}"
		}
		return v
	})
}

// authorize decides whether the request's user may call rt: their role
// (an API token's, the lesser of its own and its user's) is at least the
// route's, an API token does not call a session-only route, and a user
// who must change their password does nothing else first.
func authorize(ctx context.Context, rt *route) error {
	if rt.rule.public {
		return nil
	}
	u := userFrom(ctx)
	if u == nil {
		return apierr.Unauthenticated("missing bearer token: log in with POST /api/v1/login and send \"Authorization: Bearer <token>\"")
	}
	if u.GetPasswordChangeRequired() && !rt.rule.pending {
		return apierr.PasswordChangeRequired("an admin reset your password: change it with POST /api/v1/users/me:change-password first")
	}
	if rt.rule.session && u.GetKind() != tokenKindSession {
		return apierr.PermissionDenied("%s needs a login session: an API token may not call it", rt.key)
	}
	if role := vocab.Role(u.GetRole()); !role.AtLeast(rt.rule.min) {
		return apierr.PermissionDenied("%s needs the role %s or more; this token's is %s", rt.key, rt.rule.min, role)
	}
	return nil
}

// tokenKindSession is a login's token, as VerifyTokenResponse.kind says.
const tokenKindSession = "session"

// RouteAccess says who may call one route of the API.
type RouteAccess struct {
	// Route is "METHOD /path"; Method is the gRPC method serving it, if any.
	Route, Method string
	// Public routes need no token; otherwise Role is the least role allowed.
	Public bool
	Role   vocab.Role
	// SessionOnly routes refuse API tokens.
	SessionOnly bool
	// WhilePasswordChangeRequired: allowed before the user changed the
	// password an admin reset.
	WhilePasswordChangeRequired bool
}

// Routes lists every route the gateway serves under /api/ and who may call
// it, sorted by route.
func (g *Gateway) Routes() []RouteAccess {
	out := make([]RouteAccess, 0, len(g.routes.byKey))
	for _, rt := range g.routes.byKey {
		out = append(out, RouteAccess{Route: rt.key, Method: rt.method, Public: rt.rule.public, Role: rt.rule.min,
			SessionOnly: rt.rule.session, WhilePasswordChangeRequired: rt.rule.pending})
	}
	slices.SortFunc(out, func(a, b RouteAccess) int { return strings.Compare(a.Route, b.Route) })
	return out
}
