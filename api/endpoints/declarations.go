package endpoints

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
)

// Short names for the services, in the callers lists below.
const (
	gateway     = subjects.Gateway
	inventory   = subjects.Inventory
	provisioner = subjects.Provisioner
	ca          = subjects.CA
	secrets     = subjects.Secrets
	agentgw     = subjects.AgentGW
)

// MaxBatch bounds the items of one request to the endpoints that take many
// at once (agent.check-many, instance.get-many, lifecycle.observe-many).
const MaxBatch = 256

// endpoint declares "<noun>.<verb>" of service at subjects.Endpoint.
func endpoint[Req, Resp proto.Message](service, noun, verb, doc string, callers ...string) Endpoint[Req, Resp] {
	return declare[Req, Resp](service, noun+"."+verb, subjects.Endpoint(service, noun, verb), doc, callers...)
}

// Pings: every service behind the gateway answers ping when it is ready;
// the gateway's status check asks each. Every instance of the service gets
// the ping and the first ready answer counts, so an instance that is cut
// off (and silent) or not ready does not make the service look down while
// another can serve. An instance that is not ready asks its own service's
// ping whether another instance is, before it steps out of its queue
// groups (rpc.Service).
var (
	PingInventory   = ping(inventory)
	PingCA          = ping(ca)
	PingSecrets     = ping(secrets)
	PingProvisioner = ping(provisioner)
	PingAgentGW     = ping(agentgw)
)

func ping(service string) Endpoint[*systemv1.PingRequest, *systemv1.PingResponse] {
	info := infoOf[*systemv1.PingRequest, *systemv1.PingResponse](service, "ping", subjects.Ping(service),
		"answers when the service is ready", gateway, service)
	info.Every = true
	return register[*systemv1.PingRequest, *systemv1.PingResponse](info)
}

// Ping returns the ping endpoint of service, or false for an unknown service.
func Ping(service string) (Endpoint[*systemv1.PingRequest, *systemv1.PingResponse], bool) {
	for _, p := range []Endpoint[*systemv1.PingRequest, *systemv1.PingResponse]{
		PingInventory, PingCA, PingSecrets, PingProvisioner, PingAgentGW} {
		if p.Service() == service {
			return p, true
		}
	}
	return Endpoint[*systemv1.PingRequest, *systemv1.PingResponse]{}, false
}

// Inventory: networks.
var (
	NetworkCreate = endpoint[*inventoryv1.CreateNetworkRequest, *inventoryv1.Network](inventory, subjects.NounNetwork, subjects.VerbCreate,
		"creates a network", gateway)
	NetworkGet = endpoint[*inventoryv1.GetNetworkRequest, *inventoryv1.Network](inventory, subjects.NounNetwork, subjects.VerbGet,
		"reads a network", gateway, provisioner, ca, secrets)
	NetworkList = endpoint[*inventoryv1.ListNetworksRequest, *inventoryv1.ListNetworksResponse](inventory, subjects.NounNetwork, subjects.VerbList,
		"lists networks, a page at a time", gateway)
	NetworkUpdate = endpoint[*inventoryv1.UpdateNetworkRequest, *inventoryv1.Network](inventory, subjects.NounNetwork, subjects.VerbUpdate,
		"changes a network at the version read", gateway)
	NetworkDelete = endpoint[*inventoryv1.DeleteNetworkRequest, *emptypb.Empty](inventory, subjects.NounNetwork, subjects.VerbDelete,
		"deletes a network no instance uses", gateway)
)

