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
	VerbCreate  = "create"
	VerbGet     = "get"
	VerbGetMany = "get-many"
	VerbList    = "list"
	VerbUpdate  = "update"
	VerbDelete  = "delete"
)

// Nouns used in endpoint and event subjects.
const (
	NounNetwork      = "network"
	NounCloudAccount = "cloudaccount"
	NounTemplate     = "template"
	NounInstance     = "instance"
	NounUser         = "user"
	NounToken        = "token"
	NounAPIToken     = "apitoken"
	NounAudit        = "audit"
)

// Auth verbs on the inventory's token endpoints: "flotilla.svc.inventory.token.<verb>".
const (
	VerbLogin  = "login"
	VerbVerify = "verify"
	VerbRevoke = "revoke"
)

// Verbs of the inventory's user endpoints:
// "flotilla.svc.inventory.user.<verb>".
const (
	VerbResetPassword  = "reset-password"
	VerbChangePassword = "change-password"
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

// ParseEvent splits an event subject, "flotilla.evt.<entity>.<id>.<verb>".
func ParseEvent(subject string) (entity, id, verb string, ok bool) {
	rest, ok := strings.CutPrefix(subject, Root+".evt.")
	if !ok {
		return "", "", "", false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// EntityEvents matches every event of one entity: "flotilla.evt.<entity>.<id>.*".
func EntityEvents(entity, id string) string {
	return Root + ".evt." + entity + "." + id + ".*"
}

// EntityVerbEvents matches one verb of every entity of a kind:
// "flotilla.evt.<entity>.*.<verb>", e.g. every instance deletion.
func EntityVerbEvents(entity, verb string) string {
	return Root + ".evt." + entity + ".*." + verb
}

// SecretsCleanupConsumer is the secret broker's durable consumer of
// instance deletions on EventsStream.
const SecretsCleanupConsumer = "secrets-instance-deleted"

// SecretsNetworkCleanupConsumer is the secret broker's durable consumer of
// network deletions on EventsStream.
const SecretsNetworkCleanupConsumer = "secrets-network-deleted"

// SecretsTemplateCleanupConsumer is the secret broker's durable consumer
// of template deletions on EventsStream: fleet secrets forget the template.
const SecretsTemplateCleanupConsumer = "secrets-template-deleted"

// EventType is the dotted type of an event, "<entity>.<verb>", e.g. "network.updated".
func EventType(entity, verb string) string { return entity + "." + verb }

// Nouns and verbs of the issue-3 services' endpoints.
const (
	NounCertificate  = "certificate"   // ca: certificate.get
	NounJoinToken    = "jointoken"     // ca: jointoken.create
	NounAgent        = "agent"         // ca: agent.join, agent.sign; provisioner: agent.upgrade
	NounServer       = "server"        // ca: server.sign
	NounSecret       = "secret"        // secrets: secret.create/list/delete/read
	NounFleetSecret  = "fleetsecret"   // secrets: fleetsecret.put/list/delete
	NounCloudKey     = "cloudkey"      // secrets: cloudkey.put/delete/read
	NounLifecycle    = "lifecycle"     // inventory: lifecycle.request, lifecycle.observe(-many), lifecycle.record
	NounCustomCert   = "customcert"    // ca: customcert.get; provisioner: customcert.refresh
	NounCertKey      = "certkey"       // secrets: certkey.create/read
	NounACMEAccount  = "acmeaccount"   // ca, secrets: acmeaccount.get
	NounACMECert     = "acmecert"      // ca: acmecert.get/put; secrets: acmecert.put/read
	NounDNSChallenge = "dnschallenge"  // provisioner: dnschallenge.put/delete
	NounTicketKeys   = "ticketkeys"    // ca: ticketkeys.get
	NounConfig       = "configuration" // provisioner: configuration.refresh
	NounRollout      = "rollout"       // provisioner: rollout.create; inventory: rollout.create/get/list/pause/resume/cancel/record

	VerbJoin        = "join"
	VerbSign        = "sign"
	VerbRead        = "read"
	VerbRequest     = "request"
	VerbObserve     = "observe"
	VerbObserveMany = "observe-many"
	VerbRecord      = "record"
	VerbCheckMany   = "check-many"
	VerbCheckChange = "check-change"
	VerbPut         = "put"
	VerbRefresh     = "refresh"
	VerbUpgrade     = "upgrade"
	VerbPause       = "pause"
	VerbResume      = "resume"
	VerbCancel      = "cancel"
)

// AuditStream is the JetStream stream of audit records (long retention).
const AuditStream = "FLOTILLA_AUDIT"

// AuditAll matches every audit record: "flotilla.audit.>".
func AuditAll() string { return Root + ".audit.>" }

// Audit is the subject of one audit record: "flotilla.audit.<noun>.<id>.<verb>",
// e.g. "flotilla.audit.secret.<instance-id>.read".
func Audit(noun, id, verb string) string { return Root + ".audit." + noun + "." + id + "." + verb }

// The verbs of a user's audit records, Audit(NounUser, <user id>, verb):
// UnknownUser stands for the id of a user name that does not exist.
const (
	VerbLoginFailed  = "login-failed"
	VerbLoginRefused = "login-refused"
	VerbTokenIssued  = "token-issued"
	VerbTokenRevoked = "token-revoked"
	// VerbTokenRefused: a revoked token was presented.
	VerbTokenRefused = "token-refused"
	UnknownUser      = "unknown"
	// An API token issued; a user created by an admin, their role changed,
	// their password reset by an admin or changed by themselves, deleted.
	VerbTokenCreated    = "token-created"
	VerbUserCreated     = "user-created"
	VerbRoleChanged     = "role-changed"
	VerbPasswordReset   = "password-reset"
	VerbPasswordChanged = "password-changed"
	VerbUserDeleted     = "user-deleted"
)

// NounAPI and VerbCall name the gateway's audit records of mutating API
// calls: Audit(NounAPI, <user id>, VerbCall), "flotilla.audit.api.<user id>.call".
const (
	NounAPI  = "api"
	VerbCall = "call"
)

// AuditProjectionConsumer is the inventory's durable consumer of
// AuditStream: it writes every record into the audit_records table that
// GET /api/v1/audit queries.
const AuditProjectionConsumer = "inventory-audit"

// ProvisioningStream is the work-queue stream of provisioning work.
const ProvisioningStream = "FLOTILLA_PROVISIONING"

// ProvisioningConsumer is the provisioner's durable consumer on ProvisioningStream.
const ProvisioningConsumer = "provisioner"

// ProvisionAll matches all provisioning work: "flotilla.cmd.provision.*".
func ProvisionAll() string { return Root + ".cmd.provision.*" }

// Provision is the subject of work for one instance: "flotilla.cmd.provision.<id>".
func Provision(instanceID string) string { return Root + ".cmd.provision." + instanceID }

// PoisonStream holds the events a consumer could never handle (malformed
// ones), kept for an operator to inspect.
const PoisonStream = "FLOTILLA_POISON"

// PoisonAll matches every poisoned event: "flotilla.poison.>".
func PoisonAll() string { return Root + ".poison.>" }

// Poison is where a service's consumers put what they could never handle:
// "flotilla.poison.<service>".
func Poison(service string) string { return Root + ".poison." + service }

// JoinTokensBucket is the CA's JetStream key-value bucket of join tokens.
const JoinTokensBucket = "flotilla_join_tokens"

// AgentCertsBucket is the CA's JetStream key-value bucket of the agent
// certificates still current, per instance.
const AgentCertsBucket = "flotilla_agent_certs"

// ProvisionerLeasesBucket is the provisioners' JetStream key-value bucket
// of per-instance leases: key = instance id, value = the provisioner
// process working on it.
const ProvisionerLeasesBucket = "flotilla_provisioner_leases"

// ManagersBucket is the JetStream key-value bucket of manager heartbeats:
// one key per running service process (libs/membership).
const ManagersBucket = "flotilla_managers"

// ManagerKey is a service process's key in ManagersBucket:
// "<service>.<host>.<process id>", host and id reduced to letters, digits,
// '-' and '_'.
func ManagerKey(service, host, processID string) string {
	return service + "." + keyToken(host) + "." + keyToken(processID)
}

// ManagerKeys matches every key of one service's processes in
// ManagersBucket, as a subject: "$KV.flotilla_managers.<service>.>".
func ManagerKeys(service string) string { return "$KV." + ManagersBucket + "." + service + ".>" }

// keyToken makes s one token of a NATS subject and key: every character
// but an ASCII letter, digit, '-' or '_' becomes '-' ("" becomes "-").
func keyToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "-"
	}
	return string(b)
}

// KVStream is the stream behind a key-value bucket: "KV_<bucket>".
func KVStream(bucket string) string { return "KV_" + bucket }

// KVAll matches every key of a bucket: "$KV.<bucket>.>".
func KVAll(bucket string) string { return "$KV." + bucket + ".>" }

// AgentLogsStream is the JetStream stream of agent log lines.
const AgentLogsStream = "FLOTILLA_AGENT_LOGS"

// AgentLogsAll matches every agent's logs: "flotilla.agent.*.logs".
func AgentLogsAll() string { return Root + ".agent.*.logs" }

// AgentLogs is the subject of one instance's log lines: "flotilla.agent.<id>.logs".
func AgentLogs(instanceID string) string { return Root + ".agent." + instanceID + ".logs" }

// AgentLogsInstance is the instance id of an AgentLogs subject, and whether
// subject is one.
func AgentLogsInstance(subject string) (string, bool) {
	id, ok := strings.CutPrefix(subject, Root+".agent.")
	if !ok {
		return "", false
	}
	id, ok = strings.CutSuffix(id, ".logs")
	return id, ok && id != "" && !strings.Contains(id, ".")
}

// AgentCommand is where a command for a connected agent is sent (request/reply,
// answered by the agent gateway node the agent is connected to):
// "flotilla.agent.<id>.cmd".
func AgentCommand(instanceID string) string { return Root + ".agent." + instanceID + ".cmd" }

// AgentStatus carries an agent's connects, disconnects, heartbeats and
// progress (agent.v1.AgentEvent): "flotilla.agent.<id>.status".
func AgentStatus(instanceID string) string { return Root + ".agent." + instanceID + ".status" }

// AgentStatusAll matches every agent's status: "flotilla.agent.*.status".
func AgentStatusAll() string { return Root + ".agent.*.status" }
