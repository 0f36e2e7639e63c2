// Package vocab holds the words Flotilla's services and the node agent share
// about an instance's life: observed and desired states, provisioning steps,
// the operator's lifecycle actions, the verbs of domain events, the kinds of
// actor that cause them, agent statuses and the progress an agent reports,
// and the settings values (providers, HTTPS strategies, setup action types)
// more than one service acts on.
//
// They are named string types: the wire format (protobuf string fields, JSON)
// stays the plain words, and a word misspelled in one service is a compile
// error instead of an instance that never leaves "provisioning". No service
// spells these words as string literals; they convert with State(s),
// string(v).
package vocab

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// State is an instance's observed state: what the provisioner has made true.
type State string

// Observed states of an instance.
const (
	StateCreated        State = "created"
	StateProvisioning   State = "provisioning"
	StateRunning        State = "running"
	StateDeprovisioning State = "deprovisioning"
	StateDeprovisioned  State = "deprovisioned"
	StateDeleting       State = "deleting"
	StateDeleted        State = "deleted"
	StateFailed         State = "failed"
)

// States lists every observed state.
var States = []State{StateCreated, StateProvisioning, StateRunning, StateDeprovisioning,
	StateDeprovisioned, StateDeleting, StateDeleted, StateFailed}

// Valid reports whether s is one of States.
func (s State) Valid() bool { return slices.Contains(States, s) }

// AtRest reports whether an instance in this state has no VM and nothing in
// progress, so it may be deleted or moved to another template or network.
func (s State) AtRest() bool { return s == StateCreated || s == StateDeprovisioned }

// Transitional reports whether the provisioner has work to finish for an
// instance in this state (work a restarted provisioner resumes).
func (s State) Transitional() bool {
	return s == StateProvisioning || s == StateDeprovisioning || s == StateDeleting
}

// Desired is the state an operator asked for.
type Desired string

// Desired states.
const (
	DesiredProvisioned   Desired = "provisioned"
	DesiredDeprovisioned Desired = "deprovisioned"
	DesiredDeleted       Desired = "deleted"
)

// Action is a lifecycle action an operator asks for.
type Action string

// Lifecycle actions.
const (
	ActionProvision   Action = "provision"
	ActionDeprovision Action = "deprovision"
	ActionReprovision Action = "reprovision"
	ActionDelete      Action = "delete"
)

// Actions lists every lifecycle action.
var Actions = []Action{ActionProvision, ActionDeprovision, ActionReprovision, ActionDelete}

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool { return slices.Contains(Actions, a) }

// From lists the states in which a changes an instance; in any other it is
// refused (another action is in progress, or a running instance is asked
// to be deleted) or already in effect.
func (a Action) From() []State {
	switch a {
	case ActionProvision:
		return []State{StateCreated, StateDeprovisioned, StateFailed}
	case ActionDeprovision:
		return []State{StateRunning, StateFailed}
	case ActionReprovision:
		return []State{StateCreated, StateRunning, StateDeprovisioned, StateFailed}
	case ActionDelete:
		return []State{StateCreated, StateDeprovisioned, StateFailed}
	}
	return nil
}

// Requested is the verb of the event recording that a was asked for,
// e.g. "provision-requested".
func (a Action) Requested() Verb { return Verb(string(a) + "-requested") }

// WorkType is the Flotilla-Type of the provisioning work a queues,
// e.g. "provision.deprovision".
func (a Action) WorkType() string { return "provision." + string(a) }

// Step is a step of provisioning (shown in an instance's stateDetail) or of
// the agent's work (reported in its progress).
type Step string

// Steps, in the order they happen.
const (
	StepQueued          Step = "queued"
	StepAllocatingDisk  Step = "allocating-disk"
	StepLaunchingVM     Step = "launching-vm"
	StepWaitingForAgent Step = "waiting-for-agent"
	StepRunningSetup    Step = "running-setup"
	StepInstalling      Step = "installing"
	StepStarting        Step = "starting"
	// StepDone is the agent's last step: everything it was asked is done.
	StepDone         Step = "done"
	StepStoppingVM   Step = "stopping-vm"
	StepDeletingDisk Step = "deleting-disk"
	// StepRenewingCertificate is the agent renewing (acme) or fetching
	// again (custom-certificate) a running node's certificate; its result
	// is in the instance's timeline, and a failure leaves it running.
	StepRenewingCertificate Step = "renewing-certificate"
	// StepUpgradingAgent is the agent replacing itself with another
	// version's (agent.v1.UpgradeAgent); its result is in the instance's
	// timeline (a success: the new agent connecting), and a failure leaves
	// the old agent running.
	StepUpgradingAgent Step = "upgrading-agent"
	// StepRefreshingConfiguration is the agent writing its template's
	// files and environment again and restarting the node software
	// (agent.v1.RefreshConfiguration); its result is in the instance's
	// timeline, and a failure leaves the node software as it was, or
	// stopped if it was stopped to restart.
	StepRefreshingConfiguration Step = "refreshing-configuration"
)

