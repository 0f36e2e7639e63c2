package agentgw

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/rpc"
)

// DefaultRetentionInterval is how often the agent gateway enforces the
// instances' log retention.
const DefaultRetentionInterval = time.Minute

// EnforceRetention removes, for every instance with lines in the agent-log
// stream, the lines beyond its logRetention: the oldest past maxLines and
// those stored more than maxAge ago. An instance the inventory does not
// know (deleted) gets the defaults. Only that instance's subject is ever
// purged.
func (s *Service) EnforceRetention(ctx context.Context) error {
	return s.enforceRetentionAt(ctx, time.Now())
}

func (s *Service) enforceRetentionAt(ctx context.Context, now time.Time) error {
	stream, err := s.js.Stream(ctx, subjects.AgentLogsStream)
	if err != nil {
		return fmt.Errorf("agent log stream: %w", err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subjects.AgentLogsAll()))
	if err != nil {
		return fmt.Errorf("agent log stream info: %w", err)
	}
	var errs []error
	for subject, count := range info.State.Subjects {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		id, ok := subjects.AgentLogsInstance(subject)
		if !ok {
			continue
		}
		if err := s.enforceOne(ctx, stream, id, count, now); err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) enforceOne(ctx context.Context, stream jetstream.Stream, id string, count uint64, now time.Time) error {
	inst, err := rpc.Call(ctx, s.bus, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id})
	if err != nil && !apierr.Is(err, apierr.KindNotFound) && !apierr.Is(err, apierr.KindInvalid) {
		return err
	}
	maxLines, maxAge := bus.AgentLogRetention(inst.GetLogRetention())
	subject := subjects.AgentLogs(id)
	if count > maxLines {
		if err := stream.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeKeep(maxLines)); err != nil {
			return fmt.Errorf("keep the newest %d lines: %w", maxLines, err)
		}
	}
	oldest, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("oldest line: %w", err)
	}
	cutoff := now.Add(-maxAge)
	if !oldest.Time.Before(cutoff) {
		return nil
	}
	// The first line stored at or after the cutoff: everything before goes.
	keepFrom, err := firstSince(ctx, stream, subject, cutoff)
	if err != nil {
		return err
	}
	opts := []jetstream.StreamPurgeOpt{jetstream.WithPurgeSubject(subject)}
	if keepFrom > 0 {
		opts = append(opts, jetstream.WithPurgeSequence(keepFrom))
	}
	if err := stream.Purge(ctx, opts...); err != nil {
		return fmt.Errorf("remove lines older than %s: %w", maxAge, err)
	}
	return nil
}

// firstSince returns the stream sequence of subject's first message stored
// at or after t, or 0 if there is none.
func firstSince(ctx context.Context, stream jetstream.Stream, subject string, t time.Time) (uint64, error) {
	var first uint64
	err := bus.ReadSubject(ctx, stream, subject, 0, t, func(_ jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		first = meta.Sequence.Stream
		return false
	})
	return first, err
}
