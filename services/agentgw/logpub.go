package agentgw

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/msgcheck"
)

// Limits of log publishing.
const (
	// MaxLogsInFlight bounds the log lines of one agent stream published
	// and not yet acknowledged by JetStream; the stream's next batch is read
	// while earlier ones wait for their acknowledgements, until this many
	// wait.
	MaxLogsInFlight = 4096
	// maxLogsPending bounds the lines awaiting JetStream's acknowledgement
	// across every stream of one gateway; a publish finding it full waits
	// (up to the request timeout).
	maxLogsPending = 65536
	// ackEvery bounds how many stored lines wait for a LogAck.
	ackEvery = 512
	// republishFor is how long a line JetStream did not store is published
	// again before the agent's stream ends over it.
	republishFor = time.Minute
)

// cleanLogLine makes a line storable: a time if it has none, valid UTF-8
// (a protobuf string must be, or nothing of the batch could be published),
// and at most maxLogText of text.
func cleanLogLine(l *agentv1.LogLine, now time.Time) {
	if l.Time == nil {
		l.Time = timestamppb.New(now)
	}
	l.Text = strings.ToValidUTF8(l.Text, "\uFFFD")
	if len(l.Text) > maxLogText {
		l.Text = l.Text[:msgcheck.RuneCut(l.Text, maxLogText)] + msgcheck.CutMarker
	}
}

// logPublisher publishes one agent stream's log lines to JetStream without
// waiting for each batch's acknowledgements, and acknowledges them to the
// agent (LogAck) in order, once JetStream has acknowledged every line up to
// the one named.
type logPublisher struct {
	js jetstream.JetStream
	id string
	// timeout bounds a wait for room among the gateway's pending publishes.
	timeout time.Duration
	// ack sends a LogAck to the agent; it returns false once the stream ended.
	ack func(seq uint64) bool

	// gate keeps new lines back while an earlier one is published again
	// (republish holds it), so they land after it, in order.
	gate  sync.RWMutex
	slots chan struct{} // semaphore of MaxLogsInFlight
	queue pendingLines  // published lines in order, for the acknowledger
	once  sync.Once
	// The acknowledger runs only while lines wait; what it has
	// acknowledged is kept between its runs.
	acking  onDemand
	runs    sync.WaitGroup
	last    uint64 // the last line acknowledged by JetStream
	unsent  int    // lines acknowledged by JetStream and not yet to the agent
	errMu   sync.Mutex
	err     error
	failed  chan struct{} // closed on the first failure
	stopped chan struct{} // closed by stop: the stream ended
}

// pending is a published line waiting for JetStream's acknowledgement.
type pending struct {
	seq uint64
	f   jetstream.PubAckFuture
}

// pendingLines is the queue of published lines waiting for JetStream's
// acknowledgement. It holds memory only while lines wait: a gateway keeps
// one for each of its thousands of agents, nearly all quiet, and a channel
// of MaxLogsInFlight would hold ~100 KB each for the stream's life (and a
// restart's reconnects would allocate them all at once).
type pendingLines struct {
	mu    sync.Mutex
	lines []pending
	head  int // lines[head:] wait
}

func (q *pendingLines) push(l pending) {
	q.mu.Lock()
	if len(q.lines) == cap(q.lines) && q.head > 0 {
		// Full, with taken lines in front (it never emptied): move the
		// waiting ones down rather than grow.
		n := copy(q.lines, q.lines[q.head:])
		clear(q.lines[n:])
		q.lines, q.head = q.lines[:n], 0
	}
	q.lines = append(q.lines, l)
	q.mu.Unlock()
}

// pop takes the oldest line, if one waits.
func (q *pendingLines) pop() (pending, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.lines) {
		// Empty: start again at the front, and let a large array go.
		q.head = 0
		if cap(q.lines) > 64 {
			q.lines = nil
		} else {
			q.lines = q.lines[:0]
		}
		return pending{}, false
	}
	l := q.lines[q.head]
	q.lines[q.head] = pending{}
	q.head++
	return l, true
}

func (q *pendingLines) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.lines) - q.head
}

// newLogPublisher makes the publisher of one agent stream's lines.
func newLogPublisher(js jetstream.JetStream, id string, timeout time.Duration, ack func(seq uint64) bool) *logPublisher {
	p := &logPublisher{
		js: js, id: id, timeout: timeout, ack: ack,
		slots:   make(chan struct{}, MaxLogsInFlight),
		failed:  make(chan struct{}),
		stopped: make(chan struct{}),
	}
	return p
}