// ProvisionSteps are the steps of provisioning, in order (an instance's
// stateDetail while it is provisioning).
var ProvisionSteps = []Step{StepQueued, StepAllocatingDisk, StepLaunchingVM, StepWaitingForAgent,
	StepRunningSetup, StepInstalling, StepStarting}

// Progress is the status of a step an agent reports.
type Progress string

// Progress statuses.
const (
	// ProgressRequested is not an agent's report: the provisioner records
	// it as it sends an operator's command, before the agent reports.
	ProgressRequested Progress = "requested"
	ProgressStarted   Progress = "started"
	ProgressSucceeded Progress = "succeeded"
	ProgressFailed    Progress = "failed"
)

// AgentProgress is how an instance shows its agent's last report:
// "<step>/<status>", e.g. "done/succeeded".
func AgentProgress(step Step, p Progress) string { return string(step) + "/" + string(p) }

// LogSource is how a log line's source is shown: "setup", or
// "setup/stderr" for a line written to standard error.
func LogSource(source string, stderr bool) string {
	if stderr {
		return source + "/stderr"
	}
	return source
}

// TemplateBehind says how far an instance's template moved on since the
// instance was brought to running with version made of it ("v2, now v3"):
// "" when it did not, or the instance has no VM (made 0).
func TemplateBehind(made, now int64) string {
	if made == 0 || made >= now {
		return ""
	}
	return fmt.Sprintf("v%d, now v%d", made, now)
}

// AgentUpgradable reports whether an instance's agent is one an upgrade
// to version is sent to: the instance at rest on a VM (running, or failed
// after its VM came up), the agent connected from that VM, at another
// version. The provisioner refuses the others, naming why.
func AgentUpgradable(state State, vmID string, agent AgentStatus, agentVMID, agentVersion, version string) bool {
	return (state == StateRunning || state == StateFailed) && vmID != "" &&
		agent == AgentConnected && agentVMID == vmID && agentVersion != version
}

// Clearable names an observed field of an instance the provisioner clears
// when the VM behind it is gone (RecordStateRequest.clear).
type Clearable string

// Clearable fields.
const (
	ClearVMID        Clearable = "vm_id"
	ClearAddresses   Clearable = "addresses"
	ClearAgent       Clearable = "agent"
	ClearReprovision Clearable = "reprovision"
)

// Clear lists fields for RecordStateRequest.clear.
func Clear(fields ...Clearable) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = string(f)
	}
	return out
}

// AgentStatus is whether an instance's agent has a stream to a gateway.
type AgentStatus string

// Agent statuses.
const (
	AgentConnected    AgentStatus = "connected"
	AgentDisconnected AgentStatus = "disconnected"
)

// AgentFeature is something an agent understands beyond the first agent
// protocol, named in its hello (agent.v1.Hello.features).
type AgentFeature string

// Agent features.
const (
	// AgentFeatureRelease: the agent acts on agent.v1.Release. The agent
	// gateway ends at once the stream of one that does not, when it is
	// released.
	AgentFeatureRelease AgentFeature = "release"
	// AgentFeatureUpgrade: the agent acts on agent.v1.UpgradeAgent. The
	// agent gateway refuses the command for one that does not.
	AgentFeatureUpgrade AgentFeature = "upgrade"
	// AgentFeatureRefreshConfiguration: the agent acts on
	// agent.v1.RefreshConfiguration. The agent gateway refuses the command
	// for one that does not.
	AgentFeatureRefreshConfiguration AgentFeature = "refresh-configuration"
)

// ManagerFeature is something a manager process's service does that a
// service of an earlier release may not, listed in its heartbeat
// (system.v1.Manager.features). A setting that needs every process of the
// service to act on it is refused while one of them does not: in a
// cluster being upgraded host by host, the old processes would ignore it.
type ManagerFeature string

