package provisioner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/google/uuid"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/failpoint"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/provisioner/driver"
)

// stepError is a step that failed for a reason retrying will not fix by
// itself: the instance goes to "failed" with the step and the reason.
type stepError struct {
	step vocab.Step
	err  error
}

func (e *stepError) Error() string { return vocab.Failure(e.step, e.err.Error()) }
func (e *stepError) Unwrap() error { return e.err }

func fail(step vocab.Step, err error) error { return &stepError{step: step, err: err} }

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
	switch vocab.Desired(in.GetDesiredState()) {
	case vocab.DesiredProvisioned:
		if vocab.State(in.GetState()) == vocab.StateRunning && !in.GetReprovisionPending() {
			return nil
		}
		err = s.provision(ctx, in)
	case vocab.DesiredDeprovisioned:
		if vocab.State(in.GetState()).AtRest() {
			return nil
		}
		err = s.deprovision(ctx, in)
	case vocab.DesiredDeleted:
		err = s.remove(ctx, in)
	default:
		return nil
	}
	var se *stepError
	if errors.As(err, &se) {
		s.log.WarnContext(ctx, "step failed", "instance", id, "step", se.step, "error", se.err)
		_, rerr := s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: string(vocab.StateFailed),
			StateDetail: se.Error(), Event: string(vocab.VerbFailed)})
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
	drv, err := s.driverFor(ctx, tmpl, netw)
	if err != nil {
		return fail(vocab.StepAllocatingDisk, err)
	}
	place := networkOf(tmpl, netw)
	if in.GetReprovisionPending() {
		if in.GetVmId() != "" {
			if _, err := s.record(ctx, step(id, vocab.StateDeprovisioning, vocab.StepStoppingVM)); err != nil {
				return err
			}
			s.releaseAgent(ctx, in, "the instance is reprovisioned onto a new VM")
			if err := drv.DeleteVM(ctx, in.GetVmId()); err != nil {
				return fail(vocab.StepStoppingVM, err)
			}
		}
		r := step(id, vocab.StateProvisioning, vocab.StepAllocatingDisk)
		r.Event, r.Clear = string(vocab.VerbVMTerminated), vocab.Clear(vocab.ClearVMID, vocab.ClearAddresses, vocab.ClearAgent, vocab.ClearReprovision)
		if in, err = s.record(ctx, r); err != nil {
			return err
		}
	}

	// Data disk: choose and record its id first, then make it exist.
	disk := in.GetDataDisk()
	if disk.GetId() == "" {
		disk = &inventoryv1.DataDisk{Id: "disk-" + uuid.NewString(), SizeGb: tmpl.GetDataDiskGb()}
	}
	r := step(id, vocab.StateProvisioning, vocab.StepAllocatingDisk)
	r.DataDisk = disk
	if _, err := s.record(ctx, r); err != nil {
		return err
	}
	failpoint.Hit("provisioner.disk-recorded")
	made, err := drv.EnsureDisk(ctx, driver.DiskSpec{ID: disk.GetId(), InstanceID: id, SizeGB: disk.GetSizeGb(), Tags: tmpl.GetTags(), Network: place})
	if err != nil {
		return fail(vocab.StepAllocatingDisk, err)
	}
	if made.ID != disk.GetId() {
		// The cloud's own id (an EBS volume id) replaces the one chosen:
		// the driver finds the disk by either.
		disk = &inventoryv1.DataDisk{Id: made.ID, SizeGb: disk.GetSizeGb()}
		r := step(id, vocab.StateProvisioning, vocab.StepAllocatingDisk)
		r.DataDisk = disk
		if _, err := s.record(ctx, r); err != nil {
			return err
		}
	}
	failpoint.Hit("provisioner.disk-allocated")

	// VM: likewise.
	vmID := in.GetVmId()
	if vmID == "" {
		vmID = "vm-" + uuid.NewString()
	}
	r = step(id, vocab.StateProvisioning, vocab.StepLaunchingVM)
	r.VmId, r.Event = vmID, string(vocab.VerbDiskAllocated)
	if _, err := s.record(ctx, r); err != nil {
		return err
	}
	failpoint.Hit("provisioner.vm-recorded")
	token, err := rpc.Call(ctx, s.bus, endpoints.JoinTokenCreate, &cav1.CreateJoinTokenRequest{InstanceId: id})
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	caCert, err := rpc.Call(ctx, s.bus, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	vm, err := drv.EnsureVM(ctx, driver.VMSpec{
		ID: vmID, InstanceID: id, InstanceName: in.GetName(), DiskID: disk.GetId(), DiskSizeGB: disk.GetSizeGb(),
		Image: tmpl.GetImage(), InstanceType: tmpl.GetInstanceType(), Tags: tmpl.GetTags(),
		Bootstrap: driver.Bootstrap{GatewayAddr: s.d.AgentGatewayAddr, JoinToken: token.GetToken(), CAPEM: pki.AgentBundle(caCert),
			AgentURL: s.d.AgentURL, AgentSHA256: s.d.AgentSHA256, ManagerVersion: s.d.Version},
		Network: place, InstanceProfile: tmpl.GetInstanceProfile(), SSHKeyName: tmpl.GetSshKeyName(),
		Launched: func(ctx context.Context, cloudID string) error {
			if cloudID == vmID {
				return nil
			}
			// The cloud's id replaces the one chosen at once: the VM's
			// agent may join while the VM is still being set up.
			r := step(id, vocab.StateProvisioning, vocab.StepLaunchingVM)
			r.VmId = cloudID
			if _, err := s.record(ctx, r); err != nil {
				return err
			}
			vmID = cloudID
			return nil
		},
	})
	if err != nil {
		return fail(vocab.StepLaunchingVM, err)
	}
	failpoint.Hit("provisioner.vm-launched")
	addrs := &inventoryv1.Addresses{PrivateIp: vm.PrivateIP, PrivateDns: vm.PrivateDNS, PublicIp: vm.PublicIP, PublicDns: vm.PublicDNS, Hostname: vm.Hostname}
	if in.GetAddresses().GetUrl() != "" && in.GetVmId() == vm.ID {
		addrs.Url = in.GetAddresses().GetUrl()
	}
	r = step(id, vocab.StateProvisioning, vocab.StepWaitingForAgent)
	r.Addresses, r.Event = addrs, string(vocab.VerbVMLaunched)
	if vm.ID != vmID {
		// The cloud's own id (an EC2 instance id) replaces the one chosen:
		// the driver finds the VM by either.
		r.VmId, vmID = vm.ID, vm.ID
	}
	if _, err := s.record(ctx, r); err != nil {
		return err
	}

	// Agent: wait for the new VM's own (an earlier VM's may still be
	// connected), then have it set up, install and start the node software.
	if _, err := s.waitFor(ctx, id, s.d.AgentTimeout, func(in *inventoryv1.Instance) (bool, error) {
		a := in.GetAgent()
		return vocab.AgentStatus(a.GetStatus()) == vocab.AgentConnected && a.GetVmId() == vmID, nil
	}); err != nil {
		if errors.Is(err, errSuperseded) {
			return nil
		}
		return fail(vocab.StepWaitingForAgent, err)
	}
	if _, err := s.record(ctx, step(id, vocab.StateProvisioning, vocab.StepRunningSetup)); err != nil {
		return err
	}
	cmd := &agentv1.Command{Id: vmID, Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{
		InstanceName: in.GetName(), SetupActions: tmpl.GetSetupActions(), NodeVersion: nodeVersion(tmpl),
		HttpsStrategy: netw.GetHttpsStrategy(), Sans: in.GetSsl().GetSans(), NodePort: place.NodePort,
		Acme: acmeOrder(in, netw), NodeHost: nodeHost(vm),
	}}}
	if err := s.sendCommand(ctx, id, cmd, s.d.AgentTimeout); err != nil {
		return fail(vocab.StepRunningSetup, err)
	}
	failpoint.Hit("provisioner.command-sent")
	// Running means reachable: the node software's URL (from the agent's
	// next heartbeat) is known too.
	_, err = s.waitFor(ctx, id, s.d.SetupTimeout, func(in *inventoryv1.Instance) (bool, error) {
		return in.GetAgentProgress() == vocab.AgentProgress(vocab.StepDone, vocab.ProgressSucceeded) && in.GetAddresses().GetUrl() != "", nil
	})
	if errors.Is(err, errSuperseded) {
		return nil // e.g. the agent's failure, already recorded
	}
	if err != nil {
		return fail(vocab.StepRunningSetup, err)
	}
	_, err = s.record(ctx, &inventoryv1.RecordStateRequest{Id: id, State: string(vocab.StateRunning), Event: string(vocab.VerbRunning),
		TemplateVersion: tmpl.GetVersion()})
	return err
}