// Inventory: cloud accounts.
var (
	CloudAccountCreate = endpoint[*inventoryv1.CreateCloudAccountRequest, *inventoryv1.CloudAccount](inventory, subjects.NounCloudAccount, subjects.VerbCreate,
		"creates a cloud account, its secret key handed to the secret broker", gateway)
	CloudAccountGet = endpoint[*inventoryv1.GetCloudAccountRequest, *inventoryv1.CloudAccount](inventory, subjects.NounCloudAccount, subjects.VerbGet,
		"reads a cloud account (never its secret key)", gateway, provisioner, ca, secrets)
	CloudAccountList = endpoint[*inventoryv1.ListCloudAccountsRequest, *inventoryv1.ListCloudAccountsResponse](inventory, subjects.NounCloudAccount, subjects.VerbList,
		"lists cloud accounts, a page at a time", gateway)
	CloudAccountUpdate = endpoint[*inventoryv1.UpdateCloudAccountRequest, *inventoryv1.CloudAccount](inventory, subjects.NounCloudAccount, subjects.VerbUpdate,
		"changes a cloud account at the version read", gateway)
	CloudAccountDelete = endpoint[*inventoryv1.DeleteCloudAccountRequest, *emptypb.Empty](inventory, subjects.NounCloudAccount, subjects.VerbDelete,
		"deletes a cloud account no network uses, and its secret key", gateway)
	// CloudAccountVerify is answered by the provisioner: the one service
	// that reads cloud accounts' secret keys and calls the clouds.
	CloudAccountVerify = endpoint[*inventoryv1.VerifyCloudAccountRequest, *inventoryv1.CloudAccountVerification](provisioner, subjects.NounCloudAccount, subjects.VerbVerify,
		"signs in with a cloud account's credentials and reports who the cloud says it is", gateway)
)

// Inventory: rollouts (the provisioner drives them; see RolloutStart).
var (
	RolloutCreate = endpoint[*inventoryv1.Rollout, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbCreate,
		"records a rollout the provisioner chose the instances of, and queues its work", provisioner)
	RolloutGet = endpoint[*inventoryv1.GetRolloutRequest, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbGet,
		"reads a rollout", gateway, provisioner)
	RolloutList = endpoint[*inventoryv1.ListRolloutsRequest, *inventoryv1.ListRolloutsResponse](inventory, subjects.NounRollout, subjects.VerbList,
		"lists rollouts, oldest first, a page at a time", gateway, provisioner)
	RolloutPause = endpoint[*inventoryv1.RolloutActionRequest, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbPause,
		"pauses a running rollout: no more instances are asked", gateway)
	RolloutResume = endpoint[*inventoryv1.RolloutActionRequest, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbResume,
		"resumes a paused or stopped rollout, and queues its work", gateway)
	RolloutCancel = endpoint[*inventoryv1.RolloutActionRequest, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbCancel,
		"cancels a rollout: the instances not asked yet are not", gateway)
	RolloutRecord = endpoint[*inventoryv1.RecordRolloutRequest, *inventoryv1.Rollout](inventory, subjects.NounRollout, subjects.VerbRecord,
		"records a rollout's progress at the version read", provisioner)
)

// Inventory: templates.
var (
	TemplateCreate = endpoint[*inventoryv1.CreateTemplateRequest, *inventoryv1.Template](inventory, subjects.NounTemplate, subjects.VerbCreate,
		"creates a template", gateway)
	TemplateGet = endpoint[*inventoryv1.GetTemplateRequest, *inventoryv1.Template](inventory, subjects.NounTemplate, subjects.VerbGet,
		"reads a template", gateway, provisioner, ca, secrets)
	TemplateList = endpoint[*inventoryv1.ListTemplatesRequest, *inventoryv1.ListTemplatesResponse](inventory, subjects.NounTemplate, subjects.VerbList,
		"lists templates, a page at a time", gateway)
	TemplateUpdate = endpoint[*inventoryv1.UpdateTemplateRequest, *inventoryv1.Template](inventory, subjects.NounTemplate, subjects.VerbUpdate,
		"changes a template at the version read", gateway)
	TemplateDelete = endpoint[*inventoryv1.DeleteTemplateRequest, *emptypb.Empty](inventory, subjects.NounTemplate, subjects.VerbDelete,
		"deletes a template no instance uses", gateway)
)