// Manager features.
const (
	// ManagerFeatureFleetSecretNetworks: the secret broker stores a fleet
	// secret's networks and releases it only to instances in them. A fleet
	// secret naming networks is refused while a broker that does not is
	// listed: it would store the secret for every network, or release it
	// to instances in any.
	ManagerFeatureFleetSecretNetworks ManagerFeature = "fleet-secret-networks"
	// ManagerFeatureFleetSecretIfUpdateTime: the secret broker refuses a
	// change of a fleet secret over an update time it no longer has
	// (ifUpdateTime). One given it is refused while a broker that would
	// ignore it is listed.
	ManagerFeatureFleetSecretIfUpdateTime ManagerFeature = "fleet-secret-if-update-time"
)

// Verb is the last word of a domain event's type ("<entity>.<verb>").
type Verb string

// Event verbs.
const (
	VerbCreated = Verb("created")
	VerbUpdated = Verb("updated")
	VerbDeleted = Verb("deleted")

	// VerbStepStarted: the provisioner moved the instance to another
	// step (its state detail) with no other event to say so.
	VerbStepStarted       = Verb("step-started")
	VerbDiskAllocated     = Verb("disk-allocated")
	VerbVMLaunched        = Verb("vm-launched")
	VerbVMTerminated      = Verb("vm-terminated")
	VerbAgentConnected    = Verb("agent-connected")
	VerbAgentDisconnected = Verb("agent-disconnected")
	VerbProgress          = Verb("progress")
	// VerbCertificateChanged: the agent reports that the node software
	// serves a certificate with another end (a renewal, a refresh).
	VerbCertificateChanged = Verb("certificate-changed")
	VerbRunning            = Verb("running")
	VerbDeprovisioned      = Verb("deprovisioned")
	VerbFailed             = Verb("failed")
)

// ActorKind says what kind of actor caused a change.
type ActorKind string

// Actor kinds.
const (
	// ActorUser is an authenticated operator: "user:<username>".
	ActorUser ActorKind = "user"
	// ActorSystem is a Flotilla service acting on its own: "system:<what>".
	ActorSystem ActorKind = "system"
	// ActorAgent is an instance's agent, named by its certificate: "agent:<instance id>".
	ActorAgent ActorKind = "agent"
)

// Actor names who caused a change, as carried in the Flotilla-Actor header
// and in events: "<kind>:<name>".
type Actor string

// User is the actor of an authenticated operator.
func User(username string) Actor { return Actor(string(ActorUser) + ":" + username) }

// System is the actor of a Flotilla service acting on its own, e.g.
// System("provisioner").
func System(what string) Actor { return Actor(string(ActorSystem) + ":" + what) }

// Agent is the actor of an instance's agent.
func Agent(instanceID string) Actor { return Actor(string(ActorAgent) + ":" + instanceID) }

// Kind returns the actor's kind, or "" when a is not "<kind>:<name>" with a
// known kind.
func (a Actor) Kind() ActorKind {
	k, _, ok := strings.Cut(string(a), ":")
	if !ok {
		return ""
	}
	switch ActorKind(k) {
	case ActorUser, ActorSystem, ActorAgent:
		return ActorKind(k)
	}
	return ""
}

// Name returns what follows the kind: a user name, a service, an instance id.
func (a Actor) Name() string {
	_, n, _ := strings.Cut(string(a), ":")
	return n
}

// ParseActor checks that s names an actor of a known kind.
func ParseActor(s string) (Actor, error) {
	a := Actor(s)
	if a.Kind() == "" || a.Name() == "" {
		return "", fmt.Errorf("actor %q is not user:<name>, system:<what> or agent:<instance id>", s)
	}
	return a, nil
}

// Provider names a cloud Flotilla has (or will have) a driver for.
type Provider string

// Providers.
const (
	ProviderLocal Provider = "local"
	ProviderAWS   Provider = "aws"
	// ProviderExternal is a machine Flotilla does not create: the operator
	// starts the agent on it with a join token minted on demand
	// (POST /api/v1/instances/{id}:joinToken).
	ProviderExternal Provider = "external"
)

// Providers lists every provider a network or template may name.
var Providers = []Provider{ProviderLocal, ProviderAWS, ProviderExternal}

// HTTPSStrategy is how a network's instances serve HTTPS.
type HTTPSStrategy string

// HTTPS strategies.
const (
	HTTPSNone              HTTPSStrategy = "none"
	HTTPSSelfSigned        HTTPSStrategy = "self-signed"
	HTTPSCustomCertificate HTTPSStrategy = "custom-certificate"
	HTTPSACME              HTTPSStrategy = "acme"
)

