package agentgw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// Limits of one agent stream.
const (
	// outQueue is how many messages may wait to be sent to an agent.
	outQueue = 64
	// eventQueue is how many events may wait for the bus; heartbeats that
	// find it full are dropped (the next one follows in seconds).
	eventQueue = 64
	// maxRequests bounds an agent's secret and certificate requests in flight.
	maxRequests = 8
	// commandQueueWait is how long a command waits for room in a full queue.
	commandQueueWait = 5 * time.Second
	// releaseGrace is how long a released agent has to stop its node
	// software and close its stream before the gateway ends it.
	releaseGrace = 10 * time.Second
)

// agentConn is one agent's stream.
type agentConn struct {
	id string
	// vmID is the VM the agent runs on (its certificate's, or for a
	// certificate from before they named their VM, its hello's), "" if
	// neither says.
	vmID string
	// issued is when the stream's certificate was issued (its NotBefore).
	issued time.Time
	// releases: the agent acts on a Release (its hello names the feature);
	// version is its hello's, upgrades: it acts on an UpgradeAgent, and
	// refreshes: on a RefreshConfiguration.
	releases  bool
	version   string
	upgrades  bool
	refreshes bool
	out       chan *agentv1.GatewayMessage
	// events wait here for the bus; sending says a sender delivers them
	// (drainEvents), evCtx is what they are sent under.
	events   chan queuedEvent
	sending  onDemand
	evCtx    context.Context
	requests chan struct{} // semaphore of maxRequests

	closed   chan struct{}
	once     sync.Once
	mu       sync.Mutex
	reason   string
	replaced bool
	sub      *rpc.Subscription
	logs     *logPublisher
}

// queuedEvent is an event waiting for the bus.
type queuedEvent struct {
	ev    *agentv1.AgentEvent
	retry bool
	// unlessConnected drops the event if the agent has a stream again by
	// the time it is sent (a disconnect followed at once by a reconnect).
	unlessConnected bool
}

// close ends the stream (once) for reason, and stops taking commands at
// once, so a newer stream of the same agent is the only one that gets them.
func (c *agentConn) close(reason string, replaced bool) {
	c.once.Do(func() {
		c.mu.Lock()
		c.reason, c.replaced = reason, replaced
		sub := c.sub
		c.mu.Unlock()
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		close(c.closed)
	})
}

// closeReason returns why close was called, and whether a newer stream
// replaced this one.
func (c *agentConn) closeReason() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason, c.replaced
}

// send queues m for the agent unless the stream has ended, which it
// reports with false.
func (c *agentConn) send(m *agentv1.GatewayMessage) bool {
	select {
	case c.out <- m:
		return true
	case <-c.closed:
		return false
	}
}

// ackLogs tells the agent that its log lines up to seq are stored.
func (c *agentConn) ackLogs(seq uint64) bool {
	return c.send(&agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_LogAck{LogAck: &agentv1.LogAck{Seq: seq}}})
}

// event builds an AgentEvent about this agent, stamped now.
func (c *agentConn) event() *agentv1.AgentEvent {
	return &agentv1.AgentEvent{InstanceId: c.id, Time: timestamppb.Now()}
}

