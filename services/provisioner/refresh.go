package provisioner

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/provisioner/driver"
)

// refreshCertificate is an operator's :refresh-certificate: the running
// instance's agent fetches its custom certificate and key again (the CA
// reads an AWS Secrets Manager key anew), or renews its fleet CA or ACME
// certificate now, for the instance's names as they are now (a change of
// ssl.sans or ssl.domains takes effect so; an ACME order is sent as the
// network's settings are now, its directory and contact too); the node
// software serves the new pair without a restart. An ACME order answered
// by HTTP-01 in a cloud has its port opened first (openChallengePort): the
// network may have changed to it since the VM was placed. Only this
// one command can be asked for: the gateway never commands agents itself.
func (s *Service) refreshCertificate(ctx context.Context, actor vocab.Actor, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	in, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: r.GetId()})
	if err != nil {
		return nil, err
	}
	n, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: in.GetNetworkId()})
	if err != nil {
		return nil, err
	}
	if vocab.HTTPSStrategy(n.GetHttpsStrategy()) == vocab.HTTPSNone {
		return nil, apierr.Invalid("id", "instance %q is on network %q, whose httpsStrategy is %q: it serves no certificate",
			in.GetName(), n.GetName(), n.GetHttpsStrategy())
	}
	if vocab.State(in.GetState()) != vocab.StateRunning {
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: its certificate is refreshed while it is %s",
			in.GetName(), in.GetState(), vocab.StateRunning)
	}
	if err := s.openChallengePort(ctx, in, n); err != nil {
		return nil, err
	}
	cmd := &agentv1.Command{Id: "refresh-certificate-" + uuid.NewString(),
		Action: &agentv1.Command_RefreshCertificate{RefreshCertificate: &agentv1.RefreshCertificate{Acme: acmeOrder(in, n)}}}
	if err := s.commandAgent(ctx, in, "", cmd); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "certificate refresh sent to the agent", "instance_id", in.GetId(), "actor", actor)
	return in, nil
}

// openChallengePort opens, before an ACME order by HTTP-01 is sent to the
// agent of in, the challenge's port in the firewall the cloud's driver
// made for its network (driver.Opener): the network may have changed to
// HTTP-01, or to another port, since its VMs were placed. Nothing is
// asked of the cloud for another certificate.
func (s *Service) openChallengePort(ctx context.Context, in *inventoryv1.Instance, n *inventoryv1.Network) error {
	t, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()})
	if err != nil {
		return err
	}
	place := networkOf(t, n)
	if place.ChallengePort == 0 {
		return nil
	}
	drv, err := s.driverFor(ctx, t, n)
	if err != nil {
		return err
	}
	opener, ok := drv.(driver.Opener)
	if !ok {
		return nil
	}
	if err := opener.OpenNetwork(ctx, place); err != nil {
		return fmt.Errorf("open the ACME HTTP-01 port %d of network %q: %w", place.ChallengePort, n.GetName(), err)
	}
	return nil
}

// refreshConfiguration is an operator's :refresh-configuration: the
// running instance's agent writes the file and env actions of the
// instance's template as it is now again, their secrets read anew, and
// restarts the node software (agent.v1.RefreshConfiguration). The agent
// itself refuses a template whose scripts or packages differ from those
// its VM's setup ran; that result, like its success, is its progress.
func (s *Service) refreshConfiguration(ctx context.Context, actor vocab.Actor, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	in, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: r.GetId()})
	if err != nil {
		return nil, err
	}
	if vocab.State(in.GetState()) != vocab.StateRunning {
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: its configuration is refreshed while it is %s",
			in.GetName(), in.GetState(), vocab.StateRunning)
	}
	if !agentOnVM(in) {
		return nil, agentNotConnected(in, "its configuration is refreshed while it is")
	}
	t, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()})
	if err != nil {
		return nil, err
	}
	cmd := &agentv1.Command{Id: "refresh-configuration-" + uuid.NewString(),
		Action: &agentv1.Command_RefreshConfiguration{RefreshConfiguration: &agentv1.RefreshConfiguration{SetupActions: t.GetSetupActions()}}}
	if err := s.commandAgent(ctx, in, vocab.StepRefreshingConfiguration, cmd); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "configuration refresh sent to the agent", "instance_id", in.GetId(), "template_id", t.GetId(),
		"template_version", t.GetVersion(), "actor", actor)
	return in, nil
}
