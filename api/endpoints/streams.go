package endpoints

import (
	"slices"

	"flotilla.dev/flotilla/api/subjects"
)

// StreamUse declares how the services use one JetStream stream: who
// publishes which subjects into it, which durable consumers read it for
// which service, and which services replay it (ephemeral, ordered
// consumers). Like the endpoint callers, these lists are the services' bus
// permissions: a service may use the JetStream API only for the streams and
// consumers declared for it here.
type StreamUse struct {
	Stream     string
	Publishers []Publish
	Consumers  []Consumer
	Readers    []string
	// Purgers may purge the stream's messages (NATS cannot limit a purge
	// to some subjects: a purger's code must). Nobody deletes a stream.
	Purgers []string
	// PublishOnly are publishers that may not declare (create or update)
	// the stream.
	PublishOnly []string
}

// Publish is one service publishing subjects (patterns).
type Publish struct {
	Service  string
	Subjects []string
}

// Consumer is one service's durable consumer.
type Consumer struct {
	Service string
	Durable string
}

// Streams is every stream and who uses it.
var Streams = []StreamUse{{
	Stream:     subjects.EventsStream,
	Publishers: []Publish{{inventory, []string{subjects.EventsAll()}}},
	// The secret broker removes what it keeps for deleted instances and
	// networks, and deleted templates from its fleet secrets.
	Consumers: []Consumer{{secrets, subjects.SecretsCleanupConsumer}, {secrets, subjects.SecretsNetworkCleanupConsumer},
		{secrets, subjects.SecretsTemplateCleanupConsumer}},
	// The provisioner follows instance and rollout events to wake its waits.
	Readers: []string{gateway, provisioner},
}, {
	Stream:     subjects.ProvisioningStream,
	Publishers: []Publish{{inventory, []string{subjects.ProvisionAll()}}},
	Consumers:  []Consumer{{provisioner, subjects.ProvisioningConsumer}},
}, {
	Stream:     subjects.AgentLogsStream,
	Publishers: []Publish{{agentgw, []string{subjects.AgentLogsAll()}}},
	// The agent gateway enforces each instance's log retention: it finds
	// the first line to keep and purges that instance's subject below it.
	Readers: []string{gateway, agentgw},
	Purgers: []string{agentgw},
}, {
	Stream: subjects.AuditStream,
	Publishers: []Publish{
		{secrets, []string{subjects.Audit(subjects.NounSecret, "*", subjects.VerbRead), subjects.Audit(subjects.NounCloudKey, "*", subjects.VerbRead)}},
		{inventory, []string{subjects.Audit(subjects.NounUser, "*", "*")}},
		{ca, []string{subjects.Audit(subjects.NounJoinToken, "*", subjects.VerbCreate)}},
		// Every mutating API call, allowed or refused.
		{gateway, []string{subjects.Audit(subjects.NounAPI, "*", subjects.VerbCall)}},
	},
	// The gateway, which faces the network, may not redefine the stream
	// (its retention): it publishes once the others have declared it.
	PublishOnly: []string{gateway},
	// The inventory projects every record into PostgreSQL for
	// GET /api/v1/audit.
	Consumers: []Consumer{{inventory, subjects.AuditProjectionConsumer}},
}, {
	// Each service with durable consumers puts what it can never handle here.
	Stream:     subjects.PoisonStream,
	Publishers: []Publish{{secrets, []string{subjects.Poison(secrets)}}, {inventory, []string{subjects.Poison(inventory)}}},
}, {
	Stream:     subjects.KVStream(subjects.JoinTokensBucket),
	Publishers: []Publish{{ca, []string{subjects.KVAll(subjects.JoinTokensBucket)}}},
	Readers:    []string{ca},
}, {
	Stream:     subjects.KVStream(subjects.AgentCertsBucket),
	Publishers: []Publish{{ca, []string{subjects.KVAll(subjects.AgentCertsBucket)}}},
	Readers:    []string{ca},
}, {
	// A provisioner holds an instance's lease while it works on it, so two
	// provisioner processes never work on one instance at once.
	Stream:     subjects.KVStream(subjects.ProvisionerLeasesBucket),
	Publishers: []Publish{{provisioner, []string{subjects.KVAll(subjects.ProvisionerLeasesBucket)}}},
	Readers:    []string{provisioner},
}, {
	// Every service process writes its own heartbeat, under its service's
	// name only; the gateway reads them all (GET /api/v1/cluster) and
	// deletes those of managers that are gone (flotilla cluster managers
	// remove).
	Stream:     subjects.KVStream(subjects.ManagersBucket),
	Publishers: append(managerPublishers(), Publish{gateway, []string{subjects.KVAll(subjects.ManagersBucket)}}),
	Readers:    []string{gateway},
}}

