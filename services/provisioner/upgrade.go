package provisioner

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
)

// upgradeAgent is an operator's :upgrade-agent: the instance's connected
// agent is told to replace itself with the agent of this manager's version
// (the binary the gateway serves at AgentURL, whose SHA-256 is
// AgentSHA256). The instance must be at rest with a VM (running, or
// failed after its VM came up): a transitional one's agent has the
// provisioner's own commands to run. An agent already at the manager's
// version is left alone, so asking twice, or for every instance, is safe.
// The answer is the instance as read: the new agent's version shows when
// it connects.
func (s *Service) upgradeAgent(ctx context.Context, actor vocab.Actor, r *inventoryv1.InstanceActionRequest) (*inventoryv1.Instance, error) {
	in, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: r.GetId()})
	if err != nil {
		return nil, err
	}
	if s.d.Version == "" || s.d.AgentSHA256 == "" {
		return nil, apierr.Unsupported("", "this manager has no agent binary to upgrade agents to: put the release's flotilla-agent beside its executable")
	}
	if state := vocab.State(in.GetState()); (state != vocab.StateRunning && state != vocab.StateFailed) || in.GetVmId() == "" {
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: an agent is upgraded on a VM that runs or has failed, not while the instance changes or has no VM",
			in.GetName(), in.GetState())
	}
	a := in.GetAgent()
	if !agentOnVM(in) {
		return nil, agentNotConnected(in, "it is upgraded while connected (a VM's next agent is the manager's version already)")
	}
	if a.GetVersion() == s.d.Version {
		s.log.InfoContext(ctx, "agent already at the manager's version", "instance_id", in.GetId(), "version", a.GetVersion(), "actor", actor)
		return in, nil
	}
	cmd := &agentv1.Command{Id: "upgrade-agent-" + uuid.NewString(), Action: &agentv1.Command_UpgradeAgent{
		UpgradeAgent: &agentv1.UpgradeAgent{Version: s.d.Version, Url: s.d.AgentURL, Sha256: s.d.AgentSHA256}}}
	if err := s.commandAgent(ctx, in, vocab.StepUpgradingAgent, cmd); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "agent upgrade sent", "instance_id", in.GetId(), "from", a.GetVersion(), "to", s.d.Version, "actor", actor)
	return in, nil
}

// errAgentAway marks the refusal of a command to an instance whose agent
// is not connected from its VM at the moment: a rollout asks it again for
// a while, as after the managers' restart, when the agents come back on
// their own.
var errAgentAway = errors.New("agent not connected")

// agentNotConnected refuses a command to in, whose agent is not connected
// from its VM; rule says when the command is taken.
func agentNotConnected(in *inventoryv1.Instance, rule string) error {
	err := apierr.Conflict(apierr.ReasonInvalidState, "the agent of instance %q is not connected: %s", in.GetName(), rule)
	err.Err = errAgentAway
	return err
}

// agentOnVM says whether in's agent is connected from the VM in runs on
// (not the old VM's, gone or going).
func agentOnVM(in *inventoryv1.Instance) bool {
	a := in.GetAgent()
	return vocab.AgentStatus(a.GetStatus()) == vocab.AgentConnected && a.GetVmId() == in.GetVmId()
}

// commandAgent queues cmd for the connected agent of in (an operator's
// command: a refresh, an upgrade). With a step, the instance's agent
// progress is first recorded as that step requested, so the agent's own
// report of this command is the one that follows (not an earlier
// command's), and as failed, saying why, if the command cannot be sent. An
// agent the inventory shows connected may have no stream at the moment
// (reconnecting to a restarted agent gateway): that is said plainly, to be
// tried again.
func (s *Service) commandAgent(ctx context.Context, in *inventoryv1.Instance, step vocab.Step, cmd *agentv1.Command) error {
	record := func(p vocab.Progress, message string) error {
		if step == "" {
			return nil
		}
		_, err := rpc.Call(ctx, s.bus, endpoints.LifecycleRecord, &inventoryv1.RecordStateRequest{Id: in.GetId(),
			AgentProgress: vocab.AgentProgress(step, p), AgentProgressMessage: message})
		return err
	}
	if err := record(vocab.ProgressRequested, ""); err != nil {
		return err
	}
	_, err := rpc.Call(ctx, s.bus, endpoints.AgentCommand.At(in.GetId()), cmd, rpc.As(Actor))
	if errors.Is(err, nats.ErrNoResponders) {
		err = apierr.Unavailable("the agent of instance %q has no stream to an agent gateway at the moment (it may be reconnecting); try again shortly", in.GetName())
	}
	if err != nil {
		if rerr := record(vocab.ProgressFailed, "command "+cmd.GetId()+" not sent: "+err.Error()); rerr != nil {
			s.log.WarnContext(ctx, "record an agent command not sent", "instance_id", in.GetId(), "error", rerr)
		}
	}
	return err
}