// nodeHost is the host clients reach a cloud VM's node software at: its
// DNS name, else its public address, else its private one. A VM on this
// machine (local) has none: its node listens on loopback, where its
// clients are.
func nodeHost(vm driver.VM) string {
	h := cmp.Or(vm.Hostname, vm.PublicIP, vm.PrivateIP)
	if ip := net.ParseIP(h); h == "localhost" || ip != nil && ip.IsLoopback() {
		return ""
	}
	return h
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
	_, err := s.record(ctx, &inventoryv1.RecordStateRequest{Id: in.GetId(), State: string(vocab.StateDeprovisioned),
		Event: string(vocab.VerbDeprovisioned), Clear: vocab.Clear(vocab.ClearVMID, vocab.ClearAddresses, vocab.ClearAgent, vocab.ClearReprovision)})
	return err
}

func (s *Service) stopVM(ctx context.Context, in *inventoryv1.Instance) error {
	if in.GetVmId() == "" {
		return nil
	}
	drv, err := s.driverOf(ctx, in, vocab.StepStoppingVM)
	if err != nil {
		return err
	}
	if _, err := s.record(ctx, step(in.GetId(), vocab.State(in.GetState()), vocab.StepStoppingVM)); err != nil {
		return err
	}
	why := "the instance is deprovisioned"
	if vocab.State(in.GetState()) == vocab.StateDeleting {
		why = "the instance is deleted"
	}
	s.releaseAgent(ctx, in, why)
	if err := drv.DeleteVM(ctx, in.GetVmId()); err != nil {
		return fail(vocab.StepStoppingVM, err)
	}
	return nil
}