// Inventory: instances and their lifecycle.
var (
	InstanceCreate = endpoint[*inventoryv1.CreateInstanceRequest, *inventoryv1.Instance](inventory, subjects.NounInstance, subjects.VerbCreate,
		"creates an instance record (state created)", gateway)
	InstanceGet = endpoint[*inventoryv1.GetInstanceRequest, *inventoryv1.Instance](inventory, subjects.NounInstance, subjects.VerbGet,
		"reads an instance", gateway, provisioner, ca, secrets, agentgw)
	InstanceGetMany = endpoint[*inventoryv1.GetInstancesRequest, *inventoryv1.GetInstancesResponse](inventory, subjects.NounInstance, subjects.VerbGetMany,
		"reads up to 256 instances at once, leaving out those that do not exist", ca, provisioner)
	InstanceList = endpoint[*inventoryv1.ListInstancesRequest, *inventoryv1.ListInstancesResponse](inventory, subjects.NounInstance, subjects.VerbList,
		"lists instances a page at a time, filtered (state, kind, network, template, a search), by age or name, counted", gateway, provisioner)
	InstanceUpdate = endpoint[*inventoryv1.UpdateInstanceRequest, *inventoryv1.Instance](inventory, subjects.NounInstance, subjects.VerbUpdate,
		"changes an instance's settings at the version read", gateway)
	InstanceDelete = endpoint[*inventoryv1.DeleteInstanceRequest, *inventoryv1.Instance](inventory, subjects.NounInstance, subjects.VerbDelete,
		"deletes an instance: at once if never provisioned, else through the provisioner", gateway)
	LifecycleRequest = endpoint[*inventoryv1.LifecycleRequest, *inventoryv1.Instance](inventory, subjects.NounLifecycle, subjects.VerbRequest,
		"applies an operator's provision, deprovision, reprovision or delete (the provisioner's: a rollout's reprovision)", gateway, provisioner)
	LifecycleRecord = endpoint[*inventoryv1.RecordStateRequest, *inventoryv1.Instance](inventory, subjects.NounLifecycle, subjects.VerbRecord,
		"records observed state the provisioner has made true", provisioner)
	LifecycleObserve = endpoint[*agentv1.AgentEvent, *emptypb.Empty](inventory, subjects.NounLifecycle, subjects.VerbObserve,
		"records an agent's connect, disconnect, heartbeat or progress, reported for that agent (the form a gateway of an earlier release sends)", agentgw)
	LifecycleObserveMany = endpoint[*agentv1.AgentEvents, *agentv1.AgentEventResults](inventory, subjects.NounLifecycle, subjects.VerbObserveMany,
		"records up to 256 agent events (connects, disconnects, heartbeats, progress) from the agent gateway, each agent's in order", agentgw)
)

