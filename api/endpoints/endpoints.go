// Package endpoints declares every request/reply endpoint on Flotilla's bus,
// each exactly once: the service that answers it, its subject, its request
// and response types, and the services allowed to call it.
//
// The declarations drive both ends: libs/rpc registers a handler for an
// endpoint (rpc.Handle) and calls one (rpc.Call) with the types and subject
// taken from here, so a caller cannot send the wrong message or forget to map
// the service's errors. A request goes to the endpoint's subject followed by
// the caller's service name ("<subject>.<caller>"); the callers lists become
// the services' NATS permissions (libs/busauth), so a service can publish
// only under its own name to the endpoints it is declared for, and the
// handler knows who called from the subject alone. The table in
// ARCHITECTURE.md is rendered from All (a test keeps it in step).
package endpoints

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Endpoint declares one request/reply endpoint whose request is a Req and
// whose successful reply is a Resp.
type Endpoint[Req, Resp proto.Message] struct {
	info Info
}

// Info is an endpoint's declaration without its Go types, for tables and
// permission sets.
type Info struct {
	// Service is the service that answers.
	Service string
	// Name is the endpoint's name within the service, "<noun>.<verb>".
	Name string
	// Subject is the subject requests are sent to; a per-instance endpoint's
	// subject has "*" where the instance id goes (see Endpoint.At).
	Subject string
	// Request and Response are the protobuf message types.
	Request, Response protoreflect.FullName
	// Callers are the services that may call the endpoint.
	Callers []string
	// Doc says what the endpoint does, in a line.
	Doc string
	// Every is true when every instance of the service gets each request
	// (no queue group) and the caller takes the first answer that is not an
	// error (natsx.RequestFirst): a question any instance answers for the
	// service, such as whether it is ready.
	Every bool
}

// CallSubject is where caller sends its requests: "<subject>.<caller>".
func (i Info) CallSubject(caller string) string { return i.Subject + "." + caller }

// ServeSubject is what the answering service subscribes to: "<subject>.*".
func (i Info) ServeSubject() string { return i.Subject + ".*" }

// PerInstance reports whether the subject names an instance (a "*" token).
func (i Info) PerInstance() bool { return slices.Contains(strings.Split(i.Subject, "."), "*") }

// CalledBy reports whether service is one of the endpoint's callers.
func (i Info) CalledBy(service string) bool { return slices.Contains(i.Callers, service) }

// Info returns the declaration.
func (e Endpoint[Req, Resp]) Info() Info { return e.info }

// Service is the service that answers.
func (e Endpoint[Req, Resp]) Service() string { return e.info.Service }

// Name is "<noun>.<verb>".
func (e Endpoint[Req, Resp]) Name() string { return e.info.Name }

// Subject is where requests go. For a per-instance endpoint it is a pattern
// until bound with At.
func (e Endpoint[Req, Resp]) Subject() string { return e.info.Subject }

// At binds a per-instance endpoint to one instance: the "*" of its subject
// becomes id. It panics on an endpoint that is not per-instance, or an id
// that is not a single subject token, which are programming errors.
func (e Endpoint[Req, Resp]) At(id string) Endpoint[Req, Resp] {
	if !e.info.PerInstance() {
		panic(fmt.Sprintf("endpoints: %s.%s is not a per-instance endpoint", e.info.Service, e.info.Name))
	}
	if id == "" || strings.ContainsAny(id, ".*> \t\r\n") {
		panic(fmt.Sprintf("endpoints: %q is not a subject token", id))
	}
	tokens := strings.Split(e.info.Subject, ".")
	for i, t := range tokens {
		if t == "*" {
			tokens[i] = id
		}
	}
	e.info.Subject = strings.Join(tokens, ".")
	e.info.Callers = slices.Clone(e.info.Callers)
	return e
}

// NewRequest returns an empty request message.
func (e Endpoint[Req, Resp]) NewRequest() Req { return newMessage[Req]() }

// NewResponse returns an empty response message.
func (e Endpoint[Req, Resp]) NewResponse() Resp { return newMessage[Resp]() }

func newMessage[M proto.Message]() M {
	var zero M
	return zero.ProtoReflect().New().Interface().(M)
}

// all holds every declaration, in declaration order.
var all []Info

// All returns every declared endpoint, grouped by service in the order they
// are declared.
func All() []Info {
	out := slices.Clone(all)
	for i := range out {
		out[i].Callers = slices.Clone(out[i].Callers)
	}
	return out
}

// declare records a micro endpoint "<service>.<noun>.<verb>" answered by one
// instance of service (a queue group), at subject.
func declare[Req, Resp proto.Message](service, name, subject, doc string, callers ...string) Endpoint[Req, Resp] {
	return register[Req, Resp](infoOf[Req, Resp](service, name, subject, doc, callers...))
}

// infoOf is an endpoint's declaration: answered by one instance (a queue
// group) unless the caller sets Every.
func infoOf[Req, Resp proto.Message](service, name, subject, doc string, callers ...string) Info {
	return Info{
		Service:  service,
		Name:     name,
		Subject:  subject,
		Request:  newMessage[Req]().ProtoReflect().Descriptor().FullName(),
		Response: newMessage[Resp]().ProtoReflect().Descriptor().FullName(),
		Callers:  callers,
		Doc:      doc,
	}
}

// register records info, whose subject must be its own.
func register[Req, Resp proto.Message](info Info) Endpoint[Req, Resp] {
	for _, i := range all {
		if i.Subject == info.Subject {
			panic(fmt.Sprintf("endpoints: subject %s declared twice", info.Subject))
		}
	}
	all = append(all, info)
	return Endpoint[Req, Resp]{info: info}
}

// Markdown renders every declared endpoint as a Markdown table, the one in
// ARCHITECTURE.md.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| subject (`.<caller>` follows) | answered by | request → response | callers | what it does |\n")
	b.WriteString("|---|---|---|---|---|\n")
	for _, i := range All() {
		by := i.Service
		if i.Every {
			by += ", every instance (first good answer)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` → `%s` | %s | %s |\n", i.Subject, by,
			short(i.Request), short(i.Response), strings.Join(i.Callers, ", "), i.Doc)
	}
	return b.String()
}

// short drops the "flotilla." prefix of a message name.
func short(n protoreflect.FullName) string { return strings.TrimPrefix(string(n), "flotilla.") }
