package events_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/events"
	"flotilla.dev/flotilla/libs/testkit"
)

type env struct {
	t     *testing.T
	js    jetstream.JetStream
	spans *tracetest.SpanRecorder
	tp    *sdktrace.TracerProvider
}

func newEnv(t *testing.T) *env {
	t.Helper()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(t.Context(), js, 1); err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewSpanRecorder()
	return &env{t: t, js: js, spans: spans, tp: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))}
}

// router declares one handler for network events and runs it until the
// test ends; start false declares it without running it.
func (e *env) router(h events.Handler, start bool, opts ...events.HandlerOption) func() {
	e.t.Helper()
	r, err := events.NewRouter(e.js, subjects.Secrets, slog.New(slog.DiscardHandler), e.tp, events.WithRedeliveryDelay(200*time.Millisecond))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := r.Handle(e.t.Context(), subjects.EventsStream, subjects.EntityVerbEvents(subjects.NounNetwork, string(vocab.VerbCreated)),
		jetstream.ConsumerConfig{Durable: "test-consumer"}, h, opts...); err != nil {
		e.t.Fatal(err)
	}
	run := func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		<-r.Running()
		e.t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("router: %v", err)
			}
		})
	}
	if start {
		run()
	}
	return run
}

// publish puts a network.created event on the stream, inside a span.
func (e *env) publish(id string) (bus.Message, trace.SpanContext) {
	e.t.Helper()
	ctx, span := e.tp.Tracer("test").Start(context.Background(), "request")
	defer span.End()
	m, err := bus.NewEvent(ctx, subjects.NounNetwork, id, vocab.VerbCreated, vocab.User("ada"), 1, time.Now(), &systemv1.PingResponse{Service: id})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.js.PublishMsg(ctx, m.NATS()); err != nil {
		e.t.Fatal(err)
	}
	return m, span.SpanContext()
}

// pending is how many messages the consumer has not had acknowledged.
func (e *env) unsettled() (pending uint64, ackPending int) {
	e.t.Helper()
	c, err := e.js.Consumer(context.Background(), subjects.EventsStream, "test-consumer")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.NumPending, info.NumAckPending
}

// TestAHandledEventIsAcknowledgedInItsTrace: the handler sees the event,
// its span continues the publisher's trace, and the consumer is settled.
func TestAHandledEventIsAcknowledgedInItsTrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var got atomic.Value
	e.router(func(msg *message.Message) error {
		got.Store(trace.SpanContextFromContext(msg.Context()))
		return nil
	}, true)
	m, parent := e.publish("n-1")
	testkit.WaitFor(t, 15*time.Second, "the event to be handled and acknowledged", func() bool {
		p, a := e.unsettled()
		return got.Load() != nil && p == 0 && a == 0
	})
	sc := got.Load().(trace.SpanContext)
	if sc.TraceID() != parent.TraceID() {
		t.Fatalf("handler span in trace %s, want the publisher's %s", sc.TraceID(), parent.TraceID())
	}
	for _, s := range e.spans.Ended() {
		if s.SpanContext().SpanID() == sc.SpanID() {
			if s.Parent().SpanID() != parent.SpanID() || s.SpanKind() != trace.SpanKindConsumer {
				t.Fatalf("handler span parent %v kind %v", s.Parent(), s.SpanKind())
			}
			if want := "test-consumer process " + m.Subject; s.Name() != want {
				t.Fatalf("span %q, want %q", s.Name(), want)
			}
			return
		}
	}
	// The span ends after the handler returns; give it a moment.
	testkit.WaitFor(t, 15*time.Second, "the handler span to end", func() bool {
		for _, s := range e.spans.Ended() {
			if s.SpanContext().SpanID() == sc.SpanID() {
				return true
			}
		}
		return false
	})
}