// Inventory: users and tokens.
var (
	TokenLogin = endpoint[*authv1.LoginRequest, *authv1.LoginResponse](inventory, subjects.NounToken, subjects.VerbLogin,
		"checks a user name and password and issues a bearer token", gateway)
	TokenVerify = endpoint[*authv1.VerifyTokenRequest, *authv1.VerifyTokenResponse](inventory, subjects.NounToken, subjects.VerbVerify,
		"resolves a bearer token to its user", gateway)
	TokenRevoke = endpoint[*authv1.RevokeTokenRequest, *emptypb.Empty](inventory, subjects.NounToken, subjects.VerbRevoke,
		"revokes a bearer token (logout)", gateway)

	UserCreate = endpoint[*authv1.CreateUserRequest, *authv1.User](inventory, subjects.NounUser, subjects.VerbCreate,
		"creates a user with a password and a role", gateway)
	UserGet = endpoint[*authv1.GetUserRequest, *authv1.User](inventory, subjects.NounUser, subjects.VerbGet,
		"reads a user (never a password)", gateway)
	UserList = endpoint[*authv1.ListUsersRequest, *authv1.ListUsersResponse](inventory, subjects.NounUser, subjects.VerbList,
		"lists users, a page at a time", gateway)
	UserUpdate = endpoint[*authv1.UpdateUserRequest, *authv1.User](inventory, subjects.NounUser, subjects.VerbUpdate,
		"changes a user's role at the version read, never the last admin's", gateway)
	UserDelete = endpoint[*authv1.DeleteUserRequest, *emptypb.Empty](inventory, subjects.NounUser, subjects.VerbDelete,
		"deletes a user and their tokens, never the last admin", gateway)
	UserResetPassword = endpoint[*authv1.ResetPasswordRequest, *authv1.ResetPasswordResponse](inventory, subjects.NounUser, subjects.VerbResetPassword,
		"gives a user a temporary password to change at the next login, ending their sessions", gateway)
	UserChangePassword = endpoint[*authv1.ChangePasswordRequest, *emptypb.Empty](inventory, subjects.NounUser, subjects.VerbChangePassword,
		"changes the calling user's own password, ending their other sessions", gateway)

	APITokenCreate = endpoint[*authv1.CreateTokenRequest, *authv1.CreateTokenResponse](inventory, subjects.NounAPIToken, subjects.VerbCreate,
		"issues an API token for the calling user, its role at most theirs", gateway)
	APITokenList = endpoint[*authv1.ListTokensRequest, *authv1.ListTokensResponse](inventory, subjects.NounAPIToken, subjects.VerbList,
		"lists live API tokens: every user's to an admin, one's own to anyone else", gateway)
	// APITokenDelete answers the revoked token, so the gateway can drop it
	// from its cache before answering its client.
	APITokenDelete = endpoint[*authv1.DeleteTokenRequest, *authv1.ApiToken](inventory, subjects.NounAPIToken, subjects.VerbDelete,
		"revokes an API token: one's own, or anyone's to an admin", gateway)

	AuditList = endpoint[*auditv1.ListAuditRecordsRequest, *auditv1.ListAuditRecordsResponse](inventory, subjects.NounAudit, subjects.VerbList,
		"lists the audit trail's records, newest first, by user, target and time", gateway)
)

// CA.
var (
	CACertificateGet = endpoint[*cav1.GetCACertificateRequest, *cav1.CACertificate](ca, subjects.NounCertificate, subjects.VerbGet,
		"returns the fleet CA certificate", gateway, provisioner, agentgw)
	JoinTokenCreate = endpoint[*cav1.CreateJoinTokenRequest, *cav1.JoinToken](ca, subjects.NounJoinToken, subjects.VerbCreate,
		"issues a one-time join token for a new VM's agent: to the provisioner, or to an operator for an external instance waiting for its agent", provisioner, gateway)
	AgentJoin = endpoint[*cav1.JoinRequest, *cav1.AgentCertificate](ca, subjects.NounAgent, subjects.VerbJoin,
		"consumes a join token and certifies the agent's CSR for the token's instance", agentgw)
	AgentSign = endpoint[*cav1.SignAgentRequest, *cav1.AgentCertificate](ca, subjects.NounAgent, subjects.VerbSign,
		"renews an agent's current certificate, for the same VM", agentgw)
	AgentCheckMany = endpoint[*cav1.CheckAgentsRequest, *cav1.CheckAgentsResponse](ca, subjects.NounAgent, subjects.VerbCheckMany,
		"says of each of up to 256 agent certificates whether it is current: instance live, VM current, not superseded", agentgw)
	ServerSign = endpoint[*cav1.SignServerRequest, *cav1.ServerCertificate](ca, subjects.NounServer, subjects.VerbSign,
		"certifies an instance's (or the agent gateway's) HTTPS key for its names", agentgw)
	TicketKeysGet = endpoint[*cav1.GetTicketKeysRequest, *cav1.TicketKeys](ca, subjects.NounTicketKeys, subjects.VerbGet,
		"gives the agent gateways the keys of their TLS session tickets, the same for each", agentgw)
	CustomCertGet = endpoint[*cav1.GetCustomCertificateRequest, *cav1.CustomCertificate](ca, subjects.NounCustomCert, subjects.VerbGet,
		"resolves an instance's custom certificate and its private key (secret broker or AWS Secrets Manager) for its agent", agentgw)
	ACMEAccountGet = endpoint[*cav1.GetAcmeAccountRequest, *cav1.AcmeAccountKey](ca, subjects.NounACMEAccount, subjects.VerbGet,
		"gives an instance's agent the ACME account key of its network (kept by the secret broker)", agentgw)
	ACMECertGet = endpoint[*cav1.GetAcmeCertificateRequest, *cav1.AcmeCertificate](ca, subjects.NounACMECert, subjects.VerbGet,
		"gives an instance's agent the ACME certificate kept for it, if still good for its domains", agentgw)
	ACMECertPut = endpoint[*cav1.PutAcmeCertificateRequest, *emptypb.Empty](ca, subjects.NounACMECert, subjects.VerbPut,
		"checks an instance's newly issued ACME certificate against its domains and has the secret broker keep it", agentgw)
)

