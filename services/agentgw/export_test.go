package agentgw

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// EnforceRetentionAt enforces log retention as if it were now.
func (s *Service) EnforceRetentionAt(ctx context.Context, now time.Time) error {
	return s.enforceRetentionAt(ctx, now)
}

// OpenStreams is flotilla_agentgw_streams, the process's open agent streams.
func OpenStreams() float64 { return testutil.ToFloat64(metrics.streams) }
