package gateway

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bearer"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/pki"
)

// networkServer implements the public NetworkService by forwarding to the inventory.
type networkServer struct {
	inventoryv1.UnimplementedNetworkServiceServer
	g *Gateway
}

func (s networkServer) CreateNetwork(ctx context.Context, r *inventoryv1.CreateNetworkRequest) (*inventoryv1.Network, error) {
	return call(ctx, s.g, endpoints.NetworkCreate, r)
}

func (s networkServer) GetNetwork(ctx context.Context, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
	return call(ctx, s.g, endpoints.NetworkGet, r)
}

func (s networkServer) ListNetworks(ctx context.Context, r *inventoryv1.ListNetworksRequest) (*inventoryv1.ListNetworksResponse, error) {
	return call(ctx, s.g, endpoints.NetworkList, r)
}

func (s networkServer) UpdateNetwork(ctx context.Context, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
	return call(ctx, s.g, endpoints.NetworkUpdate, r)
}

func (s networkServer) DeleteNetwork(ctx context.Context, r *inventoryv1.DeleteNetworkRequest) (*emptypb.Empty, error) {
	return call(ctx, s.g, endpoints.NetworkDelete, r)
}

// templateServer implements the public TemplateService by forwarding to the inventory.
type templateServer struct {
	inventoryv1.UnimplementedTemplateServiceServer
	g *Gateway
}

func (s templateServer) CreateTemplate(ctx context.Context, r *inventoryv1.CreateTemplateRequest) (*inventoryv1.Template, error) {
	return call(ctx, s.g, endpoints.TemplateCreate, r)
}

func (s templateServer) GetTemplate(ctx context.Context, r *inventoryv1.GetTemplateRequest) (*inventoryv1.Template, error) {
	return call(ctx, s.g, endpoints.TemplateGet, r)
}

func (s templateServer) ListTemplates(ctx context.Context, r *inventoryv1.ListTemplatesRequest) (*inventoryv1.ListTemplatesResponse, error) {
	return call(ctx, s.g, endpoints.TemplateList, r)
}

func (s templateServer) UpdateTemplate(ctx context.Context, r *inventoryv1.UpdateTemplateRequest) (*inventoryv1.Template, error) {
	return call(ctx, s.g, endpoints.TemplateUpdate, r)
}

func (s templateServer) DeleteTemplate(ctx context.Context, r *inventoryv1.DeleteTemplateRequest) (*emptypb.Empty, error) {
	return call(ctx, s.g, endpoints.TemplateDelete, r)
}

// rolloutServer implements the public RolloutService: the provisioner
// starts a rollout (it chooses the instances and drives it); the inventory
// keeps it, and pauses, resumes and cancels it.
type rolloutServer struct {
	inventoryv1.UnimplementedRolloutServiceServer
	g *Gateway
}

func (s rolloutServer) CreateRollout(ctx context.Context, r *inventoryv1.CreateRolloutRequest) (*inventoryv1.Rollout, error) {
	return call(ctx, s.g, endpoints.RolloutStart, r)
}

func (s rolloutServer) GetRollout(ctx context.Context, r *inventoryv1.GetRolloutRequest) (*inventoryv1.Rollout, error) {
	return call(ctx, s.g, endpoints.RolloutGet, r)
}

func (s rolloutServer) ListRollouts(ctx context.Context, r *inventoryv1.ListRolloutsRequest) (*inventoryv1.ListRolloutsResponse, error) {
	return call(ctx, s.g, endpoints.RolloutList, r)
}

func (s rolloutServer) PauseRollout(ctx context.Context, r *inventoryv1.RolloutActionRequest) (*inventoryv1.Rollout, error) {
	return call(ctx, s.g, endpoints.RolloutPause, r)
}

func (s rolloutServer) ResumeRollout(ctx context.Context, r *inventoryv1.RolloutActionRequest) (*inventoryv1.Rollout, error) {
	return call(ctx, s.g, endpoints.RolloutResume, r)
}

func (s rolloutServer) CancelRollout(ctx context.Context, r *inventoryv1.RolloutActionRequest) (*inventoryv1.Rollout, error) {
	return call(ctx, s.g, endpoints.RolloutCancel, r)
}

// instanceServer implements the public InstanceService by forwarding to the inventory.
type instanceServer struct {
	inventoryv1.UnimplementedInstanceServiceServer
	g *Gateway
}

