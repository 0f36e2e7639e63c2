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
func (s *Service) HoldChecks() (release func()) { return hold(s.checks) }

// HoldEvents does the same with the agents' events to the inventory.
func (s *Service) HoldEvents() (release func()) { return hold(s.events) }

// QueuedChecks is how many checks wait to join a batch.
func (s *Service) QueuedChecks() int { return queued(s.checks) }

// QueuedEvents is how many agent events wait to join a batch.
func (s *Service) QueuedEvents() int { return queued(s.events) }

func hold[T any](b *batcher[T]) (release func()) {
	b.mu.Lock()
	b.running += b.flights
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.running -= b.flights - 1 // one batch runner goes
		b.mu.Unlock()
		go b.run()
	}
}

func queued[T any](b *batcher[T]) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
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
