package provisioner

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
)

// wakers wake the provisioner's waits when something happens to their
// instance (or rollout). Every change the inventory records (an agent connecting, its
// progress, an operator's newer request, a failure) is an event on
// FLOTILLA_EVENTS; one ordered consumer per provisioner reads the new ones
// and wakes whoever waits on that instance, who then reads the instance
// again. Nothing polls: a wait costs a goroutine and no worker slot.
type wakers struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{}
}

func newWakers() *wakers { return &wakers{m: map[string]map[chan struct{}]struct{}{}} }

// add registers a wait on instance id; the returned channel receives when
// an event of the instance arrives after add. Call cancel when done.
func (w *wakers) add(id string) (wake <-chan struct{}, cancel func()) { return w.addMany([]string{id}) }

// addMany registers one wait on each of ids (instances, or a rollout): the
// returned channel receives when an event of any of them arrives after
// addMany. Call cancel when done.
func (w *wakers) addMany(ids []string) (wake <-chan struct{}, cancel func()) {
	c := make(chan struct{}, 1)
	w.mu.Lock()
	for _, id := range ids {
		if w.m[id] == nil {
			w.m[id] = map[chan struct{}]struct{}{}
		}
		w.m[id][c] = struct{}{}
	}
	w.mu.Unlock()
	return c, func() {
		w.mu.Lock()
		for _, id := range ids {
			delete(w.m[id], c)
			if len(w.m[id]) == 0 {
				delete(w.m, id)
			}
		}
		w.mu.Unlock()
	}
}

// wake signals every wait on instance id.
func (w *wakers) wake(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.m[id] {
		select {
		case c <- struct{}{}:
		default: // already signalled
		}
	}
}

// wakeAll signals every wait: events may have been missed.
func (w *wakers) wakeAll() {
	w.mu.Lock()
	ids := make([]string, 0, len(w.m))
	for id := range w.m {
		ids = append(ids, id)
	}
	w.mu.Unlock()
	for _, id := range ids {
		w.wake(id)
	}
}

// watch reads instance and rollout events from now on until ctx ends,
// waking the waits on each event's instance or rollout. The client recreates the ordered consumer after
// a gap (reconnect, server restart) and resumes after the last event it
// delivered; whenever it reports trouble every wait is woken to look for
// itself, in case an event went by meanwhile. Creating the consumer is
// retried until it works.
func (w *wakers) watch(ctx context.Context, js jetstream.JetStream, onErr func(error)) {
	retry := 100 * time.Millisecond
	for ctx.Err() == nil {
		cc, err := w.consume(ctx, js, onErr)
		if err == nil {
			<-ctx.Done()
			cc.Stop()
			return
		}
		onErr(err)
		w.wakeAll()
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, 5*time.Second)
	}
}

func (w *wakers) consume(ctx context.Context, js jetstream.JetStream, onErr func(error)) (jetstream.ConsumeContext, error) {
	cons, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, "*"), subjects.EntityEvents(subjects.NounRollout, "*")},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, err
	}
	return cons.Consume(func(m jetstream.Msg) {
		if _, id, _, ok := subjects.ParseEvent(m.Subject()); ok {
			w.wake(id)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		onErr(err)
		w.wakeAll()
	}))
}