// Secrets.
var (
	SecretCreate = endpoint[*secretsv1.CreateSecretRequest, *secretsv1.Secret](secrets, subjects.NounSecret, subjects.VerbCreate,
		"stores a secret for an instance, encrypted", gateway)
	SecretList = endpoint[*secretsv1.ListSecretsRequest, *secretsv1.ListSecretsResponse](secrets, subjects.NounSecret, subjects.VerbList,
		"lists an instance's secrets, names and metadata only", gateway)
	SecretDelete = endpoint[*secretsv1.DeleteSecretRequest, *emptypb.Empty](secrets, subjects.NounSecret, subjects.VerbDelete,
		"deletes one of an instance's secrets", gateway)
	SecretRead = endpoint[*secretsv1.ReadSecretRequest, *secretsv1.ReadSecretResponse](secrets, subjects.NounSecret, subjects.VerbRead,
		"releases a secret's value to its instance's agent (or a fleet secret's, to the agent of an instance of one of its templates), audited", agentgw)
	FleetSecretPut = endpoint[*secretsv1.SetFleetSecretRequest, *secretsv1.FleetSecret](secrets, subjects.NounFleetSecret, subjects.VerbPut,
		"stores a fleet secret for the instances of the templates (and networks) it names, encrypted", gateway)
	FleetSecretList = endpoint[*secretsv1.ListFleetSecretsRequest, *secretsv1.ListFleetSecretsResponse](secrets, subjects.NounFleetSecret, subjects.VerbList,
		"lists the fleet secrets, names and metadata only", gateway)
	FleetSecretGet = endpoint[*secretsv1.GetFleetSecretRequest, *secretsv1.FleetSecret](secrets, subjects.NounFleetSecret, subjects.VerbGet,
		"reads one fleet secret's metadata, never its value", gateway)
	FleetSecretDelete = endpoint[*secretsv1.DeleteFleetSecretRequest, *emptypb.Empty](secrets, subjects.NounFleetSecret, subjects.VerbDelete,
		"deletes a fleet secret", gateway)
	CloudKeyPut = endpoint[*secretsv1.PutCloudKeyRequest, *secretsv1.PutCloudKeyResponse](secrets, subjects.NounCloudKey, subjects.VerbPut,
		"stores a cloud account's secret key, encrypted", inventory)
	CloudKeyDelete = endpoint[*secretsv1.DeleteCloudKeyRequest, *emptypb.Empty](secrets, subjects.NounCloudKey, subjects.VerbDelete,
		"forgets a cloud account's secret key, asked before any account is deleted; refuses the account the broker's KMS key is reached through", inventory)
	CloudKeyCheckChange = endpoint[*secretsv1.CheckCloudAccountChangeRequest, *emptypb.Empty](secrets, subjects.NounCloudKey, subjects.VerbCheckChange,
		"says whether a cloud account's region or endpoint may change: refused for the account the broker's KMS key is reached through", inventory)
	CloudKeyRead = endpoint[*secretsv1.ReadCloudKeyRequest, *secretsv1.ReadCloudKeyResponse](secrets, subjects.NounCloudKey, subjects.VerbRead,
		"releases a cloud account's secret key to the services that call its cloud (the provisioner; the CA, for keys in AWS Secrets Manager), audited", provisioner, ca)
	CertKeyCreate = endpoint[*secretsv1.StoreCertificateKeyRequest, *secretsv1.CertificateKey](secrets, subjects.NounCertKey, subjects.VerbCreate,
		"stores an uploaded TLS private key of a network or an instance, encrypted", inventory)
	CertKeyRead = endpoint[*secretsv1.ReadCertificateKeyRequest, *secretsv1.ReadCertificateKeyResponse](secrets, subjects.NounCertKey, subjects.VerbRead,
		"releases a stored TLS private key for an instance's custom certificate, audited", ca)
	CertKeyDelete = endpoint[*secretsv1.DeleteCertificateKeyRequest, *emptypb.Empty](secrets, subjects.NounCertKey, subjects.VerbDelete,
		"forgets a stored TLS private key no network or instance names any more (replaced, or stored for a change not made)", inventory)
	ACMEAccountKeyGet = endpoint[*secretsv1.GetAcmeAccountKeyRequest, *secretsv1.AcmeAccountKey](secrets, subjects.NounACMEAccount, subjects.VerbGet,
		"releases a network's ACME account key for an instance's agent, made and sealed the first time, audited", ca)
	ACMECertKeyPut = endpoint[*secretsv1.PutAcmeCertificateRequest, *emptypb.Empty](secrets, subjects.NounACMECert, subjects.VerbPut,
		"keeps an instance's ACME certificate and its key, encrypted", ca)
	ACMECertKeyRead = endpoint[*secretsv1.ReadAcmeCertificateRequest, *secretsv1.AcmeCertificate](secrets, subjects.NounACMECert, subjects.VerbRead,
		"releases the ACME certificate and key kept for an instance, audited", ca)
)

