package agentgw

import (
	"context"
	"sync"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// maxCheckBatches bounds the batches of certificate checks in flight to
// the CA at once. When thousands of agents come back together (their
// gateway restarted), each check waits on its open stream to join a batch
// of up to endpoints.MaxBatch: a few requests carry them all, where one
// request each kept the CA and the inventory busy passing messages, and
// with every check asked at once the CA's queue grew longer than a check
// may take, thousands timed out together, and each of their agents came
// back for another handshake and another check.
const maxCheckBatches = 4

// checks batches the certificate checks of new streams: a check joins the
// queue, and the batches in flight (started on demand, at most
// maxCheckBatches) take whatever is queued when they go, so a lone check
// goes at once, alone.
type checks struct {
	mu      sync.Mutex
	queue   []*pendingCheck
	running int
}

// pendingCheck is one stream's check, waiting for its answer.
type pendingCheck struct {
	ctx    context.Context // the stream's
	req    *cav1.CheckAgentRequest
	queued time.Time
	done   chan error // buffered: the batch never waits for the stream
}

// checkAgent asks the CA whether who's certificate is current, in the
// next batch that goes.
func (s *Service) checkAgent(ctx context.Context, who identity) error {
	p := &pendingCheck{ctx: ctx, queued: time.Now(), done: make(chan error, 1),
		req: &cav1.CheckAgentRequest{InstanceId: who.instanceID, VmId: pki.AgentVMID(who.cert), Serial: pki.Serial(who.cert)}}
	s.checks.mu.Lock()
	s.checks.queue = append(s.checks.queue, p)
	if s.checks.running < maxCheckBatches {
		s.checks.running++
		go s.runChecks()
	}
	s.checks.mu.Unlock()
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return apierr.Unavailable("the agent gateway was still checking other agents when the stream ended")
	}
}

// runChecks sends batches of the queued checks until none is left.
func (s *Service) runChecks() {
	for {
		batch := s.nextChecks()
		if batch == nil {
			return
		}
		s.sendChecks(batch)
	}
}

// nextChecks takes up to endpoints.MaxBatch queued checks whose streams
// are still open, or returns nil (and counts this batch runner out) when
// none is queued.
func (s *Service) nextChecks() []*pendingCheck {
	s.checks.mu.Lock()
	defer s.checks.mu.Unlock()
	var batch []*pendingCheck
	for len(s.checks.queue) > 0 && len(batch) < endpoints.MaxBatch {
		p := s.checks.queue[0]
		s.checks.queue[0] = nil
		s.checks.queue = s.checks.queue[1:]
		metrics.checkTurns.Observe(time.Since(p.queued).Seconds())
		if p.ctx.Err() == nil {
			batch = append(batch, p)
		}
	}
	if len(batch) == 0 { // the queue is empty
		s.checks.queue = nil // let the backing array go after a burst
		s.checks.running--
		return nil
	}
	return batch
}

// sendChecks asks the CA about a batch and gives each check its answer.
func (s *Service) sendChecks(batch []*pendingCheck) {
	req := &cav1.CheckAgentsRequest{Agents: make([]*cav1.CheckAgentRequest, len(batch))}
	for i, p := range batch {
		req.Agents[i] = p.req
	}
	asked := time.Now()
	// Not any one stream's context: the batch serves them all (the bus
	// client bounds it by the request timeout).
	resp, err := rpc.Call(context.Background(), s.bus, endpoints.AgentCheckMany, req)
	took := time.Since(asked).Seconds()
	metrics.checkBatch.Observe(float64(len(batch)))
	if err == nil && len(resp.GetResults()) != len(batch) {
		err = apierr.Unavailable("the CA answered %d of %d certificate checks", len(resp.GetResults()), len(batch))
	}
	for i, p := range batch {
		metrics.checkTime.Observe(took)
		if err != nil {
			p.done <- err
			continue
		}
		p.done <- checkAnswer(resp.GetResults()[i])
	}
}

// checkAnswer is one agent's answer as an error: nil when its certificate
// is current.
func checkAnswer(r *cav1.CheckAgentResult) error {
	if r.GetErrorKind() == "" {
		return nil
	}
	return apierr.FromBus(r.GetErrorKind(), r.GetErrorMessage(), map[string][]string{apierr.HeaderReason: {r.GetErrorReason()}})
}
