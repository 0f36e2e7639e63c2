package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/failpoint"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/inventory/domain"
	"flotilla.dev/flotilla/services/provisioner/driver"
)

// stepError is a step that failed for a reason retrying will not fix by
// itself: the instance goes to "failed" with the step and the reason.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func fail(step string, err error) error { return &stepError{step: step, err: err} }

// reconcile moves one instance towards its desired state. It returns an
// error only for transient trouble (the work is retried); a failed step is
// recorded on the instance and the work is done.
func (s *Service) reconcile(ctx context.Context, id string) error {
	in, err := s.instance(ctx, id)
	if apierr.Is(err, apierr.KindNotFound) {
		return nil // deleted meanwhile
	}
	if err != nil {
		return err
	}
	switch in.GetDesiredState() {
	case domain.DesiredProvisioned:
		if in.GetState() == domain.StateRunning && !in.GetReprovisionPending() {
			return nil
		}
		err = s.provision(ctx, in)
	case domain.DesiredDeprovisioned:
		if in.GetState() == domain.StateDeprovisioned || in.GetState() == domain.StateCreated {
			return nil
		}
		err = s.deprovision(ctx, in)
	case domain.DesiredDeleted:
		err = s.remove(ctx, in)
	default:
		return nil
	}
	var se *stepError
	if errors.As(err, &se) {
		s.log.WarnContext(ctx, "step failed", "instance", id, "step", se.step, "error", se.err)
		_, rerr := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateFailed,
			StateDetail: se.Error(), Event: "failed"})
		return rerr
	}
	return err
}

