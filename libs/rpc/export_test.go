package rpc

import "context"

// StepOut takes s out of its queue groups, as its readiness watcher does.
func StepOut(s *Service) { s.step(false, nil) }

// Pause is s's part in a homecoming (natsx.OnRemake); it returns what
// resumes it.
func Pause(ctx context.Context, s *Subscriber) (resume func()) { return s.pause(ctx) }
