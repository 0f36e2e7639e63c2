package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/bus"
)

// defaultRedeliveryDelay is how long a message that failed every retry
// waits before it is delivered again.
const defaultRedeliveryDelay = 5 * time.Second

// Subscriber is a watermill subscriber over one durable JetStream consumer.
// It hands over one message at a time (or up to inFlight at once) and
// acknowledges each (waiting for the server's confirmation) when the
// handler succeeds, or asks for redelivery after its redelivery delay when
// it fails. Closing it stops the consumer, never the connection.
type Subscriber struct {
	cons     jetstream.Consumer
	log      *slog.Logger
	redelay  time.Duration
	inFlight int
	mu       sync.Mutex
	closing  chan struct{}
	closed   bool
	wg       sync.WaitGroup
}

var _ message.Subscriber = (*Subscriber)(nil)

// Subscribe starts consuming; topic is the consumer's filter (informational).
func (s *Subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	n := max(s.inFlight, 1)
	slots := make(chan struct{}, n)
	var delivering sync.WaitGroup
	handle := func(m jetstream.Msg) {
		if n == 1 {
			s.deliver(ctx, m, out)
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		case <-s.closing:
			return
		}
		delivering.Go(func() {
			defer func() { <-slots }()
			s.deliver(ctx, m, out)
		})
	}
	cc, err := s.cons.Consume(handle, jetstream.PullMaxMessages(max(16, 2*n)))
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", s.cons.CachedInfo().Name, err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		cc.Stop()
		<-cc.Closed()
		delivering.Wait() // each returns on ctx or closing; none may send on a closed out
		close(out)
	}()
	return out, nil
}

// deliver passes one JetStream message to the router and settles it.
func (s *Subscriber) deliver(ctx context.Context, m jetstream.Msg, out chan<- *message.Message) {
	msg := toWatermill(m)
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msg.SetContext(mctx)
	select {
	case out <- msg:
	case <-ctx.Done():
		return // not acknowledged: redelivered to whoever runs next
	case <-s.closing:
		return
	}
	select {
	case <-msg.Acked():
		if err := m.DoubleAck(ctx); err != nil {
			s.log.WarnContext(ctx, "acknowledge an event", "subject", m.Subject(), "error", err)
		}
	case <-msg.Nacked():
		_ = m.NakWithDelay(s.redelay)
	case <-ctx.Done():
	case <-s.closing:
	}
}

// Close stops consuming; a message being handled is not acknowledged and
// comes again.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// toWatermill makes a watermill message of a JetStream message: the
// Nats-Msg-Id as its UUID, the headers as metadata and the subject under
// bus.HeaderSubject.
func toWatermill(m jetstream.Msg) *message.Message {
	h := m.Headers()
	msg := message.NewMessage(h.Get(bus.HeaderMsgID), m.Data())
	for k, v := range h {
		if len(v) > 0 && k != bus.HeaderMsgID {
			msg.Metadata.Set(k, v[0])
		}
	}
	msg.Metadata.Set(bus.HeaderSubject, m.Subject())
	return msg
}

// Publisher is a watermill publisher to JetStream: each message goes to
// the topic (a subject) with its UUID as Nats-Msg-Id and its metadata as
// headers, and Publish returns once JetStream stored it (bus.Store: within
// 10 s, asking again while JetStream does not answer).
type Publisher struct {
	js jetstream.JetStream
}

var _ message.Publisher = (*Publisher)(nil)

// Publish stores msgs on the stream that holds topic.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		m := nats.NewMsg(topic)
		for k, v := range msg.Metadata {
			if k == bus.HeaderSubject {
				k = "Flotilla-Original-Subject"
			}
			// Header values are one line.
			m.Header.Set(k, strings.NewReplacer("\r", " ", "\n", " ").Replace(v))
		}
		m.Header.Set(bus.HeaderMsgID, msg.UUID)
		m.Data = msg.Payload
		ctx, cancel := context.WithTimeout(msg.Context(), 10*time.Second)
		_, err := bus.Store(ctx, p.js, m)
		cancel()
		if err != nil {
			return fmt.Errorf("publish to %s: %w", topic, err)
		}
	}
	return nil
}

// Close does nothing: the connection is the service's.
func (p *Publisher) Close() error { return nil }