func (s *Service) provision(ctx context.Context, in *inventoryv1.Instance) error {
	id := in.GetId()
	tmpl, netw, err := s.placement(ctx, in)
	if err != nil {
		return err
	}
	drv, ok := s.drivers[tmpl.GetProvider()]
	if !ok {
		return fail(domain.StepAllocatingDisk, fmt.Errorf("provider %q is not supported yet", tmpl.GetProvider()))
	}
	if in.GetReprovisionPending() {
		if in.GetVmId() != "" {
			if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateDeprovisioning, StateDetail: domain.StepStoppingVM}); err != nil {
				return err
			}
			if err := drv.DeleteVM(ctx, in.GetVmId()); err != nil {
				return fail(domain.StepStoppingVM, err)
			}
		}
		if in, err = s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateProvisioning, StateDetail: domain.StepAllocatingDisk,
			Event: "vm-terminated", Clear: []string{"vm_id", "addresses", "agent", "reprovision"}}); err != nil {
			return err
		}
	}

	// Data disk: choose and record its id first, then make it exist.
	disk := in.GetDataDisk()
	if disk.GetId() == "" {
		disk = &inventoryv1.DataDisk{Id: "disk-" + uuid.NewString(), SizeGb: tmpl.GetDataDiskGb()}
	}
	if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateProvisioning, StateDetail: domain.StepAllocatingDisk, DataDisk: disk}); err != nil {
		return err
	}
	failpoint.Hit("provisioner.disk-recorded")
	if _, err := drv.EnsureDisk(ctx, driver.DiskSpec{ID: disk.GetId(), InstanceID: id, SizeGB: disk.GetSizeGb(), Tags: tmpl.GetTags()}); err != nil {
		return fail(domain.StepAllocatingDisk, err)
	}
	failpoint.Hit("provisioner.disk-allocated")

	// VM: likewise.
	vmID := in.GetVmId()
	if vmID == "" {
		vmID = "vm-" + uuid.NewString()
	}
	if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateProvisioning, StateDetail: domain.StepLaunchingVM,
		VmId: vmID, Event: "disk-allocated"}); err != nil {
		return err
	}
	failpoint.Hit("provisioner.vm-recorded")
	token := &cav1.JoinToken{}
	if err := natsx.Request(ctx, s.d.NATS, subjects.Endpoint(subjects.CA, subjects.NounJoinToken, subjects.VerbCreate),
		&cav1.CreateJoinTokenRequest{InstanceId: id}, token); err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	caCert := &cav1.CACertificate{}
	if err := natsx.Request(ctx, s.d.NATS, subjects.Endpoint(subjects.CA, subjects.NounCertificate, subjects.VerbGet),
		&cav1.GetCACertificateRequest{}, caCert); err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	vm, err := drv.EnsureVM(ctx, driver.VMSpec{
		ID: vmID, InstanceID: id, InstanceName: in.GetName(), DiskID: disk.GetId(), DiskSizeGB: disk.GetSizeGb(),
		Image: tmpl.GetImage(), InstanceType: tmpl.GetInstanceType(), Tags: tmpl.GetTags(),
		Bootstrap: driver.Bootstrap{GatewayAddr: s.d.AgentGatewayAddr, JoinToken: token.GetToken(), CAPEM: caCert.GetCertificatePem()},
	})
	if err != nil {
		return fail(domain.StepLaunchingVM, err)
	}
	failpoint.Hit("provisioner.vm-launched")
	addrs := &inventoryv1.Addresses{PrivateIp: vm.PrivateIP, PrivateDns: vm.PrivateDNS, PublicIp: vm.PublicIP}
	if in.GetAddresses().GetUrl() != "" && in.GetVmId() == vmID {
		addrs.Url = in.GetAddresses().GetUrl()
	}
	if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateProvisioning, StateDetail: domain.StepWaitingForAgent,
		Addresses: addrs, Event: "vm-launched"}); err != nil {
		return err
	}

	// Agent: wait for it, then have it set up, install and start the node software.
	if _, err := s.waitFor(ctx, id, s.d.AgentTimeout, func(in *inventoryv1.Instance) (bool, error) {
		return in.GetAgent().GetStatus() == domain.AgentConnected, nil
	}); err != nil {
		if errors.Is(err, errSuperseded) {
			return nil
		}
		return fail(domain.StepWaitingForAgent, err)
	}
	if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateProvisioning, StateDetail: domain.StepRunningSetup}); err != nil {
		return err
	}
	cmd := &agentv1.Command{Id: vmID, Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{
		InstanceName: in.GetName(), SetupActions: tmpl.GetSetupActions(), NodeVersion: nodeVersion(tmpl),
		HttpsStrategy: netw.GetHttpsStrategy(), Sans: in.GetSsl().GetSans(),
	}}}
	if err := s.sendCommand(ctx, id, cmd, s.d.AgentTimeout); err != nil {
		return fail(domain.StepRunningSetup, err)
	}
	failpoint.Hit("provisioner.command-sent")
	// Running means reachable: the node software's URL (from the agent's
	// next heartbeat) is known too.
	_, err = s.waitFor(ctx, id, s.d.SetupTimeout, func(in *inventoryv1.Instance) (bool, error) {
		return in.GetAgentProgress() == "done/"+domain.ProgressSucceeded && in.GetAddresses().GetUrl() != "", nil
	})
	if errors.Is(err, errSuperseded) {
		return nil // e.g. the agent's failure, already recorded
	}
	if err != nil {
		return fail(domain.StepRunningSetup, err)
	}
	_, err = s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: domain.StateRunning, Event: "running"})
	return err
}

func nodeVersion(t *inventoryv1.Template) string {
	if t.GetImage() != "" {
		return t.GetImage()
	}
	return "builtin"
}

// deprovision stops the VM and keeps the disk.
func (s *Service) deprovision(ctx context.Context, in *inventoryv1.Instance) error {
	if err := s.stopVM(ctx, in); err != nil {
		return err
	}
	_, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: domain.StateDeprovisioned,
		Event: "deprovisioned", Clear: []string{"vm_id", "addresses", "agent", "reprovision"}})
	return err
}

func (s *Service) stopVM(ctx context.Context, in *inventoryv1.Instance) error {
	if in.GetVmId() == "" {
		return nil
	}
	drv, err := s.driverOf(ctx, in)
	if err != nil {
		return err
	}
	if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: in.GetState(), StateDetail: domain.StepStoppingVM}); err != nil {
		return err
	}
	if err := drv.DeleteVM(ctx, in.GetVmId()); err != nil {
		return fail(domain.StepStoppingVM, err)
	}
	return nil
}

// remove destroys the VM and the disk, then the record.
func (s *Service) remove(ctx context.Context, in *inventoryv1.Instance) error {
	if err := s.stopVM(ctx, in); err != nil {
		return err
	}
	if in.GetDataDisk().GetId() != "" {
		drv, err := s.driverOf(ctx, in)
		if err != nil {
			return err
		}
		if _, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: domain.StateDeleting, StateDetail: domain.StepDeletingDisk,
			Clear: []string{"vm_id", "addresses", "agent"}}); err != nil {
			return err
		}
		if err := drv.DeleteDisk(ctx, in.GetDataDisk().GetId()); err != nil {
			return fail(domain.StepDeletingDisk, err)
		}
	}
	_, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: domain.StateDeleted, Remove: true})
	return err
}

