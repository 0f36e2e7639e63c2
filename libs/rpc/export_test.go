package rpc

import "context"

// StepOut takes s out of its queue groups, as its readiness watcher does.
func StepOut(s *Service) { s.step(false, nil) }

// Pause is s's part in a homecoming (natsx.OnRemake); it returns what
// resumes it.
func Pause(ctx context.Context, s *Subscriber) (resume func()) { return s.pause(ctx) }

// UntilTaken is untilTaken, for a test's own tries.
func UntilTaken(ctx context.Context, send func() error) error { return untilTaken(ctx, "test", send) }