// connect serves one agent stream: hello first, then until the agent hangs
// up, the stream breaks, a newer stream replaces it, its certificate
// expires or the gateway stops.
func (s *Service) connect(stream agentv1.AgentGateway_ConnectServer) error {
	if s.isStopping() {
		return status.Error(codes.Unavailable, errStopping.Error())
	}
	ctx := stream.Context()
	who := identityFrom(ctx)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first message of a stream must be hello")
	}
	// The VM an agent runs on is its certificate's, which the CA bound to
	// the VM its join token was for: a hello cannot say otherwise, and one
	// that says nothing is taken to mean it.
	if vm := pki.AgentVMID(who.cert); vm != "" {
		if said := hello.GetVmId(); said != "" && said != vm {
			s.log.WarnContext(ctx, "agent refused: its hello names another VM than its certificate", "instance_id", who.instanceID,
				"vm_id", vm, "hello_vm_id", said, "remote", peerAddr(ctx))
			return status.Errorf(codes.PermissionDenied, "hello.vmId: %q is not the VM this agent's certificate is bound to (%s)", said, vm)
		}
		hello.VmId = vm
	}
	// First of all, before any check that may take a while: this gateway
	// acknowledges log lines, so the agent keeps each until its LogAck. An
	// agent that hears nothing takes the gateway for an older one, which
	// does not, and forgets the lines a stream carried once it stayed up
	// for a heartbeat interval: lines sent while a slow check was under way
	// would be lost.
	if err := stream.Send(&agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_LogAck{LogAck: &agentv1.LogAck{}}}); err != nil {
		return err
	}
	// The certificate verified; is it still current (instance live, VM
	// current, not replaced by a newer one)?
	if err := s.checkAgent(ctx, who); err != nil {
		s.log.InfoContext(ctx, "agent refused", "instance_id", who.instanceID, "serial", pki.Serial(who.cert), "error", err, "remote", peerAddr(ctx))
		return apierr.GRPCStatus(ctx, s.log, err)
	}
	c := &agentConn{
		id:        who.instanceID,
		vmID:      hello.GetVmId(),
		issued:    who.cert.NotBefore,
		releases:  slices.Contains(hello.GetFeatures(), string(vocab.AgentFeatureRelease)),
		version:   hello.GetAgentVersion(),
		upgrades:  slices.Contains(hello.GetFeatures(), string(vocab.AgentFeatureUpgrade)),
		refreshes: slices.Contains(hello.GetFeatures(), string(vocab.AgentFeatureRefreshConfiguration)),
		out:       make(chan *agentv1.GatewayMessage, outQueue),
		events:    make(chan queuedEvent, eventQueue),
		requests:  make(chan struct{}, maxRequests),
		closed:    make(chan struct{}),
		// Events outlive the stream (the last one says it ended), so they
		// are sent under a context that the stream's end does not cancel.
		evCtx: context.WithoutCancel(ctx),
	}
	c.logs = newLogPublisher(s.js, c.id, s.requestTimeout, c.ackLogs)
	defer c.logs.Stop()

	if err := s.register(c); err != nil {
		if errors.Is(err, errOlderCert) {
			s.log.InfoContext(ctx, "agent refused", "instance_id", c.id, "error", err, "remote", peerAddr(ctx))
			return status.Error(codes.PermissionDenied, err.Error())
		}
		if errors.Is(err, errStopping) {
			return status.Error(codes.Unavailable, err.Error())
		}
		s.log.ErrorContext(ctx, "subscribe to agent commands", "instance_id", c.id, "error", err)
		return status.Error(codes.Unavailable, "the agent gateway cannot take commands for this agent now; reconnect shortly")
	}
	s.log.InfoContext(ctx, "agent connected", "instance_id", c.id, "agent_version", hello.GetAgentVersion(),
		"vm_id", hello.GetVmId(), "completed_command_id", hello.GetCompletedCommandId(), "remote", peerAddr(ctx), "tls_resumed", who.resumed)
	ev := c.event()
	ev.Body = &agentv1.AgentEvent_Connected{Connected: hello}
	started := ev.GetTime() // the stream's start, which its disconnect names
	s.queueEvent(c, queuedEvent{ev: ev, retry: true}, true)

	recvDone := make(chan struct{})
	recvErr := make(chan error, 1)
	go func() {
		defer close(recvDone)
		for {
			m, err := stream.Recv()
			if err == nil {
				err = s.handle(ctx, c, m)
			}
			if err != nil {
				recvErr <- err
				return
			}
		}
	}()

	expiry := time.NewTimer(time.Until(who.cert.NotAfter))
	defer expiry.Stop()
	var result error
	reason := ""