func (s instanceServer) CreateInstance(ctx context.Context, r *inventoryv1.CreateInstanceRequest) (*inventoryv1.Instance, error) {
	return call(ctx, s.g, endpoints.InstanceCreate, r)
}

// GetInstance answers from the copy this gateway read last, while it is
// fresh (see instanceCache), else from the inventory.
func (s instanceServer) GetInstance(ctx context.Context, r *inventoryv1.GetInstanceRequest) (*inventoryv1.Instance, error) {
	if in := s.g.instances.get(r.GetId()); in != nil {
		return in, nil
	}
	mark := s.g.instances.begin()
	in, err := call(ctx, s.g, endpoints.InstanceGet, r)
	if err == nil {
		s.g.instances.put(in, mark)
	}
	return in, err
}

// changed forgets this gateway's copy of instance id, which a call it
// forwarded has just changed (or may have): the caller's next read sees
// the change.
func (s instanceServer) changed(id string, in *inventoryv1.Instance, err error) (*inventoryv1.Instance, error) {
	s.g.instances.drop(id)
	return in, err
}

func (s instanceServer) ListInstances(ctx context.Context, r *inventoryv1.ListInstancesRequest) (*inventoryv1.ListInstancesResponse, error) {
	return call(ctx, s.g, endpoints.InstanceList, r)
}

func (s instanceServer) UpdateInstance(ctx context.Context, r *inventoryv1.UpdateInstanceRequest) (*inventoryv1.Instance, error) {
	in, err := call(ctx, s.g, endpoints.InstanceUpdate, r)
	return s.changed(r.GetInstance().GetId(), in, err)
}

func (s instanceServer) DeleteInstance(ctx context.Context, r *inventoryv1.DeleteInstanceRequest) (*inventoryv1.Instance, error) {
	in, err := call(ctx, s.g, endpoints.InstanceDelete, r)
	return s.changed(r.GetId(), in, err)
}

func (s instanceServer) lifecycle(ctx context.Context, id string, action vocab.Action) (*inventoryv1.Instance, error) {
	in, err := call(ctx, s.g, endpoints.LifecycleRequest, &inventoryv1.LifecycleRequest{Id: id, Action: string(action)})
	return s.changed(id, in, err)
}

func (s instanceServer) ProvisionInstance(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.lifecycle(ctx, r.GetId(), vocab.ActionProvision)
}

func (s instanceServer) DeprovisionInstance(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.lifecycle(ctx, r.GetId(), vocab.ActionDeprovision)
}

func (s instanceServer) ReprovisionInstance(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.lifecycle(ctx, r.GetId(), vocab.ActionReprovision)
}

// RefreshCertificate asks the provisioner, which alone commands agents, to
// have the instance's agent fetch its certificate again.
func (s instanceServer) RefreshCertificate(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.commandAgent(ctx, r, endpoints.CertificateRefresh)
}

// UpgradeAgent asks the provisioner to have the instance's agent replace
// itself with the manager's version.
func (s instanceServer) UpgradeAgent(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.commandAgent(ctx, r, endpoints.AgentUpgrade)
}

// RefreshConfiguration asks the provisioner to have the instance's agent
// write its template's files and environment again and restart the node
// software.
func (s instanceServer) RefreshConfiguration(ctx context.Context, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	return s.commandAgent(ctx, r, endpoints.ConfigRefresh)
}

// commandAgent asks the provisioner, which alone commands agents, at ep
// for something of the instance's agent.
func (s instanceServer) commandAgent(ctx context.Context, r *inventoryv1.InstanceActionRequest,
	ep endpoints.Endpoint[*inventoryv1.InstanceActionRequest, *inventoryv1.Instance]) (*inventoryv1.Instance, error) {
	if err := apierr.CheckID("id", r.GetId()); err != nil {
		return nil, apierr.GRPCStatus(ctx, s.g.log, err)
	}
	in, err := call(ctx, s.g, ep, r)
	return s.changed(r.GetId(), in, err)
}

