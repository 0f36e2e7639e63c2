package agentgw

import (
	"context"
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

// newChecks batches the certificate checks of new streams: each waits on
// its open stream to join a batch to the CA (agent.check-many).
func (s *Service) newChecks() *batcher[*cav1.CheckAgentRequest] {
	return &batcher[*cav1.CheckAgentRequest]{
		flights: maxCheckBatches,
		send:    s.sendChecks,
		waited:  func(d time.Duration) { metrics.checkTurns.Observe(d.Seconds()) },
	}
}

// checkAgent asks the CA whether who's certificate is current, in the
// next batch that goes.
func (s *Service) checkAgent(ctx context.Context, who identity) error {
	err := s.checks.do(ctx, &cav1.CheckAgentRequest{InstanceId: who.instanceID, VmId: pki.AgentVMID(who.cert), Serial: pki.Serial(who.cert)})
	if err != nil && ctx.Err() != nil {
		return apierr.Unavailable("the agent gateway was still checking other agents when the stream ended")
	}
	return err
}

// sendChecks asks the CA about a batch and answers each check.
func (s *Service) sendChecks(batch []*cav1.CheckAgentRequest) []error {
	asked := time.Now()
	// Not any one stream's context: the batch serves them all (the bus
	// client bounds it by the request timeout).
	resp, err := rpc.Call(context.Background(), s.bus, endpoints.AgentCheckMany, &cav1.CheckAgentsRequest{Agents: batch})
	took := time.Since(asked).Seconds()
	metrics.checkBatch.Observe(float64(len(batch)))
	for range batch {
		metrics.checkTime.Observe(took)
	}
	return answers(len(batch), resp.GetResults(), err, "the CA's certificate check", func(r *cav1.CheckAgentResult) error {
		return apierr.FromItem(r.GetErrorKind(), r.GetErrorReason(), r.GetErrorMessage())
	})
}
