package gateway

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"flotilla.dev/flotilla/libs/apierr"
)

// restQuery names the query parameters a route takes beyond its request
// message's fields: all of them for a route only REST serves (it has no
// request message), the server-sent events' resume point for a follow.
var restQuery = map[string][]string{
	"GET /api/v1/events":              {"id", "entity", "since", "limit", "follow", "lastEventId"},
	"GET /api/v1/instances/{id}/logs": {"lastEventId"},
}

// checkQuery refuses a query parameter the route does not take, naming
// it and the ones it does, and a value that is not of its field's kind.
// grpc-gateway passes over a name that is no field of the request: a
// misspelt filter (status=failed for state=failed) would answer every
// item instead of the ones asked for.
func (rt *route) checkQuery(q url.Values) error {
	if len(q) == 0 {
		return nil
	}
	seen := map[string]string{} // a field's path → the name that set it
	for _, key := range slices.Sorted(func(yield func(string) bool) {
		for k := range q {
			if !yield(k) {
				return
			}
		}
	}) {
		if slices.Contains(rt.extraQuery, key) {
			continue
		}
		path, fd := rt.queryField(key)
		if fd == nil {
			return apierr.Invalid(key, "is not a parameter of %s: %s", rt.key, rt.takes())
		}
		if first, ok := seen[path]; ok {
			return apierr.Invalid(key, "names the same field as %s: give it once", first)
		}
		seen[path] = key
		if err := rt.parseQuery(key, q[key]); err != nil {
			return apierr.Invalid(path, "%s", describeQueryValue(fd, q[key], err))
		}
	}
	return nil
}

// queryField resolves a query parameter (a field's JSON or proto name,
// dotted into singular message fields) to the field's JSON path and
// descriptor; nil when it names no field the query may set: none, a path
// variable or the body's.
func (rt *route) queryField(key string) (string, protoreflect.FieldDescriptor) {
	if rt.in == nil || rt.body == "*" {
		return "", nil
	}
	md := rt.in
	var path []string
	var names []string
	var fd protoreflect.FieldDescriptor
	for i, part := range strings.Split(key, ".") {
		if i > 0 {
			if fd.Message() == nil || fd.Cardinality() == protoreflect.Repeated || fd.IsMap() {
				return "", nil
			}
			md = fd.Message()
		}
		fd = md.Fields().ByJSONName(part)
		if fd == nil {
			fd = md.Fields().ByTextName(part)
		}
		if fd == nil {
			return "", nil
		}
		path = append(path, fd.JSONName())
		names = append(names, string(fd.Name()))
	}
	name := strings.Join(names, ".")
	for _, taken := range append([]string{rt.body}, rt.vars...) {
		if taken != "" && (name == taken || strings.HasPrefix(taken, name+".") || strings.HasPrefix(name, taken+".")) {
			return "", nil
		}
	}
	return strings.Join(path, "."), fd
}

// takes says which query parameters the route takes.
func (rt *route) takes() string {
	var names []string
	if rt.in != nil && rt.body != "*" {
		fields := rt.in.Fields()
		for i := range fields.Len() {
			if _, fd := rt.queryField(fields.Get(i).JSONName()); fd != nil {
				names = append(names, fd.JSONName())
			}
		}
	}
	names = append(names, rt.extraQuery...)
	if len(names) == 0 {
		return "it takes none"
	}
	return "it takes " + strings.Join(names, ", ")
}

// parseQuery sets key's values in a new request message as grpc-gateway
// will, to find a value it cannot take before it is asked to.
func (rt *route) parseQuery(key string, values []string) error {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(rt.in.FullName())
	if err != nil {
		return nil // not a message of this binary: grpc-gateway will say
	}
	var p runtime.DefaultQueryParser
	return p.Parse(mt.New().Interface(), url.Values{key: values}, utilities.NewDoubleArray(nil))
}

// describeQueryValue says why values cannot be fd's.
func describeQueryValue(fd protoreflect.FieldDescriptor, values []string, err error) string {
	if len(values) > 1 && fd.Cardinality() != protoreflect.Repeated {
		return fmt.Sprintf("is given %d times: give it once", len(values))
	}
	v := values[len(values)-1]
	switch fd.Kind() {
	case protoreflect.Int32Kind, protoreflect.Int64Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind,
		protoreflect.Sfixed32Kind, protoreflect.Sfixed64Kind:
		return fmt.Sprintf("%q is not a whole number", v)
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return fmt.Sprintf("%q is not a whole number of at least 0", v)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return fmt.Sprintf("%q is not a number", v)
	case protoreflect.BoolKind:
		return fmt.Sprintf("%q is not true or false", v)
	case protoreflect.EnumKind:
		var names []string
		vals := fd.Enum().Values()
		for i := range vals.Len() {
			names = append(names, string(vals.Get(i).Name()))
		}
		return fmt.Sprintf("%q is not one of %s", v, strings.Join(names, ", "))
	case protoreflect.MessageKind:
		switch fd.Message().FullName() {
		case "google.protobuf.Timestamp":
			return fmt.Sprintf("%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
		case "google.protobuf.Duration":
			return fmt.Sprintf("%q is not a duration in seconds such as 3600s", v)
		}
	}
	return fmt.Sprintf("%q cannot be read: %v", v, err)
}
