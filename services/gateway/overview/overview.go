// Package overview is the fleet overview's read model: how many instances
// are in each state, rebuilt by replaying the instance events of
// FLOTILLA_EVENTS (each carries the instance after the change) and kept
// current by following them. It holds no database: the event stream is its
// source, so any gateway can rebuild it at start.
package overview

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
)

// Overview counts instances by state.
type Overview struct {
	mu     sync.Mutex
	state  map[string]string // instance id → state
	counts map[string]int    // state → instances
	seq    uint64            // last stream sequence applied
}

// New returns an empty overview.
func New() *Overview {
	return &Overview{state: map[string]string{}, counts: map[string]int{}}
}

// Counts returns how many instances are in each state.
func (o *Overview) Counts() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.counts)
}

// Apply takes one instance event (its subject and encoded envelope) at
// stream sequence seq; events at or before the last one applied are
// skipped, so replays and redeliveries change nothing.
func (o *Overview) Apply(seq uint64, subject string, data []byte) error {
	entity, id, verb, ok := subjects.ParseEvent(subject)
	if !ok || entity != subjects.NounInstance {
		return nil
	}
	ev := &eventsv1.Event{}
	in := &inventoryv1.Instance{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return fmt.Errorf("event %d: %w", seq, err)
	}
	if err := ev.GetData().UnmarshalTo(in); err != nil {
		return fmt.Errorf("event %d: %w", seq, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq <= o.seq {
		return nil
	}
	o.seq = seq
	if old, ok := o.state[id]; ok {
		o.counts[old]--
		if o.counts[old] == 0 {
			delete(o.counts, old)
		}
	}
	if vocab.Verb(verb) == vocab.VerbDeleted {
		delete(o.state, id)
		return nil
	}
	o.state[id] = in.GetState()
	o.counts[in.GetState()]++
	return nil
}

// Rebuild replays every instance event the stream holds now, from the
// start, and returns how many it applied. It ends at the event that was
// the last when it was delivered (the consumer says none were pending), or
// when the stream offers nothing for a second.
func (o *Overview) Rebuild(ctx context.Context, js jetstream.JetStream) (int, error) {
	cons, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, "*")}})
	if err != nil {
		return 0, fmt.Errorf("replay events: %w", err)
	}
	n := 0
	for {
		batch, err := cons.Fetch(4096, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return n, fmt.Errorf("replay events: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				return n, err
			}
			if err := o.Apply(meta.Sequence.Stream, m.Subject(), m.Data()); err != nil {
				return n, err
			}
			n++
			if meta.NumPending == 0 {
				return n, nil
			}
		}
		if err := batch.Error(); err != nil {
			return n, fmt.Errorf("replay events: %w", err)
		}
		if got == 0 {
			return n, nil
		}
	}
}