// ACMEChallenge is how an ACME server checks that an "acme" network's
// instance controls its domains.
type ACMEChallenge string

// ACME challenges.
const (
	// ACMEHTTP01: the agent answers on the network's acme.httpPort (the
	// default when a network names none).
	ACMEHTTP01 ACMEChallenge = "http-01"
	// ACMEDNS01: the manager writes a TXT record in the network's Route53
	// zone on the agent's behalf.
	ACMEDNS01 ACMEChallenge = "dns-01"
)

// Ports the product fixes.
const (
	// DefaultACMEHTTPPort is where an agent answers HTTP-01 when the
	// network's acme.httpPort is 0.
	DefaultACMEHTTPPort = 80
	// AWSNodePort is where the node software of an aws network's VMs
	// serves (the port the network's security group opens).
	AWSNodePort = 443
)

// ACMEHTTPPort is the port an agent answers HTTP-01 on, given a network's
// acme.httpPort.
func ACMEHTTPPort(httpPort int32) int32 {
	if httpPort == 0 {
		return DefaultACMEHTTPPort
	}
	return httpPort
}

// HTTPSStrategies lists every HTTPS strategy.
var HTTPSStrategies = []HTTPSStrategy{HTTPSNone, HTTPSSelfSigned, HTTPSCustomCertificate, HTTPSACME}

// SetupAction is the type of one of a template's setup actions, run by the
// agent in order.
type SetupAction string

// Setup action types.
const (
	SetupScript   SetupAction = "script"
	SetupFile     SetupAction = "file"
	SetupEnv      SetupAction = "env"
	SetupPackages SetupAction = "packages"
)

// SetupActions lists every setup action type.
var SetupActions = []SetupAction{SetupScript, SetupFile, SetupEnv, SetupPackages}

// InstanceKind is what an instance is for.
type InstanceKind string

// Instance kinds.
const (
	KindDesign     InstanceKind = "design"
	KindAutomation InstanceKind = "automation"
	KindDeployer   InstanceKind = "deployer"
)

// InstanceKinds lists every instance kind.
var InstanceKinds = []InstanceKind{KindDesign, KindAutomation, KindDeployer}

// Role is what a user (or an API token) may do through the API; each role
// may do everything the roles below it may.
type Role string

// Roles, from the least to the most allowed.
const (
	// RoleViewer reads everything but the secrets' metadata beyond their
	// names, and changes nothing but its own password and API tokens.
	RoleViewer Role = "viewer"
	// RoleOperator also runs the fleet: networks, templates, instances and
	// their lifecycle, secrets (create and delete), cloud accounts read.
	RoleOperator Role = "operator"
	// RoleAdmin may do everything: users, cloud accounts, the audit trail,
	// the cluster's managers.
	RoleAdmin Role = "admin"
)

// Roles lists every role, the least allowed first.
var Roles = []Role{RoleViewer, RoleOperator, RoleAdmin}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return slices.Contains(Roles, r) }

// AtLeast reports whether r may do what min may; an unknown role may
// nothing.
func (r Role) AtLeast(min Role) bool {
	i, j := slices.Index(Roles, r), slices.Index(Roles, min)
	return i >= 0 && j >= 0 && i >= j
}

// Lesser returns the less allowed of r and o (an unknown role counts as
// the least).
func (r Role) Lesser(o Role) Role {
	if r.AtLeast(o) {
		return o
	}
	if !o.Valid() {
		return o
	}
	return r
}

// Failure is the stateDetail of a failed instance: the step that failed
// and why ("running-setup: setupActions[1]: script exited with code 3").
func Failure(step Step, reason string) string { return string(step) + ": " + reason }

// SplitFailure splits a failed instance's stateDetail (Failure) into its
// step and reason; ok is false when it names no step.
func SplitFailure(detail string) (step Step, reason string, ok bool) {
	s, reason, ok := strings.Cut(detail, ": ")
	return Step(s), reason, ok
}

// Left is what a forced delete left in the cloud: a resource ("vm i-0ab",
// "disk vol-1"), the step that could not destroy it, and why.
type Left struct {
	What string
	Step Step
	Why  string
}

// leftInCloud begins the stateDetail of a forced delete's deleted event
// when it left something in the cloud.
const leftInCloud = "forced: left in the cloud: "