// releaseTimeout bounds a release: the agent gateway answers once the
// agent's stream ended, at most its grace (10 s) after the agent got it.
const releaseTimeout = 20 * time.Second

// releaseAgent tells the connected agent of in's VM that the instance lets
// the VM go, once the instance is recorded as stopping it (from then on the
// CA refuses the agent a new stream): the agent stops the node software
// cleanly before the VM is stopped, and on a machine the driver does not
// stop (external) it is the end of the agent's part. An agent not
// connected is told nothing; one that cannot be told is cut off by the
// CA's refusal and the VM's end, so a failure is only logged.
func (s *Service) releaseAgent(ctx context.Context, in *inventoryv1.Instance, why string) {
	a := in.GetAgent()
	if vocab.AgentStatus(a.GetStatus()) != vocab.AgentConnected || in.GetVmId() == "" || a.GetVmId() != in.GetVmId() {
		return
	}
	cmd := &agentv1.Command{Id: "release-" + in.GetVmId(), Action: &agentv1.Command_Release{Release: &agentv1.Release{Reason: why}}}
	if _, err := rpc.Call(ctx, s.bus, endpoints.AgentCommand.At(in.GetId()), cmd, rpc.As(Actor), rpc.Timeout(releaseTimeout)); err != nil {
		s.log.WarnContext(ctx, "the agent was not told of its release", "instance", in.GetId(), "vm_id", in.GetVmId(), "error", err)
		return
	}
	s.log.InfoContext(ctx, "agent released", "instance", in.GetId(), "vm_id", in.GetVmId(), "reason", why)
}

// remove destroys the VM and the disk, then the record. A forced delete
// goes on past a VM or disk the cloud does not destroy, and the record's
// last event (instance.deleted) names what it left there.
func (s *Service) remove(ctx context.Context, in *inventoryv1.Instance) error {
	var left []vocab.Left
	leave := func(what string, err error) error {
		var se *stepError
		if !in.GetDeleteForced() || !errors.As(err, &se) {
			return err
		}
		s.log.WarnContext(ctx, "forced delete: left in the cloud", "instance", in.GetId(), "resource", what, "error", se.err)
		left = append(left, vocab.Left{What: what, Step: se.step, Why: se.err.Error()})
		return nil
	}
	if err := s.stopVM(ctx, in); err != nil {
		if err := leave("vm "+in.GetVmId(), err); err != nil {
			return err
		}
	}
	if disk := in.GetDataDisk().GetId(); disk != "" {
		err := s.deleteDisk(ctx, in)
		if err := leave("disk "+disk, err); err != nil {
			return err
		}
	}
	r := &inventoryv1.RecordStateRequest{Id: in.GetId(), State: string(vocab.StateDeleted), Remove: true, StateDetail: vocab.LeftInCloud(left)}
	_, err := s.record(ctx, r)
	return err
}

// deleteDisk destroys the instance's data disk, recorded as the
// deleting-disk step with the VM's fields cleared (the VM is gone).
func (s *Service) deleteDisk(ctx context.Context, in *inventoryv1.Instance) error {
	drv, err := s.driverOf(ctx, in, vocab.StepDeletingDisk)
	if err != nil {
		return err
	}
	r := step(in.GetId(), vocab.StateDeleting, vocab.StepDeletingDisk)
	r.Clear = vocab.Clear(vocab.ClearVMID, vocab.ClearAddresses, vocab.ClearAgent)
	if _, err := s.record(ctx, r); err != nil {
		return err
	}
	if err := drv.DeleteDisk(ctx, in.GetDataDisk().GetId()); err != nil {
		return fail(vocab.StepDeletingDisk, err)
	}
	return nil
}

