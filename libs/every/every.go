// Package every runs a service's housekeeping on a fixed interval: sweeps,
// flushes, expiries. A run that fails is logged and the next one comes at
// its time; nothing runs at start.
package every

import (
	"context"
	"log/slog"
	"time"
)

// Run calls f every interval until ctx ends. An error from f is logged as
// a warning naming what (unless ctx ended meanwhile).
func Run(ctx context.Context, interval time.Duration, log *slog.Logger, what string, f func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := f(ctx); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, what, "error", err)
		}
	}
}