loop:
	for {
		select {
		case m := <-c.out:
			if err := stream.Send(m); err != nil {
				result, reason = err, fmt.Sprintf("sending to the agent failed: %v", err)
				break loop
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				// The agent sent everything: acknowledge its last lines
				// once stored, then end the stream.
				if err := s.finishLogs(ctx, stream, c); err != nil {
					result, reason = status.Error(codes.Unavailable, "the agent gateway could not store every log line; reconnect and send them again"),
						fmt.Sprintf("storing the last log lines failed: %v", err)
					break loop
				}
				result, reason = nil, "the agent closed the stream"
			} else {
				result, reason = err, fmt.Sprintf("the stream broke: %v", err)
				if status.Code(err) == codes.Unknown && ctx.Err() == nil {
					// A failure of the gateway's own (publishing logs).
					result = status.Error(codes.Unavailable, "the agent gateway could not store what the agent sent; reconnect and send it again")
				}
			}
			break loop
		case <-c.logs.Failed():
			err := c.logs.Err()
			s.log.WarnContext(ctx, "agent log lines not stored", "instance_id", c.id, "error", err)
			result = status.Error(codes.Unavailable, "the agent gateway could not store what the agent sent; reconnect and send it again")
			reason = fmt.Sprintf("storing log lines failed: %v", err)
			break loop
		case <-c.closed:
			r, _ := c.closeReason()
			result, reason = status.Error(codes.Unavailable, r), r
			break loop
		case <-expiry.C:
			reason = "the agent certificate expired"
			result = status.Error(codes.Unauthenticated, "the agent certificate expired: reconnect with the renewed certificate")
			break loop
		}
	}

	s.unregister(c)
	c.close(reason, false)
	reason, replaced := c.closeReason()
	s.log.InfoContext(ctx, "agent disconnected", "instance_id", c.id, "reason", reason)
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		// Once the receiver has stopped, nothing else is queued: the
		// disconnect is the stream's last event. A replaced stream sends
		// none, since the agent is connected through the newer one; nor
		// does a stream the gateway ends as it stops: its agent reconnects
		// to a gateway at once, which the inventory takes as a heartbeat,
		// and an agent that cannot is shown disconnected once its
		// heartbeats are missed (the inventory's AgentStaleAfter).
		<-recvDone
		if !replaced && !s.isStopping() {
			ev := c.event()
			ev.Body = &agentv1.AgentEvent_Disconnected{Disconnected: &agentv1.Disconnected{Reason: reason, StreamStart: started}}
			s.queueEvent(c, queuedEvent{ev: ev, retry: true, unlessConnected: true}, true)
		}
	}()
	return result
}

// queueEvent queues an event of c's for the bus, waiting for room if wait
// is set (else reporting a full queue with false), and has a sender
// deliver it.
func (s *Service) queueEvent(c *agentConn, q queuedEvent, wait bool) bool {
	if wait {
		c.events <- q
	} else {
		select {
		case c.events <- q:
		default:
			return false
		}
	}
	c.sending.start(func() {
		s.workers.Add(1)
		go s.drainEvents(c)
	})
	return true
}

// drainEvents delivers c's queued events, one at a time and in order (so an
// agent's events reach the inventory in order), until none waits.
func (s *Service) drainEvents(c *agentConn) {
	defer s.workers.Done()
	for {
		select {
		case q := <-c.events:
			if q.unlessConnected && s.connected(c.id) {
				s.log.DebugContext(c.evCtx, "not reporting a disconnect: the agent is connected again", "instance_id", c.id)
				continue
			}
			s.deliver(c.evCtx, q.ev, q.retry)
			continue
		default:
		}
		if !c.sending.stop(func() bool { return len(c.events) > 0 }) {
			return
		}
	}
}

// finishLogs waits until every log line the agent sent is stored and
// acknowledged, passing the acknowledgements (and anything else queued) on
// to the agent.
func (s *Service) finishLogs(ctx context.Context, stream agentv1.AgentGateway_ConnectServer, c *agentConn) error {
	fctx, cancel := context.WithTimeout(ctx, s.requestTimeout)
	defer cancel()
	finished := make(chan error, 1)
	go func() { finished <- c.logs.Finish(fctx) }()
	for {
		select {
		case m := <-c.out:
			if err := stream.Send(m); err != nil {
				cancel()
				<-finished
				return err
			}
		case err := <-finished:
			for {
				select {
				case m := <-c.out:
					if err := stream.Send(m); err != nil {
						return err
					}
				default:
					return err
				}
			}
		}
	}
}

// errOlderCert refuses a stream whose certificate is older than the one the
// agent's current stream presents: a copy of an old certificate cannot take
// the agent's place.
var errOlderCert = errors.New("a newer certificate of this agent is connected: an older one cannot replace it")

// errStopping refuses a stream that arrives while the gateway stops.
var errStopping = errors.New("the agent gateway is shutting down: reconnect shortly")

// markStopping makes the gateway refuse new streams: it is stopping.
func (s *Service) markStopping() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
}