// driverOf is the driver of in's template and network; one that cannot
// be had fails the step it was wanted for.
func (s *Service) driverOf(ctx context.Context, in *inventoryv1.Instance, at vocab.Step) (driver.Driver, error) {
	t, n, err := s.placement(ctx, in)
	if err != nil {
		return nil, err
	}
	drv, err := s.driverFor(ctx, t, n)
	if err != nil {
		return nil, fail(at, err)
	}
	return drv, nil
}

func (s *Service) placement(ctx context.Context, in *inventoryv1.Instance) (*inventoryv1.Template, *inventoryv1.Network, error) {
	t, err := rpc.Call(ctx, s.bus, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: in.GetTemplateId()})
	if err != nil {
		return nil, nil, err
	}
	n, err := rpc.Call(ctx, s.bus, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: in.GetNetworkId()})
	if err != nil {
		return nil, nil, err
	}
	return t, n, nil
}

func (s *Service) instance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	return rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id})
}

// step is the record of an instance reaching a step in state.
func step(id string, state vocab.State, detail vocab.Step) *inventoryv1.RecordStateRequest {
	return &inventoryv1.RecordStateRequest{Id: id, State: string(state), StateDetail: string(detail)}
}

// record writes observed state through the inventory, retrying while the
// inventory is briefly unreachable. The record carries the lease ctx's work
// holds; one the inventory refuses as made under a superseded lease is an
// error wrapping errLeaseLost.
func (s *Service) record(ctx context.Context, r *inventoryv1.RecordStateRequest) (*inventoryv1.Instance, error) {
	if r.Lease == nil {
		r.Lease = fenceOf(ctx)
	}
	backoff := 100 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := rpc.Call(ctx, s.bus, endpoints.LifecycleRecord, r, rpc.As(Actor))
		switch {
		case err == nil:
			return out, nil
		case apierr.ReasonOf(err) == apierr.ReasonLeaseSuperseded:
			return nil, fmt.Errorf("record state of %s: %w: %w", r.GetId(), errLeaseLost, err)
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

// waitFor waits until ok says so of the instance or the timeout passes,
// looking at the instance again whenever an event of it arrives (and, as a
// safety net, every Recheck). While it waits it gives its worker slot back.
// It gives up with errSuperseded as soon as the instance is no longer being
// provisioned (a failure the agent reported, or a newer operator request),
// so a stale wait never holds the instance's lock.
func (s *Service) waitFor(ctx context.Context, id string, timeout time.Duration, ok func(*inventoryv1.Instance) (bool, error)) (*inventoryv1.Instance, error) {
	wake, cancel := s.wakers.add(id) // before the first look: no event falls between
	defer cancel()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	recheck := time.NewTicker(s.d.Recheck)
	defer recheck.Stop()
	sl := slotOf(ctx)
	if sl != nil {
		defer func() {
			if !sl.held {
				_ = sl.acquire(ctx) // the caller's ctx ended otherwise: nothing more is done
			}
		}()
	}
	for {
		in, err := s.instance(ctx, id)
		if apierr.Is(err, apierr.KindNotFound) {
			return nil, errSuperseded
		}
		if err == nil {
			if vocab.Desired(in.GetDesiredState()) != vocab.DesiredProvisioned || vocab.State(in.GetState()) != vocab.StateProvisioning {
				return in, errSuperseded
			}
			done, cerr := ok(in)
			if cerr != nil {
				return nil, cerr
			}
			if done {
				if sl != nil && !sl.held {
					if err := sl.acquire(ctx); err != nil {
						return nil, err
					}
				}
				return in, nil
			}
		}
		if sl != nil {
			sl.release()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("timed out after %v", timeout)
		case <-wake:
		case <-recheck.C:
		}
	}
}

// sendCommand delivers a command to the instance's agent through whichever
// agent gateway node it is connected to, retrying while it is not connected.
func (s *Service) sendCommand(ctx context.Context, id string, cmd *agentv1.Command, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := rpc.Call(ctx, s.bus, endpoints.AgentCommand.At(id), cmd, rpc.As(Actor))
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

// acmeOrder is the ACME order of an instance on an "acme" network: the
// network's settings (Let's Encrypt when it names no directory) and the
// instance's ssl.domains, else its host name from the network's pattern.
func acmeOrder(in *inventoryv1.Instance, n *inventoryv1.Network) *agentv1.AcmeOrder {
	if vocab.HTTPSStrategy(n.GetHttpsStrategy()) != vocab.HTTPSACME {
		return nil
	}
	a := n.GetAcme()
	return &agentv1.AcmeOrder{DirectoryUrl: pki.ACMEDirectory(n), ContactEmail: a.GetContactEmail(), Domains: pki.ACMEDomains(in, n),
		HttpPort: a.GetHttpPort(), DirectoryCaPem: a.GetDirectoryCaPem(), Challenge: a.GetChallenge(), DnsResolvers: a.GetDnsResolvers()}
}