// managerPublishers lets each service write its own processes' keys in the
// managers' bucket.
func managerPublishers() []Publish {
	out := make([]Publish, 0, len(subjects.Services))
	for _, s := range subjects.Services {
		out = append(out, Publish{s, []string{subjects.ManagerKeys(s)}})
	}
	return out
}

// Inspectors may read the information (configuration, replicas, leader) of
// every stream, for the cluster status; they read no message of a stream
// not declared for them.
var Inspectors = []string{gateway}

// Notices are subjects published without a stream, for live watchers.
var Notices = []Publish{{agentgw, []string{subjects.AgentStatusAll()}}}

// Watches are subjects a service follows live, with a plain subscription
// (no consumer): it sees what is published from then on, and nothing else
// of the stream they may belong to.
var Watches = []Publish{
	// Revoked tokens, and users whose tokens must be verified again (a
	// role changed, a password reset or changed, a user deleted), to drop
	// them from the gateways' verified-token caches.
	{gateway, UserTokenWatches()},
	// Every instance event, to drop the gateways' copies of instances
	// read lately.
	{gateway, InstanceWatches()},
}

// InstanceWatches are the events after which a gateway may no longer
// trust its copy of an instance (its id in the subject).
func InstanceWatches() []string {
	return []string{subjects.EntityEvents(subjects.NounInstance, "*")}
}

// UserTokenWatches are the audit records after which a gateway may no
// longer trust what it cached about a token (its id in the record) or
// about every token of a user (the user's id in the subject).
func UserTokenWatches() []string {
	out := []string{}
	for _, verb := range []string{subjects.VerbTokenRevoked, subjects.VerbRoleChanged, subjects.VerbPasswordReset,
		subjects.VerbPasswordChanged, subjects.VerbUserDeleted} {
		out = append(out, subjects.Audit(subjects.NounUser, "*", verb))
	}
	return out
}

// StreamsOf returns the streams service declares (creates or updates):
// those it publishes to (unless PublishOnly) or consumes with a durable
// consumer.
func StreamsOf(service string) []string {
	var out []string
	for _, u := range Streams {
		if u.DeclaredBy(service) {
			out = append(out, u.Stream)
		}
	}
	return out
}

// DeclaredBy reports whether service may declare (create or update) the
// stream: it consumes it with a durable consumer, or publishes into it and
// is not PublishOnly.
func (u StreamUse) DeclaredBy(service string) bool {
	return len(u.ConsumedBy(service)) > 0 || u.PublishedBy(service) && !slices.Contains(u.PublishOnly, service)
}

// PublishedBy reports whether service publishes into the stream.
func (u StreamUse) PublishedBy(service string) bool {
	return slices.ContainsFunc(u.Publishers, func(p Publish) bool { return p.Service == service })
}

// ConsumedBy returns service's durable consumers on the stream (none: nil).
func (u StreamUse) ConsumedBy(service string) []string {
	var out []string
	for _, c := range u.Consumers {
		if c.Service == service {
			out = append(out, c.Durable)
		}
	}
	return out
}

// PurgedBy reports whether service may purge the stream.
func (u StreamUse) PurgedBy(service string) bool { return slices.Contains(u.Purgers, service) }

// ReadBy reports whether service replays the stream.
func (u StreamUse) ReadBy(service string) bool { return slices.Contains(u.Readers, service) }
