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

// sampleCount is how many observations h has.
func sampleCount(h prometheus.Histogram) uint64 {
	var m dto.Metric
	_ = h.Write(&m)
	return m.GetHistogram().GetSampleCount()
}