// CreateInstanceJoinToken has the CA mint a join token for the operator
// (the CA decides whether the instance may have one: external, waiting for
// its agent) and adds what the agent starts with besides: the agent
// gateway's address and the CA bundle. The token is in this answer only.
func (s instanceServer) CreateInstanceJoinToken(ctx context.Context, r *inventoryv1.CreateInstanceJoinTokenRequest) (*inventoryv1.InstanceJoinToken, error) {
	if err := apierr.CheckID("id", r.GetId()); err != nil {
		return nil, apierr.GRPCStatus(ctx, s.g.log, err)
	}
	tok, err := call(ctx, s.g, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: r.GetId(), TtlSeconds: r.GetTtlSeconds()})
	if err != nil {
		return nil, err
	}
	ca, err := call(ctx, s.g, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil {
		return nil, err
	}
	return &inventoryv1.InstanceJoinToken{InstanceId: r.GetId(), Token: tok.GetToken(), ExpireTime: tok.GetExpireTime(),
		AgentGatewayAddr: s.g.deps.AgentGatewayAddr, CaCertificatePem: pki.AgentBundle(ca), VmId: tok.GetVmId()}, nil
}

// secretServer forwards to the secret broker; values go in and never come out.
type secretServer struct {
	secretsv1.UnimplementedSecretServiceServer
	g *Gateway
}

func (s secretServer) CreateSecret(ctx context.Context, r *secretsv1.CreateSecretRequest) (*secretsv1.Secret, error) {
	return call(ctx, s.g, endpoints.SecretCreate, r)
}

// ListSecrets lists an instance's secrets; below an operator, by name only.
func (s secretServer) ListSecrets(ctx context.Context, r *secretsv1.ListSecretsRequest) (*secretsv1.ListSecretsResponse, error) {
	out, err := call(ctx, s.g, endpoints.SecretList, r)
	if err != nil || vocab.Role(userFrom(ctx).GetRole()).AtLeast(vocab.RoleOperator) {
		return out, err
	}
	names := &secretsv1.ListSecretsResponse{}
	for _, sec := range out.GetSecrets() {
		names.Secrets = append(names.Secrets, &secretsv1.Secret{InstanceId: sec.GetInstanceId(), Name: sec.GetName()})
	}
	return names, nil
}

func (s secretServer) DeleteSecret(ctx context.Context, r *secretsv1.DeleteSecretRequest) (*emptypb.Empty, error) {
	return call(ctx, s.g, endpoints.SecretDelete, r)
}

// SetFleetSecret stores a fleet secret. One that names networks, or the
// update time it was read at, is refused while a secret broker that would
// ignore them is listed (see brokersLacking).
func (s secretServer) SetFleetSecret(ctx context.Context, r *secretsv1.SetFleetSecretRequest) (*secretsv1.FleetSecret, error) {
	if len(r.GetNetworkIds()) > 0 {
		if err := s.brokersLacking(ctx, vocab.ManagerFeatureFleetSecretNetworks, "networkIds",
			"does not keep a fleet secret's networks, and would release it to instances in any network: name networks once every host is upgraded (flotilla cluster status), or leave them out"); err != nil {
			return nil, err
		}
	}
	if r.GetIfUpdateTime() != nil {
		if err := s.brokersLacking(ctx, vocab.ManagerFeatureFleetSecretIfUpdateTime, "ifUpdateTime",
			"would not check it, and would write over a change made since the secret was read: give it once every host is upgraded (flotilla cluster status), or leave it out"); err != nil {
			return nil, err
		}
	}
	return call(ctx, s.g, endpoints.FleetSecretPut, r)
}

// brokersLacking refuses a request's field while a secret broker of a
// release before feature is listed among the managers (a cluster being
// upgraded host by host): it could take the request, and would ignore the
// field. why says what that broker would do, and what to do meanwhile.
func (s secretServer) brokersLacking(ctx context.Context, feature vocab.ManagerFeature, field, why string) error {
	ctx, cancel := context.WithTimeout(ctx, s.g.requestTimeout)
	defer cancel()
	old, err := membership.Lacking(ctx, s.g.js, subjects.Secrets, string(feature))
	if err != nil {
		e := apierr.Unavailable("%s: cannot tell now whether every secret broker takes it (the managers' list: %v); try again shortly", field, err)
		e.Err = err
		return e
	}
	if len(old) == 0 {
		return nil
	}
	var which []string
	for _, m := range old {
		which = append(which, fmt.Sprintf("%s (version %s)", m.GetHost(), cmp.Or(m.GetVersion(), "unknown")))
	}
	e := apierr.Conflict(apierr.ReasonInvalidState, "%s: the secret broker on %s %s", field, strings.Join(which, ", "), why)
	e.Field = field
	return e
}

