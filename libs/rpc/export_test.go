package rpc

// StepOut takes s out of its queue groups, as its readiness watcher does.
func StepOut(s *Service) { s.step(false, nil) }
