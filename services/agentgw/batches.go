package agentgw

import (
	"context"
	"sync"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/libs/apierr"
)

// batcher sends items to an endpoint that takes many at once (up to
// endpoints.MaxBatch), each caller waiting for its own item's answer. An
// item joins the queue, and the batches in flight (started on demand, at
// most flights) take whatever is queued when they go: a lone item goes at
// once, alone, and under load the items that arrive while a batch is out
// go together in the next. When thousands of agents come back at once
// (their gateway restarted), a few requests carry what one request each
// would: the bus, the serving service and the gateway pass a fraction of
// the messages.
type batcher[T any] struct {
	flights int
	// send asks about items and answers each (one error per item, nil
	// when it went through).
	send func(items []T) []error
	// waited, if set, is told how long each item sent waited in the queue.
	waited func(time.Duration)

	mu      sync.Mutex
	queue   []*queuedItem[T]
	running int
}

// queuedItem is one caller's item, waiting for its answer.
type queuedItem[T any] struct {
	ctx    context.Context // the caller's: an item whose caller gave up is not sent
	item   T
	queued time.Time
	done   chan error // buffered: a batch never waits for its caller
}

// do sends item in the next batch that goes and returns its answer, or
// ctx's error if ctx ends first.
func (b *batcher[T]) do(ctx context.Context, item T) error {
	q := &queuedItem[T]{ctx: ctx, item: item, queued: time.Now(), done: make(chan error, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, q)
	if b.running < b.flights {
		b.running++
		go b.run()
	}
	b.mu.Unlock()
	select {
	case err := <-q.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sends batches of the queued items until none is left.
func (b *batcher[T]) run() {
	for {
		batch := b.next()
		if batch == nil {
			return
		}
		items := make([]T, len(batch))
		for i, q := range batch {
			items[i] = q.item
		}
		for i, err := range b.send(items) {
			batch[i].done <- err
		}
	}
}

// next takes up to endpoints.MaxBatch queued items whose callers still
// wait, or returns nil (and counts this runner out) when none is queued.
func (b *batcher[T]) next() []*queuedItem[T] {
	b.mu.Lock()
	defer b.mu.Unlock()
	var batch []*queuedItem[T]
	for len(b.queue) > 0 && len(batch) < endpoints.MaxBatch {
		q := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		if b.waited != nil {
			b.waited(time.Since(q.queued))
		}
		if q.ctx.Err() == nil {
			batch = append(batch, q)
		}
	}
	if len(batch) == 0 { // the queue is empty
		b.queue = nil // let the backing array go after a burst
		b.running--
		return nil
	}
	return batch
}

// answers spreads a batch's answer over its n items: the request's error
// to every item if it failed (or answered for some items only), else each
// item's own, which answer turns into an error (nil: it went through).
func answers[R any](n int, results []R, err error, what string, answer func(R) error) []error {
	if err == nil && len(results) != n {
		err = apierr.Unavailable("%s answered %d of %d", what, len(results), n)
	}
	errs := make([]error, n)
	for i := range errs {
		if err != nil {
			errs[i] = err
		} else {
			errs[i] = answer(results[i])
		}
	}
	return errs
}
