package agentgw

import (
	"context"
	"time"
)

// EnforceRetentionAt enforces log retention as if it were now.
func (s *Service) EnforceRetentionAt(ctx context.Context, now time.Time) error {
	return s.enforceRetentionAt(ctx, now)
}