// ListFleetSecrets lists the fleet secrets; below an operator, by name and
// templates only.
func (s secretServer) ListFleetSecrets(ctx context.Context, r *secretsv1.ListFleetSecretsRequest) (*secretsv1.ListFleetSecretsResponse, error) {
	out, err := call(ctx, s.g, endpoints.FleetSecretList, r)
	if err != nil || vocab.Role(userFrom(ctx).GetRole()).AtLeast(vocab.RoleOperator) {
		return out, err
	}
	names := &secretsv1.ListFleetSecretsResponse{}
	for _, sec := range out.GetSecrets() {
		names.Secrets = append(names.Secrets, fleetSecretNamed(sec))
	}
	return names, nil
}

// GetFleetSecret reads a fleet secret's metadata; below an operator, its
// name and templates only, as ListFleetSecrets.
func (s secretServer) GetFleetSecret(ctx context.Context, r *secretsv1.GetFleetSecretRequest) (*secretsv1.FleetSecret, error) {
	out, err := call(ctx, s.g, endpoints.FleetSecretGet, r)
	if err != nil || vocab.Role(userFrom(ctx).GetRole()).AtLeast(vocab.RoleOperator) {
		return out, err
	}
	return fleetSecretNamed(out), nil
}

// fleetSecretNamed is what a user below an operator sees of a fleet
// secret: its name and templates.
func fleetSecretNamed(sec *secretsv1.FleetSecret) *secretsv1.FleetSecret {
	return &secretsv1.FleetSecret{Name: sec.GetName(), TemplateIds: sec.GetTemplateIds()}
}

func (s secretServer) DeleteFleetSecret(ctx context.Context, r *secretsv1.DeleteFleetSecretRequest) (*emptypb.Empty, error) {
	return call(ctx, s.g, endpoints.FleetSecretDelete, r)
}

// caServer forwards to the fleet CA.
type caServer struct {
	cav1.UnimplementedCAServiceServer
	g *Gateway
}

func (s caServer) GetCACertificate(ctx context.Context, r *cav1.GetCACertificateRequest) (*cav1.CACertificate, error) {
	return call(ctx, s.g, endpoints.CACertificateGet, r)
}

// authServer implements login and logout.
type authServer struct {
	authv1.UnimplementedAuthServiceServer
	g *Gateway
}

// Login is throttled per client address as well as per user name (by the
// inventory): an address with many failed logins waits before its next.
func (s authServer) Login(ctx context.Context, r *authv1.LoginRequest) (*authv1.LoginResponse, error) {
	src := clientAddr(ctx)
	if wait := s.g.logins.RetryAfter(src); wait > 0 {
		return nil, apierr.GRPCStatus(ctx, s.g.log, apierr.TooManyAttempts(wait, "too many failed logins from %s: try again in %v", src, wait))
	}
	resp, err := call(ctx, s.g, endpoints.TokenLogin, r)
	if status.Code(err) == codes.Unauthenticated {
		s.g.logins.Fail(src)
	}
	return resp, err
}

func (s authServer) Logout(ctx context.Context, _ *authv1.LogoutRequest) (*emptypb.Empty, error) {
	token := tokenFrom(ctx)
	if token == "" {
		return nil, apierr.GRPCStatus(ctx, s.g.log, apierr.Unauthenticated("missing bearer token"))
	}
	out, err := call(ctx, s.g, endpoints.TokenRevoke, &authv1.RevokeTokenRequest{Token: token})
	if err == nil {
		s.g.tokens.drop(bearer.ID(token)) // here at once; elsewhere when the record goes by
	}
	return out, err
}

// cloudAccountServer implements the public CloudAccountService: the
// inventory keeps the accounts, the provisioner verifies them.
type cloudAccountServer struct {
	inventoryv1.UnimplementedCloudAccountServiceServer
	g *Gateway
}

func (s cloudAccountServer) CreateCloudAccount(ctx context.Context, r *inventoryv1.CreateCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
	return call(ctx, s.g, endpoints.CloudAccountCreate, r)
}

func (s cloudAccountServer) GetCloudAccount(ctx context.Context, r *inventoryv1.GetCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
	return call(ctx, s.g, endpoints.CloudAccountGet, r)
}