// Publish publishes lines asynchronously, waiting only for room among the
// lines in flight. An error (publishing failed, or an earlier line was not
// stored) ends the stream: the agent resends what was not acknowledged.
func (p *logPublisher) Publish(ctx context.Context, lines []*agentv1.LogLine) error {
	now := time.Now()
	for _, l := range lines {
		if l.GetSeq() == 0 {
			continue // not a line of an agent: it could never be acknowledged
		}
		cleanLogLine(l, now)
		m, err := bus.LogLineMsg(p.id, l)
		if err != nil {
			return err
		}
		select {
		case p.slots <- struct{}{}:
		case <-p.failed:
			return p.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
		p.gate.RLock()
		f, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(p.timeout))
		p.gate.RUnlock()
		if err != nil {
			<-p.slots
			return fmt.Errorf("publish log line %d of %s: %w", l.GetSeq(), p.id, err)
		}
		p.queue.push(pending{seq: l.GetSeq(), f: f})
		p.acking.start(func() {
			p.runs.Add(1)
			go p.acknowledge()
		})
	}
	return nil
}

// acknowledge waits for JetStream's acknowledgements in publishing order and
// tells the agent how far its lines are stored: one LogAck for the last of
// a run of lines whose acknowledgements were already in, and at least one
// every ackEvery lines, so the agent's buffer empties while lines flow. It
// returns once every line published is acknowledged to the agent, or the
// stream ended.
func (p *logPublisher) acknowledge() {
	defer p.runs.Done()
	// held: the gate is closed to new lines since one had to be published
	// again; it opens once every line published before it closed is stored.
	held := false
	defer func() {
		if held {
			p.gate.Unlock()
		}
	}()
	for {
		if held && p.queue.len() == 0 {
			p.gate.Unlock()
			held = false
		}
		if p.unsent >= ackEvery {
			if !p.ack(p.last) {
				return
			}
			p.unsent = 0
		}
		next, ok := p.queue.pop()
		if !ok {
			if p.unsent > 0 {
				if !p.ack(p.last) {
					return
				}
				p.unsent = 0
			}
			if !p.acking.stop(func() bool { return p.queue.len() > 0 }) {
				return
			}
			continue
		}
		// The JetStream context times out an acknowledgement that does not
		// come (WithPublishAsyncTimeout).
		select {
		case <-next.f.Ok():
		case err := <-next.f.Err():
			if !held {
				p.gate.Lock()
				held = true
			}
			if err = p.republish(next, err); err != nil {
				p.fail(fmt.Errorf("store log line %d of %s: %w", next.seq, p.id, err))
				return
			}
		case <-p.stopped:
			return
		}
		p.last, p.unsent = max(p.last, next.seq), p.unsent+1
		<-p.slots
	}
}

// republish stores a line JetStream did not acknowledge — a stream without
// a leader for a moment, a server restarting — by publishing it again with
// its message id (bus.Store: JetStream drops a copy), for up to
// republishFor. The lines after it wait for it, so the agent's stream stays
// up and its lines stay in order instead of the agent reconnecting again
// and again while the stream elects a leader. It returns the last error
// when it gives up or the failure is not one to try again (the stream then
// ends, and the agent resends), or the stream ended.
func (p *logPublisher) republish(next pending, err error) error {
	if !bus.StoreAgain(err) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), republishFor)
	defer cancel()
	go func() {
		select {
		case <-p.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err = bus.Store(ctx, p.js, next.f.Msg())
	return err
}

func (p *logPublisher) fail(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
		close(p.failed)
	}
	p.errMu.Unlock()
}

// Err returns the failure that ends the stream, if any.
func (p *logPublisher) Err() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// Failed is closed when a line could not be stored.
func (p *logPublisher) Failed() <-chan struct{} { return p.failed }

// Finish waits until every line published so far is acknowledged to the
// agent (nothing more may be published), or a failure, or the stream's end.
func (p *logPublisher) Finish(ctx context.Context) error {
	for {
		if len(p.slots) == 0 && p.queue.len() == 0 {
			// Let the acknowledger send its last LogAck.
			p.runs.Wait()
			p.Stop()
			return p.Err()
		}
		select {
		case <-p.failed:
			p.Stop()
			return p.Err()
		case <-ctx.Done():
			p.Stop()
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Stop ends the acknowledger; lines still in flight are not acknowledged
// to the agent, which resends them on its next stream.
func (p *logPublisher) Stop() { p.once.Do(func() { close(p.stopped) }) }