// isStopping reports whether the gateway is ending its streams to stop.
func (s *Service) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// register makes c the agent's stream, replacing (closing) an older one,
// and subscribes to the agent's commands. A stream whose certificate was
// issued before the current stream's is refused (errOlderCert), and any
// once the gateway stops (errStopping).
func (s *Service) register(c *agentConn) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return errStopping
	}
	old := s.conns[c.id]
	if old != nil {
		if c.issued.Before(old.issued) {
			s.mu.Unlock()
			return errOlderCert
		}
		old.close("replaced by a newer stream of the same agent", true)
	}
	sub, err := rpc.Subscribe(s.commands, subjects.AgentGW, endpoints.AgentCommand.At(c.id), s.log, s.tp, c.command)
	if err == nil {
		c.mu.Lock()
		c.sub = sub
		c.mu.Unlock()
		s.conns[c.id] = c
		if old == nil {
			metrics.streams.Inc()
		}
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The server must have the subscription before a sender on another
	// connection can reach it.
	return s.nc.FlushTimeout(s.requestTimeout)
}

// connected reports whether the agent has a stream to this gateway.
func (s *Service) connected(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id] != nil
}

// unregister forgets c unless a newer stream has replaced it.
func (s *Service) unregister(c *agentConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
		metrics.streams.Dec()
	}
}

// command answers one request on the agent's command endpoint: it queues
// the command for the agent and answers once it is queued, or refuses a
// command without an id, or one that cannot be queued because the stream
// is going away or stays full.
//
// A bootstrap is named after the VM it sets up, and goes to that VM's
// agent only. While a re-provisioned instance's new VM boots, the old VM's
// agent may still be connected (a terminated VM takes a while to go); it
// is refused the bootstrap as unavailable, and the provisioner tries again
// until the new VM's agent connects.
func (c *agentConn) command(_ context.Context, _ vocab.Actor, cmd *agentv1.Command) (*emptypb.Empty, error) {
	if cmd.GetId() == "" {
		return nil, apierr.Invalid("id", "is required")
	}
	if cmd.GetBootstrap() != nil && c.vmID != "" && cmd.GetId() != c.vmID {
		return nil, apierr.Unavailable("the connected agent runs on VM %s, not on VM %s that the bootstrap is for; try again once that VM's agent connects", c.vmID, cmd.GetId())
	}
	if r := cmd.GetRelease(); r != nil && !c.releases {
		// An agent from before releases would only log the command: its
		// stream ends now, and the CA refuses it another.
		c.close(fmt.Sprintf("released (%s); the agent does not act on releases", r.GetReason()), false)
		return &emptypb.Empty{}, nil
	}
	if cmd.GetUpgradeAgent() != nil && !c.upgrades {
		// It would only log the command.
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "the agent (version %s) predates upgrading itself: reprovision the instance to give it a new VM with the manager's agent", c.version)
	}
	if cmd.GetRefreshConfiguration() != nil && !c.refreshes {
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "the agent (version %s) predates refreshing its configuration: upgrade it (flotilla instances upgrade-agent), or reprovision the instance", c.version)
	}
	timer := time.NewTimer(commandQueueWait)
	defer timer.Stop()
	select {
	case c.out <- &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_Command{Command: cmd}}:
	case <-c.closed:
		return nil, apierr.Unavailable("the agent disconnected")
	case <-timer.C:
		return nil, apierr.Unavailable("the agent is not taking commands; try again shortly")
	}
	if r := cmd.GetRelease(); r != nil {
		// The answer waits for the stream's end: the agent stops its node
		// software and closes the stream, or the gateway ends it after
		// releaseGrace; either way the caller goes on to stop the VM with
		// no stream left. (The CA refuses the agent a new one.)
		timer.Reset(releaseGrace)
		select {
		case <-c.closed:
		case <-timer.C:
			c.close(fmt.Sprintf("released (%s), and the agent did not close its stream within %v", r.GetReason(), releaseGrace), false)
		}
	}
	return &emptypb.Empty{}, nil
}

// handle acts on one message from the agent. An error ends the stream.
func (s *Service) handle(ctx context.Context, c *agentConn, m *agentv1.AgentMessage) error {
	switch b := m.GetBody().(type) {
	case *agentv1.AgentMessage_Heartbeat:
		ev := c.event()
		ev.Body = &agentv1.AgentEvent_Heartbeat{Heartbeat: b.Heartbeat}
		if !s.queueEvent(c, queuedEvent{ev: ev}, false) {
			s.log.WarnContext(ctx, "dropped a heartbeat: the bus is behind", "instance_id", c.id)
		}
	case *agentv1.AgentMessage_Progress:
		ev := c.event()
		ev.Body = &agentv1.AgentEvent_Progress{Progress: b.Progress}
		s.queueEvent(c, queuedEvent{ev: ev, retry: true}, true)
	case *agentv1.AgentMessage_Logs:
		return c.logs.Publish(ctx, b.Logs.GetLines())
	case *agentv1.AgentMessage_SecretRequest:
		s.goRequest(ctx, c, func() *agentv1.GatewayMessage { return s.readSecret(ctx, c.id, b.SecretRequest) })
	case *agentv1.AgentMessage_ServerCertRequest:
		s.goRequest(ctx, c, func() *agentv1.GatewayMessage { return s.serverCert(ctx, c.id, b.ServerCertRequest) })
	case *agentv1.AgentMessage_AcmeRequest:
		s.goRequest(ctx, c, func() *agentv1.GatewayMessage { return s.acme(ctx, c.id, b.AcmeRequest) })
	case *agentv1.AgentMessage_Hello:
		s.log.WarnContext(ctx, "ignored a second hello on a stream", "instance_id", c.id)
	}
	return nil
}

