package agentgw

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/msgcheck"
	"flotilla.dev/flotilla/libs/rpc"
)

// maxLogText bounds one log line's text on the bus; longer lines are cut.
const maxLogText = 32 << 10

// maxReportText bounds each text of an agent's report (a progress message,
// a node URL, a disconnect reason): they end up in the instance's record.
const maxReportText = 2 << 10

// retryable reports whether a failed request may succeed if sent again.
func retryable(err error) bool {
	if errors.Is(err, nats.ErrConnectionClosed) {
		return false
	}
	switch apierr.KindOf(err) {
	case apierr.KindUnavailable, apierr.KindInternal, apierr.KindConflict:
		return true
	}
	return false
}

// eventType is the Flotilla-Type of an agent event: "agent.<body>".
func eventType(ev *agentv1.AgentEvent) string {
	switch ev.GetBody().(type) {
	case *agentv1.AgentEvent_Connected:
		return "agent.connected"
	case *agentv1.AgentEvent_Disconnected:
		return "agent.disconnected"
	case *agentv1.AgentEvent_Heartbeat:
		return "agent.heartbeat"
	case *agentv1.AgentEvent_Progress:
		return "agent.progress"
	}
	return "agent.event"
}

// deliver puts an agent event on the bus: published on the agent's status
// subject for live watchers, then sent to the inventory's lifecycle.observe,
// retried for up to ObserveRetry when retry is set. A failure is logged:
// the agent carries on either way.
func (s *Service) deliver(ctx context.Context, ev *agentv1.AgentEvent, retry bool) {
	// What an agent reports is text a program printed: a NUL byte in it is
	// shown, not a reason for the inventory to refuse the event, and no
	// report is long enough to swell the instance's record.
	msgcheck.Scrub(ev, maxReportText)
	id := ev.GetInstanceId()
	typ := eventType(ev)
	msg, err := bus.NewMessage(ctx, subjects.AgentStatus(id), typ, vocab.Agent(id), ev.GetTime().AsTime(), ev)
	if err == nil {
		err = s.nc.PublishMsg(&nats.Msg{Subject: msg.Subject, Header: msg.Header, Data: msg.Data})
	}
	if err != nil {
		s.log.WarnContext(ctx, "publish agent status", "instance_id", id, "type", typ, "error", err)
	}

	deadline := time.Now().Add(s.observeRetry)
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := rpc.Call(ctx, s.bus, endpoints.LifecycleObserve, ev, rpc.As(vocab.Agent(id)))
		if err == nil {
			return
		}
		if !retry || !retryable(err) || time.Now().Add(wait).After(deadline) || ctx.Err() != nil {
			s.log.WarnContext(ctx, "the inventory did not take an agent event", "instance_id", id, "type", typ,
				"attempts", attempt, "error", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(rand.N(wait) + wait/2):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// publishLogs appends lines to the agent-log stream under the instance's
// subject, each with the message id "<instance-id>-<seq>", and waits until
// JetStream has stored (or de-duplicated) every one.
func (s *Service) publishLogs(ctx context.Context, id string, lines []*agentv1.LogLine) error {
	futures := make([]jetstream.PubAckFuture, 0, len(lines))
	now := time.Now()
	for _, l := range lines {
		if l.GetSeq() == 0 {
			s.log.WarnContext(ctx, "dropped an agent log line without a sequence number", "instance_id", id)
			continue
		}
		if l.Time == nil {
			l.Time = timestamppb.New(now)
		}
		// A line is stored as a protobuf string: valid UTF-8, or nothing of
		// the agent's batch could be published.
		l.Text = strings.ToValidUTF8(l.Text, "\uFFFD")
		if len(l.Text) > maxLogText {
			l.Text = l.Text[:msgcheck.RuneCut(l.Text, maxLogText)] + msgcheck.CutMarker
		}
		msg, err := bus.NewMessage(ctx, subjects.AgentLogs(id), "agent.log", vocab.Agent(id), l.GetTime().AsTime(), l)
		if err != nil {
			return err
		}
		msg.Header.Set(bus.HeaderMsgID, id+"-"+strconv.FormatUint(l.GetSeq(), 10))
		f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: msg.Subject, Header: msg.Header, Data: msg.Data})
		if err != nil {
			return fmt.Errorf("publish log line %d of %s: %w", l.GetSeq(), id, err)
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(s.requestTimeout)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("store log lines of %s: %w", id, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("store log lines of %s: no acknowledgement from JetStream in %s", id, s.requestTimeout)
		}
	}
	return nil
}