func (s cloudAccountServer) ListCloudAccounts(ctx context.Context, r *inventoryv1.ListCloudAccountsRequest) (*inventoryv1.ListCloudAccountsResponse, error) {
	return call(ctx, s.g, endpoints.CloudAccountList, r)
}

func (s cloudAccountServer) UpdateCloudAccount(ctx context.Context, r *inventoryv1.UpdateCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
	return call(ctx, s.g, endpoints.CloudAccountUpdate, r)
}

func (s cloudAccountServer) DeleteCloudAccount(ctx context.Context, r *inventoryv1.DeleteCloudAccountRequest) (*emptypb.Empty, error) {
	return call(ctx, s.g, endpoints.CloudAccountDelete, r)
}

func (s cloudAccountServer) VerifyCloudAccount(ctx context.Context, r *inventoryv1.VerifyCloudAccountRequest) (*inventoryv1.CloudAccountVerification, error) {
	return call(ctx, s.g, endpoints.CloudAccountVerify, r)
}

// systemServer reports health.
type systemServer struct {
	systemv1.UnimplementedSystemServiceServer
	g *Gateway
}

// GetStatus reports the health of every service (checkStatus), one round
// of pings for every caller within statusFresh.
func (s systemServer) GetStatus(ctx context.Context, _ *systemv1.GetStatusRequest) (*systemv1.Status, error) {
	return s.g.status.get(ctx, s.g.checkStatus), nil
}

// checkStatus pings every service over the bus, in parallel, with a short
// timeout.
func (g *Gateway) checkStatus(ctx context.Context) *systemv1.Status {
	st := &systemv1.Status{Status: "ok", Version: g.version, Time: timestamppb.Now()}
	comps := make([]*systemv1.ComponentStatus, len(subjects.Services))
	var wg sync.WaitGroup
	for i, name := range subjects.Services {
		c := &systemv1.ComponentStatus{Name: name, Status: "ok"}
		comps[i] = c
		if name == subjects.Gateway {
			continue // answering this request is proof enough
		}
		wg.Go(func() {
			if err := g.ping(ctx, c.Name); err != nil {
				c.Status, c.Message = "unavailable", err.Error()
			}
		})
	}
	wg.Wait()
	var down []string
	for _, c := range comps {
		if c.Status != "ok" {
			st.Status = "degraded"
			down = append(down, c.Name+": "+c.Message)
		}
	}
	st.Components = comps
	g.noteStatus(ctx, st.Status, down)
	return st
}

// noteStatus logs the gateway's status when it changes: a warning naming
// the services that did not answer when it turns degraded (a load balancer
// takes the gateway out on it, and says when; this says why), and a line
// when it is ok again. A status that stays the same is not logged again.
func (g *Gateway) noteStatus(ctx context.Context, status string, down []string) {
	was, _ := g.lastStatus.Swap(status).(string)
	switch {
	case status == was, status == "ok" && was == "":
	case status == "ok":
		g.log.InfoContext(ctx, "status ok again: every service answers")
	default:
		g.log.WarnContext(ctx, "status "+status+": load balancers take this gateway out until every service answers",
			"unavailable", strings.Join(down, "; "))
	}
}

func registerGRPC(s *grpc.Server, g *Gateway) {
	inventoryv1.RegisterNetworkServiceServer(s, networkServer{g: g})
	inventoryv1.RegisterCloudAccountServiceServer(s, cloudAccountServer{g: g})
	inventoryv1.RegisterTemplateServiceServer(s, templateServer{g: g})
	inventoryv1.RegisterInstanceServiceServer(s, instanceServer{g: g})
	inventoryv1.RegisterRolloutServiceServer(s, rolloutServer{g: g})
	authv1.RegisterAuthServiceServer(s, authServer{g: g})
	systemv1.RegisterSystemServiceServer(s, systemServer{g: g})
	secretsv1.RegisterSecretServiceServer(s, secretServer{g: g})
	cav1.RegisterCAServiceServer(s, caServer{g: g})
	authv1.RegisterUserServiceServer(s, userServer{g: g})
	authv1.RegisterTokenServiceServer(s, tokenServer{g: g})
	auditv1.RegisterAuditServiceServer(s, auditServer{g: g})
}
