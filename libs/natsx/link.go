package natsx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrConnectionLost is the cause of a Request that was waiting for its
// reply when its connection to the bus was lost, and had none LostReplyGrace
// after the connection came back: the reply was most likely sent while the
// client was away, and the request may or may not have been handled.
var ErrConnectionLost = errors.New("the bus connection was lost while the request waited for its reply; it may or may not have been handled")

// LostReplyGrace is how long a Request sent before its connection was lost
// still waits for its reply once the connection is back. A reply the
// service sends after this client subscribed again still arrives; one it
// sent while the client was away never will, and without this bound the
// request would wait out its whole timeout (10 s by default) for it.
const LostReplyGrace = 2 * time.Second

// links holds the watch of every connection made by Connect or
// ConnectInProcess (*nats.Conn → *link), until the connection closes.
var links sync.Map

// link follows one connection's status: requests register on the current
// epoch, which ends (with ErrConnectionLost) LostReplyGrace after the
// connection came back from a loss that happened while it was current.
type link struct {
	epoch atomic.Pointer[epoch]
	// gate holds new requests while the connection is made again on
	// purpose (homing's), once those in flight are answered.
	gate gate

	mu        sync.Mutex
	quiescers map[*Quiescer]struct{}
}

// A Quiescer is a responder's part in a reconnection made on purpose
// (homing's): the server lets a client answer only the requests it
// received on its current connection (NATS response permissions), so an
// answer sent after the reconnection to a request received before would
// be refused, and its caller left waiting out its timeout. Pause stops
// taking requests and returns once those received are answered (or ctx
// ends); resume takes them again once the connection is back.
type Quiescer struct {
	pause func(ctx context.Context) (resume func())
	l     *link
}

// OnRemake registers pause to run before nc, made by Connect, is made
// again on purpose (see Quiescer); Remove unregisters it. On a connection
// that Connect did not make, pause never runs.
func OnRemake(nc *nats.Conn, pause func(ctx context.Context) (resume func())) *Quiescer {
	q := &Quiescer{pause: pause}
	if v, ok := links.Load(nc); ok {
		q.l = v.(*link)
		q.l.mu.Lock()
		if q.l.quiescers == nil {
			q.l.quiescers = map[*Quiescer]struct{}{}
		}
		q.l.quiescers[q] = struct{}{}
		q.l.mu.Unlock()
	}
	return q
}

// Remove unregisters q.
func (q *Quiescer) Remove() {
	if q.l == nil {
		return
	}
	q.l.mu.Lock()
	delete(q.l.quiescers, q)
	q.l.mu.Unlock()
}

// pause pauses every registered responder, all at once, within ctx, and
// returns what resumes them all.
func (l *link) pause(ctx context.Context) (resume func()) {
	l.mu.Lock()
	qs := make([]*Quiescer, 0, len(l.quiescers))
	for q := range l.quiescers {
		qs = append(qs, q)
	}
	l.mu.Unlock()
	resumes := make([]func(), len(qs))
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Go(func() { resumes[i] = q.pause(ctx) })
	}
	wg.Wait()
	return func() {
		for _, r := range resumes {
			if r != nil {
				r()
			}
		}
	}
}

// gate counts a connection's requests in flight (Bounded) and can hold new
// ones: hold waits, up to a bound, for those in flight to end, and new ones
// wait until release.
type gate struct {
	mu     sync.Mutex
	n      int           // requests in flight
	held   chan struct{} // non-nil while held: closed at release
	notify chan struct{} // non-nil while hold waits: closed when n reaches 0
}

// enter counts a request in flight, after waiting out a hold; it fails
// only when ctx ends first.
func (g *gate) enter(ctx context.Context) error {
	g.mu.Lock()
	for g.held != nil {
		held := g.held
		g.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		g.mu.Lock()
	}
	g.n++
	g.mu.Unlock()
	return nil
}

// leave ends a request entered.
func (g *gate) leave() {
	g.mu.Lock()
	g.n--
	if g.n == 0 && g.notify != nil {
		close(g.notify)
		g.notify = nil
	}
	g.mu.Unlock()
}

// hold makes new requests wait and waits until those in flight have ended,
// or for max; release lets the waiting ones go.
func (g *gate) hold(max time.Duration) (release func()) {
	g.mu.Lock()
	held := make(chan struct{})
	g.held = held
	var idle chan struct{}
	if g.n > 0 {
		idle = make(chan struct{})
		g.notify = idle
	}
	g.mu.Unlock()
	if idle != nil {
		t := time.NewTimer(max)
		select {
		case <-idle:
		case <-t.C:
		}
		t.Stop()
	}
	g.mu.Lock()
	g.notify = nil
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		close(held)
		g.held = nil
		g.mu.Unlock()
	}
}

type epoch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func newEpoch() *epoch {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &epoch{ctx: ctx, cancel: cancel}
}

// watch starts following nc's status for Request.
func watch(nc *nats.Conn) {
	l := &link{}
	l.epoch.Store(newEpoch())
	ch := nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	links.Store(nc, l)
	go l.follow(nc, ch)
}

// follow ends the epochs of requests sent before a loss once the
// connection has been back for LostReplyGrace, and every epoch when the
// connection closes.
func (l *link) follow(nc *nats.Conn, ch chan nats.Status) {
	defer links.Delete(nc)
	var lost []*epoch // sent before the connection was lost, waiting for it to come back
	for s := range ch {
		switch s {
		case nats.RECONNECTING, nats.DISCONNECTED:
			// Requests made from now on wait in the client's buffer and
			// are sent when the connection is back: a new epoch.
			if len(lost) == 0 {
				lost = append(lost, l.epoch.Swap(newEpoch()))
			}
		case nats.CONNECTED:
			for _, e := range lost {
				time.AfterFunc(LostReplyGrace, func() { e.cancel(ErrConnectionLost) })
			}
			lost = nil
		case nats.CLOSED:
			for _, e := range append(lost, l.epoch.Load()) {
				e.cancel(nats.ErrConnectionClosed)
			}
			nc.RemoveStatusListener(ch)
			return
		}
	}
}

// Bounded runs do, a request on nc (a JetStream publish, say), with a
// context that ends as Request's does when nc loses its connection: a
// request sent before the loss and unanswered LostReplyGrace after the
// connection is back fails wrapping ErrConnectionLost, as does one that
// nats.go gave up when the connection was made again on purpose
// (ForceReconnect, homing's). While homing makes the connection again, do
// waits to be run until the connection is back (see homing.follow). On a
// connection not made by Connect or ConnectInProcess it runs do with ctx.
func Bounded(ctx context.Context, nc *nats.Conn, do func(context.Context) error) error {
	v, ok := links.Load(nc)
	if !ok {
		return do(ctx)
	}
	l := v.(*link)
	if err := l.gate.enter(ctx); err != nil {
		return err
	}
	defer l.gate.leave()
	e := l.epoch.Load()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(e.ctx, func() { cancel(context.Cause(e.ctx)) })
	defer stop()
	err := do(ctx)
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrConnectionLost) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	if errors.Is(err, nats.ErrDisconnected) {
		// nats.go gave the request up when its connection was made again
		// on purpose (ForceReconnect: a connection going back to its home
		// server): a reply can no longer reach it.
		return fmt.Errorf("%w (%v)", ErrConnectionLost, err)
	}
	return err
}
