package every_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/every"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestRunRepeatsUntilTheContextEndsAndLogsFailures: f runs on each tick,
// not at start; a failure is logged with what failed and does not stop the
// next run; Run returns when ctx ends.
func TestRunRepeatsUntilTheContextEndsAndLogsFailures(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	out := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		every.Run(ctx, 10*time.Millisecond, slog.New(slog.NewTextHandler(out, nil)), "sweep things", func(context.Context) error {
			if calls.Add(1) == 1 {
				return errors.New("disk on fire")
			}
			return nil
		})
	}()
	for calls.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if !strings.Contains(out.String(), "sweep things") || !strings.Contains(out.String(), "disk on fire") {
		t.Fatalf("the failure was not logged with what failed: %q", out.String())
	}
}