func (s *Service) driverOf(ctx context.Context, in *inventoryv1.Instance) (driver.Driver, error) {
	t := &inventoryv1.Template{}
	if err := s.inventory(ctx, subjects.NounTemplate, subjects.VerbGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()}, t); err != nil {
		return nil, err
	}
	drv, ok := s.drivers[t.GetProvider()]
	if !ok {
		return nil, fail(domain.StepStoppingVM, fmt.Errorf("provider %q is not supported yet", t.GetProvider()))
	}
	return drv, nil
}

func (s *Service) placement(ctx context.Context, in *inventoryv1.Instance) (*inventoryv1.Template, *inventoryv1.Network, error) {
	t := &inventoryv1.Template{}
	if err := s.inventory(ctx, subjects.NounTemplate, subjects.VerbGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()}, t); err != nil {
		return nil, nil, err
	}
	n := &inventoryv1.Network{}
	if err := s.inventory(ctx, subjects.NounNetwork, subjects.VerbGet, &inventoryv1.GetNetworkRequest{Id: in.GetNetworkId()}, n); err != nil {
		return nil, nil, err
	}
	return t, n, nil
}

func (s *Service) instance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	in := &inventoryv1.Instance{}
	return in, s.inventory(ctx, subjects.NounInstance, subjects.VerbGet, &inventoryv1.GetInstanceRequest{Id: id}, in)
}

// inventory calls an inventory endpoint, mapping its errors to apierr kinds.
func (s *Service) inventory(ctx context.Context, noun, verb string, req, resp proto.Message) error {
	return rpc.ClientError(subjects.Inventory, natsx.Request(ctx, s.d.NATS, subjects.Endpoint(subjects.Inventory, noun, verb), req, resp))
}

// record writes observed state through the inventory, retrying while the
// inventory is briefly unreachable.
func (s *Service) record(ctx context.Context, r *inventoryv1.RecordStateRequest) (*inventoryv1.Instance, error) {
	hdr := nats.Header{}
	hdr.Set(bus.HeaderActor, Actor)
	backoff := 100 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := &inventoryv1.Instance{}
		err := rpc.ClientError(subjects.Inventory,
			natsx.Request(ctx, s.d.NATS, subjects.Endpoint(subjects.Inventory, subjects.NounLifecycle, subjects.VerbRecord), r, out, hdr))
		switch {
		case err == nil:
			return out, nil
		case !apierr.Is(err, apierr.KindUnavailable):
			return nil, err
		case time.Now().After(deadline) || ctx.Err() != nil:
			return nil, fmt.Errorf("record state of %s: %w", r.GetId(), err)
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 2*time.Second)
	}
}

// errSuperseded says the operator asked for something else while the
// provisioner waited: the newer work item takes over.
var errSuperseded = errors.New("superseded by a newer request")

// waitFor polls the instance until ok says so or the timeout passes. It
// gives up with errSuperseded as soon as the instance is no longer being
// provisioned (a failure the agent reported, or a newer operator request),
// so a stale wait never holds the instance's lock.
func (s *Service) waitFor(ctx context.Context, id string, timeout time.Duration, ok func(*inventoryv1.Instance) (bool, error)) (*inventoryv1.Instance, error) {
	deadline := time.Now().Add(timeout)
	for {
		in, err := s.instance(ctx, id)
		if apierr.Is(err, apierr.KindNotFound) {
			return nil, errSuperseded
		}
		if err == nil {
			if in.GetDesiredState() != domain.DesiredProvisioned || in.GetState() != domain.StateProvisioning {
				return in, errSuperseded
			}
			done, cerr := ok(in)
			if cerr != nil {
				return nil, cerr
			}
			if done {
				return in, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("timed out after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(s.d.PollInterval):
		}
	}
}

// sendCommand delivers a command to the instance's agent through whichever
// agent gateway node it is connected to, retrying while it is not connected.
func (s *Service) sendCommand(ctx context.Context, id string, cmd *agentv1.Command, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := natsx.Request(ctx, s.d.NATS, subjects.AgentCommand(id), cmd, nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("deliver command to agent: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