// TestTransientFailuresAreRetriedThenRedelivered: a handler failing fewer
// times than the retries succeeds within one delivery; one failing longer
// is negatively acknowledged and gets the message again later.
func TestTransientFailuresAreRetriedThenRedelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var mu sync.Mutex
	attempts := map[string]int{}
	e.router(func(msg *message.Message) error {
		id := msg.UUID
		mu.Lock()
		defer mu.Unlock()
		attempts[id]++
		if attempts[id] <= events.MaxRetries+2 { // more than one delivery's worth
			return errors.New("database is restarting")
		}
		return nil
	}, true)
	m, _ := e.publish("n-2")
	testkit.WaitFor(t, 15*time.Second, "the event to be handled after a redelivery", func() bool {
		p, a := e.unsettled()
		mu.Lock()
		defer mu.Unlock()
		return attempts[m.ID()] == events.MaxRetries+3 && p == 0 && a == 0
	})
	c, _ := e.js.Consumer(context.Background(), subjects.EventsStream, "test-consumer")
	info, _ := c.Info(context.Background())
	if info.NumRedelivered != 0 || info.Delivered.Consumer < 2 {
		t.Fatalf("consumer %+v: want the message delivered twice and settled", info.Delivered)
	}
}

// TestPoisonGoesAsideAndIsAcknowledged: a message the handler can never
// handle is stored on the poison stream with the reason and acknowledged,
// and the next message is handled.
func TestPoisonGoesAsideAndIsAcknowledged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var handled atomic.Int32
	var calls atomic.Int32
	e.router(func(msg *message.Message) error {
		calls.Add(1)
		if msg.Metadata.Get(bus.HeaderSubject) == subjects.Event(subjects.NounNetwork, "bad", string(vocab.VerbCreated)) {
			return events.Permanent(errors.New("the event names no network"))
		}
		handled.Add(1)
		return nil
	}, true)
	bad, _ := e.publish("bad")
	e.publish("good")
	testkit.WaitFor(t, 15*time.Second, "both events settled", func() bool {
		p, a := e.unsettled()
		return handled.Load() == 1 && p == 0 && a == 0
	})
	if calls.Load() != 2 {
		t.Errorf("handler called %d times: a permanent failure must not be retried", calls.Load())
	}
	s, err := e.js.Stream(context.Background(), subjects.PoisonStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), subjects.Poison(subjects.Secrets))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(bus.HeaderMsgID) != bad.ID() || m.Header.Get("reason_poisoned") != "the event names no network" ||
		m.Header.Get("Flotilla-Original-Subject") != bad.Subject || string(m.Data) != string(bad.Data) {
		t.Fatalf("poisoned message %v", m.Header)
	}
}

// TestEventsWaitForTheirHandler: the consumer exists once Handle returns,
// so an event published before the router runs is handled when it does.
func TestEventsWaitForTheirHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var handled atomic.Int32
	run := e.router(func(*message.Message) error { handled.Add(1); return nil }, false)
	e.publish("early")
	time.Sleep(100 * time.Millisecond)
	if handled.Load() != 0 {
		t.Fatal("handled before the router ran")
	}
	run()
	testkit.WaitFor(t, 15*time.Second, "the early event to be handled", func() bool { return handled.Load() == 1 })
}

// TestInFlightHandlesSeveralAtOnce: with InFlight(n) the handler has n
// messages at once (a handler that waits for n callers only finishes
// because of that), never more, and every message is acknowledged.
func TestInFlightHandlesSeveralAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, total = 4, 40
	var now, most, handled atomic.Int32
	gate := make(chan struct{})
	var once sync.Once
	e.router(func(*message.Message) error {
		cur := now.Add(1)
		defer now.Add(-1)
		for m := most.Load(); cur > m && !most.CompareAndSwap(m, cur); m = most.Load() {
		}
		if cur == n {
			once.Do(func() { close(gate) })
		}
		select {
		case <-gate:
		case <-time.After(10 * time.Second):
			return events.Permanent(errors.New("the other handlers never came"))
		}
		handled.Add(1)
		return nil
	}, true, events.InFlight(n))
	for i := range total {
		e.publish(fmt.Sprintf("n-%d", i))
	}
	testkit.WaitFor(t, 15*time.Second, "every message handled and acknowledged", func() bool {
		p, a := e.unsettled()
		return handled.Load() >= total && p == 0 && a == 0
	})
	if m := most.Load(); m != n {
		t.Fatalf("at most %d handled at once, want %d", m, n)
	}
}
