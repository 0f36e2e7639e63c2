package agentgw

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// EnforceRetentionAt enforces log retention as if it were now.
func (s *Service) EnforceRetentionAt(ctx context.Context, now time.Time) error {
	return s.enforceRetentionAt(ctx, now)
}

// OpenStreams is flotilla_agentgw_streams, the process's open agent streams.
func OpenStreams() float64 { return testutil.ToFloat64(metrics.streams) }

// ChecksAnswered is how many certificate checks the CA answered
// (flotilla_agentgw_check_seconds' count), and how many waited for a turn.
func ChecksAnswered() (answered, turns uint64) {
	return sampleCount(metrics.checkTime), sampleCount(metrics.checkTurns)
}

// HoldChecks makes new streams' certificate checks queue as if every
// batch were in flight; the function returned sends what queued, in as few
// batches as the bound allows.
func (s *Service) HoldChecks() (release func()) {
	s.checks.mu.Lock()
	s.checks.running += maxCheckBatches
	s.checks.mu.Unlock()
	return func() {
		s.checks.mu.Lock()
		s.checks.running -= maxCheckBatches - 1 // one batch runner goes
		s.checks.mu.Unlock()
		go s.runChecks()
	}
}

// QueuedChecks is how many checks wait to join a batch.
func (s *Service) QueuedChecks() int {
	s.checks.mu.Lock()
	defer s.checks.mu.Unlock()
	return len(s.checks.queue)
}

// CheckBatches is how many batches of checks went to the CA, and how many
// checks they carried (flotilla_agentgw_check_batch_size's count and sum).
func CheckBatches() (batches uint64, checks float64) {
	var m dto.Metric
	_ = metrics.checkBatch.Write(&m)
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// sampleCount is how many observations h has.
func sampleCount(h prometheus.Histogram) uint64 {
	var m dto.Metric
	_ = h.Write(&m)
	return m.GetHistogram().GetSampleCount()
}