// LeftInCloud is the stateDetail of a forced delete's deleted event naming
// what it left: "forced: left in the cloud: vm i-0ab (stopping-vm:
// connection refused); disk vol-1 (deleting-disk: …)". Empty when nothing
// was left.
func LeftInCloud(left []Left) string {
	if len(left) == 0 {
		return ""
	}
	parts := make([]string, len(left))
	for i, l := range left {
		parts[i] = fmt.Sprintf("%s (%s: %s)", l.What, l.Step, l.Why)
	}
	return leftInCloud + strings.Join(parts, "; ")
}

// DeleteSteps are the steps of a delete that destroy something in the
// cloud, in order.
var DeleteSteps = []Step{StepStoppingVM, StepDeletingDisk}

// StepsLeft are the steps a LeftInCloud detail names, in the order of
// DeleteSteps: those whose resource the forced delete left.
func StepsLeft(detail string) []Step {
	rest, ok := strings.CutPrefix(detail, leftInCloud)
	if !ok {
		return nil
	}
	var named []Step
	for _, m := range leftEntry.FindAllStringSubmatch(rest, -1) {
		named = append(named, Step(m[1]))
	}
	var steps []Step
	for _, s := range DeleteSteps {
		if slices.Contains(named, s) {
			steps = append(steps, s)
		}
	}
	return steps
}

// leftEntry is the start of an entry of a LeftInCloud detail, the step
// its submatch: "vm i-0ab (stopping-vm: ", at the start or after the
// previous entry's "); ".
var leftEntry = regexp.MustCompile(`(?:^|\); )[^ ()]+ [^ ()]+ \(([a-z-]+): `)

// RolloutAction is what a rollout does to each of its instances.
type RolloutAction string

// Rollout actions: the instance commands a rollout takes to many
// instances.
const (
	RolloutUpgradeAgent         RolloutAction = "upgrade-agent"
	RolloutRefreshConfiguration RolloutAction = "refresh-configuration"
	RolloutReprovision          RolloutAction = "reprovision"
)

// Valid reports whether a is a rollout action.
func (a RolloutAction) Valid() bool {
	return a == RolloutUpgradeAgent || a == RolloutRefreshConfiguration || a == RolloutReprovision
}

// MaxRolloutInstances is how many instances one rollout takes at most (it
// travels the bus whole, with each instance's state).
const MaxRolloutInstances = 500

// RolloutWork is the action of a rollout's work on the provisioning work
// queue: a LifecycleRequest whose id is the rollout's, not an instance's.
const RolloutWork Action = "rollout"

// RolloutState is where a rollout is.
type RolloutState string

// Rollout states. Running, paused and stopped rollouts are open: they can
// go on (resume) or be cancelled; cancelled and done ones are over.
const (
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutStopped   RolloutState = "stopped"
	RolloutCancelled RolloutState = "cancelled"
	RolloutDone      RolloutState = "done"
)

// Open reports whether the rollout can still go on.
func (s RolloutState) Open() bool {
	return s == RolloutRunning || s == RolloutPaused || s == RolloutStopped
}

// RolloutInstanceState is how far a rollout is with one of its instances.
type RolloutInstanceState string

// The states of a rollout's instance. Pending and asked ones are not
// finished; every other is.
const (
	RolloutPending   RolloutInstanceState = "pending"
	RolloutAsked     RolloutInstanceState = "asked"
	RolloutSucceeded RolloutInstanceState = "succeeded"
	RolloutSkipped   RolloutInstanceState = "skipped"
	RolloutRefused   RolloutInstanceState = "refused"
	RolloutFailed    RolloutInstanceState = "failed"
	RolloutNotAsked  RolloutInstanceState = "cancelled"
)

// ConfigRefreshable reports whether an instance's configuration can be
// refreshed: running, its agent connected from its VM.
func ConfigRefreshable(state State, vmID string, agent AgentStatus, agentVMID string) bool {
	return state == StateRunning && vmID != "" && agent == AgentConnected && agentVMID == vmID
}

// RolloutTally counts a rollout's instances (in its order) by state, in
// the order each state first appears: "2 succeeded, 1 asked, 3 pending".
func RolloutTally[E interface{ GetState() string }](instances []E) string {
	counts := map[string]int{}
	var order []string
	for _, e := range instances {
		st := e.GetState()
		if counts[st] == 0 {
			order = append(order, st)
		}
		counts[st]++
	}
	parts := make([]string, len(order))
	for i, st := range order {
		parts[i] = fmt.Sprintf("%d %s", counts[st], st)
	}
	return strings.Join(parts, ", ")
}