// Provisioner.
var (
	CertificateRefresh = endpoint[*inventoryv1.InstanceActionRequest, *inventoryv1.Instance](provisioner, subjects.NounCustomCert, subjects.VerbRefresh,
		"has a running instance's agent fetch its custom certificate again, or renew its ACME certificate now", gateway)
	AgentUpgrade = endpoint[*inventoryv1.InstanceActionRequest, *inventoryv1.Instance](provisioner, subjects.NounAgent, subjects.VerbUpgrade,
		"has an instance's connected agent replace itself with the agent of the manager's version", gateway)
	ConfigRefresh = endpoint[*inventoryv1.InstanceActionRequest, *inventoryv1.Instance](provisioner, subjects.NounConfig, subjects.VerbRefresh,
		"has a running instance's agent write its template's files and environment again (secrets read anew) and restart the node software", gateway)
	RolloutStart = endpoint[*inventoryv1.CreateRolloutRequest, *inventoryv1.Rollout](provisioner, subjects.NounRollout, subjects.VerbCreate,
		"starts a rollout: chooses its instances and has the inventory record it", gateway)
	DNSChallengePut = endpoint[*inventoryv1.DnsChallengeRequest, *emptypb.Empty](provisioner, subjects.NounDNSChallenge, subjects.VerbPut,
		"writes the DNS-01 TXT record of one of an instance's ACME domains in its network's Route53 zone, for its agent", agentgw)
	DNSChallengeDelete = endpoint[*inventoryv1.DnsChallengeRequest, *emptypb.Empty](provisioner, subjects.NounDNSChallenge, subjects.VerbDelete,
		"deletes the DNS-01 TXT record of one of an instance's ACME domains, for its agent", agentgw)
)

// Agent gateway.
var (
	// AgentCommand is answered by the agent gateway node the instance's
	// agent is connected to (no queue group: no responders means the agent
	// is not connected). Bind it to an instance with At.
	AgentCommand = declare[*agentv1.Command, *emptypb.Empty](agentgw, "agent.command", subjects.AgentCommand("*"),
		"queues a command for a connected agent (a release: answered once its stream ended)", provisioner)
)
