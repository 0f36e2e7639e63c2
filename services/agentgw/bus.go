package agentgw

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"

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
// subject for live watchers, then sent to the inventory in the next batch
// of events (lifecycle.observe-many), retried for up to ObserveRetry when
// retry is set. A failure is logged: the agent carries on either way. Each
// stream delivers its events one at a time, so an agent's events reach the
// inventory in order.
func (s *Service) deliver(ctx context.Context, ev *agentv1.AgentEvent, retry bool) {
	// What an agent reports is text a program printed: a NUL byte in it is
	// shown, not a reason for the inventory to refuse the event, and no
	// report is long enough to swell the instance's record.
	msgcheck.Scrub(ev, maxReportText)
	id := ev.GetInstanceId()
	typ := eventType(ev)
	msg, err := bus.NewMessage(ctx, subjects.AgentStatus(id), typ, vocab.Agent(id), ev.GetTime().AsTime(), ev)
	if err == nil {
		err = s.nc.PublishMsg(msg.NATS())
	}
	if err != nil {
		s.log.WarnContext(ctx, "publish agent status", "instance_id", id, "type", typ, "error", err)
	}

	deadline := time.Now().Add(s.observeRetry)
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.events.do(ctx, ev)
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

// maxEventBatches bounds the batches of agent events in flight to the
// inventory at once. In the steady state most batches carry an event or
// two; after a gateway restart, thousands of agents' connects and first
// heartbeats go 256 to a request.
const maxEventBatches = 4

// newEvents batches the agents' events to the inventory.
func (s *Service) newEvents() *batcher[*agentv1.AgentEvent] {
	return &batcher[*agentv1.AgentEvent]{flights: maxEventBatches, send: s.sendEvents}
}

// sendEvents reports a batch of agent events to the inventory and answers
// each.
func (s *Service) sendEvents(batch []*agentv1.AgentEvent) []error {
	// The gateway reports as itself: it verified each agent's certificate.
	resp, err := rpc.Call(context.Background(), s.bus, endpoints.LifecycleObserveMany, &agentv1.AgentEvents{Events: batch})
	return answers(len(batch), resp.GetResults(), err, "the inventory", func(r *agentv1.AgentEventResult) error {
		return apierr.FromItem(r.GetErrorKind(), r.GetErrorReason(), r.GetErrorMessage())
	})
}
