// Package subjects names every NATS subject, stream and consumer Flotilla uses.
//
// Subjects are nouns then verbs, lowercase and dot-separated. No other package
// spells a subject as a string literal: it calls a function here, whose comment
// shows the literal pattern. ARCHITECTURE.md keeps the same table for readers.
package subjects

import "strings"

// Root is the prefix of every Flotilla subject.
const Root = "flotilla"

// Service names used for request/reply (nats micro) services.
const (
	Gateway     = "gateway"
	Inventory   = "inventory"
	Provisioner = "provisioner"
	CA          = "ca"
	Secrets     = "secrets"
	AgentGW     = "agentgw"
)

// Services lists every service, in start order.
var Services = []string{Inventory, CA, Secrets, Provisioner, AgentGW, Gateway}

// ServiceGroup is the subject prefix of a service's request/reply endpoints:
// "flotilla.svc.<service>".
func ServiceGroup(service string) string { return Root + ".svc." + service }

// Endpoint is the subject of one request/reply endpoint of a service:
// "flotilla.svc.<service>.<noun>.<verb>", e.g. "flotilla.svc.inventory.network.create".
func Endpoint(service, noun, verb string) string {
	return ServiceGroup(service) + "." + noun + "." + verb
}

// Ping is the readiness endpoint every service answers: "flotilla.svc.<service>.ping".
func Ping(service string) string { return ServiceGroup(service) + ".ping" }

// Inventory endpoints, "flotilla.svc.inventory.<noun>.<verb>".
const (
	VerbCreate = "create"
	VerbGet    = "get"
	VerbList   = "list"
	VerbUpdate = "update"
	VerbDelete = "delete"
)

// Nouns used in endpoint and event subjects.
const (
	NounNetwork  = "network"
	NounTemplate = "template"
	NounInstance = "instance"
	NounUser     = "user"
	NounToken    = "token"
)

// Auth verbs on the inventory's token endpoints: "flotilla.svc.inventory.token.<verb>".
const (
	VerbLogin  = "login"
	VerbVerify = "verify"
	VerbRevoke = "revoke"
)

// EventsStream is the JetStream stream of domain events (long retention, replayable).
const EventsStream = "FLOTILLA_EVENTS"

// EventsAll matches every domain event: "flotilla.evt.>".
func EventsAll() string { return Root + ".evt.>" }

// Event is the subject of one domain event: "flotilla.evt.<entity>.<id>.<verb>",
// e.g. "flotilla.evt.instance.0190c3e1-....created".
func Event(entity, id, verb string) string {
	return Root + ".evt." + entity + "." + id + "." + verb
}

// EntityEvents matches every event of one entity: "flotilla.evt.<entity>.<id>.*".
func EntityEvents(entity, id string) string {
	return Root + ".evt." + entity + "." + id + ".*"
}

// EventType is the dotted type of an event, "<entity>.<verb>", e.g. "network.updated".
func EventType(entity, verb string) string { return entity + "." + verb }

// SplitEventType returns the entity and verb of an event type.
func SplitEventType(t string) (entity, verb string) {
	entity, verb, _ = strings.Cut(t, ".")
	return entity, verb
}