// goRequest answers a request of the agent in the background, at most
// maxRequests at a time (the stream waits for room).
func (s *Service) goRequest(ctx context.Context, c *agentConn, answer func() *agentv1.GatewayMessage) {
	select {
	case c.requests <- struct{}{}:
	case <-ctx.Done():
		return
	}
	go func() {
		defer func() { <-c.requests }()
		c.send(answer())
	}()
}

// readSecret reads one of the instance's secrets for its agent. The reader
// is the certificate's instance; a refusal says why and carries no value.
func (s *Service) readSecret(ctx context.Context, id string, req *agentv1.SecretRequest) *agentv1.GatewayMessage {
	resp := &agentv1.SecretResponse{RequestId: req.GetRequestId()}
	out, err := rpc.Call(ctx, s.bus, endpoints.SecretRead,
		&secretsv1.ReadSecretRequest{RequesterInstanceId: id, Name: req.GetName()}, rpc.As(vocab.Agent(id)))
	if err != nil {
		resp.Error = apierr.Public(ctx, s.log, err).Message
		s.log.InfoContext(ctx, "agent secret read refused", "instance_id", id, "name", req.GetName(), "error", resp.Error)
	} else {
		resp.Value = out.GetValue()
	}
	return &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_SecretResponse{SecretResponse: resp}}
}

// serverCert has the CA certify the instance's HTTPS key for the names the
// inventory holds for it: its SSL SANs, private IP and private DNS name.
func (s *Service) serverCert(ctx context.Context, id string, req *agentv1.ServerCertRequest) *agentv1.GatewayMessage {
	resp := &agentv1.ServerCertResponse{RequestId: req.GetRequestId()}
	reply := &agentv1.GatewayMessage{Body: &agentv1.GatewayMessage_ServerCertResponse{ServerCertResponse: resp}}
	fail := func(err error) *agentv1.GatewayMessage {
		resp.Error = apierr.Public(ctx, s.log, err).Message
		s.log.InfoContext(ctx, "agent server certificate refused", "instance_id", id, "error", resp.Error)
		return reply
	}
	if req.GetCustom() {
		// The operator's certificate and key, resolved by the CA for the
		// instance the agent's certificate names; the key is not logged.
		cc, err := rpc.Call(ctx, s.bus, endpoints.CustomCertGet, &cav1.GetCustomCertificateRequest{InstanceId: id}, rpc.As(vocab.Agent(id)))
		if err != nil {
			return fail(err)
		}
		resp.CertificatePem, resp.PrivateKeyPem = cc.GetCertificatePem(), cc.GetPrivateKeyPem()
		return reply
	}
	inst, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}, rpc.As(vocab.Agent(id)))
	if err != nil {
		return fail(err)
	}
	sans := pki.InstanceServerNames(inst, s.serverNames)
	if len(sans) == 0 {
		return fail(apierr.Invalid("ssl.sans", "the instance has no SANs and no private address yet"))
	}
	cert, err := rpc.Call(ctx, s.bus, endpoints.ServerSign,
		&cav1.SignServerRequest{InstanceId: id, CsrDer: req.GetCsrDer(), Sans: sans}, rpc.As(vocab.Agent(id)))
	if err != nil {
		return fail(err)
	}
	resp.CertificatePem, resp.CaPem = cert.GetCertificatePem(), cert.GetCaPem()
	s.log.InfoContext(ctx, "agent server certificate issued", "instance_id", id, "sans", sans,
		"not_after", cert.GetNotAfter().AsTime())
	return reply
}

// peerAddr is the remote address of the call in ctx, or "".
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
