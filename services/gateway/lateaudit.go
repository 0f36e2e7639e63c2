package gateway

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	"flotilla.dev/flotilla/libs/bus"
)

// An API call's audit record that JetStream does not store within
// AuditWait (its stream electing a leader, say) is not given up: the call
// ends, and the record is stored in the background (lateAudits), for up
// to LateAuditFor after the call, one record after another in the order
// they came. While records are late, a new call's record joins them at
// once: the call does not wait for a stream that has not answered the
// records before it, and no record overtakes them. So does one made while
// another call's record has waited auditStalled for its store: that call
// is still in flight, so a later call's record stored before it reorders
// nothing a client has seen, and the calls made in a stream's first
// seconds without a leader do not each wait AuditWait. At most
// LateAuditCap wait; one more is logged as not written at once.
const (
	// AuditWait is how long a call waits for its record: a store takes
	// milliseconds, and a leader election (4 to 9 s) need not hold every
	// call for as long as the services that must not act unaudited wait
	// (bus.AuditTimeout).
	AuditWait = 2 * time.Second
	// LateAuditFor is well within the stream's duplicate window
	// (bus.DuplicateWindow): a record stored by a try whose
	// acknowledgement was lost is never stored twice.
	LateAuditFor = 5 * time.Minute
	LateAuditCap = 10000
)

// auditStalled is how long a call's record may wait for its store before
// new calls' records join the late ones (a store takes milliseconds).
const auditStalled = 500 * time.Millisecond

// lateAuditFlush is how long a stopping gateway goes on storing the
// records waiting, after its servers stopped.
const lateAuditFlush = 5 * time.Second

// lateAudit is an audit record waiting to be stored: its message (the
// same id on every try) and what it says, to log.
type lateAudit struct {
	msg *nats.Msg
	rec *auditv1.ApiCall
}

// lateAudits holds the records waiting and the one goroutine that stores
// them (work).
type lateAudits struct {
	js  jetstream.JetStream
	log *slog.Logger
	// mu guards closed and sends on queue.
	mu     sync.Mutex
	closed bool
	queue  chan lateAudit
	// waiting counts the records taken and not yet stored or given up.
	waiting atomic.Int64
	// stalled counts the calls whose record has waited auditStalled for
	// its store (storeNow) and waits still.
	stalled atomic.Int64
	// cancel ends the store in hand; done is closed when work returns.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newLateAudits(js jetstream.JetStream, log *slog.Logger) *lateAudits {
	registerMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	return &lateAudits{js: js, log: log, queue: make(chan lateAudit, LateAuditCap), ctx: ctx, cancel: cancel,
		done: make(chan struct{})}
}

// add keeps a record to be stored by work, and says whether it did: not
// when LateAuditCap records wait already, or the gateway has stopped.
func (l *lateAudits) add(a lateAudit) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	select {
	case l.queue <- a:
		l.waiting.Add(1)
		metrics.lateAudits.Inc()
		return true
	default:
		return false
	}
}

// behind is how many records a new call's record would wait behind: those
// late, and those of calls whose store has stalled. When there are any, it
// joins the late ones at once.
func (l *lateAudits) behind() int64 { return l.waiting.Load() + l.stalled.Load() }

// storeNow stores a call's record within AuditWait, counted as stalled
// while it has waited auditStalled.
func (l *lateAudits) storeNow(ctx context.Context, msg *nats.Msg) error {
	t := time.AfterFunc(auditStalled, func() { l.stalled.Add(1) })
	err := bus.StoreAudit(ctx, l.js, msg, AuditWait)
	if !t.Stop() { // it ran, or runs now
		l.stalled.Add(-1)
	}
	return err
}

// work stores the records waiting, in the order they came, until close.
func (l *lateAudits) work() {
	defer close(l.done)
	for a := range l.queue {
		l.store(a)
		l.waiting.Add(-1)
		metrics.lateAudits.Dec()
	}
}

// store stores a until LateAuditFor after its call, or logs it as not
// written.
func (l *lateAudits) store(a lateAudit) {
	within := time.Until(a.rec.GetTime().AsTime().Add(LateAuditFor))
	err := bus.StoreAudit(l.ctx, l.js, a.msg, within)
	if err != nil {
		l.notWritten(context.Background(), a.rec, err)
		return
	}
	l.log.Info("late audit record stored", "route", a.rec.GetRoute(), "user", a.rec.GetUsername(),
		"trace_id", a.rec.GetTraceId(), "late", time.Since(a.rec.GetTime().AsTime()).Round(time.Millisecond))
}

// notWritten gives rec up: counted, and logged with all it holds.
func (l *lateAudits) notWritten(ctx context.Context, rec *auditv1.ApiCall, err error) {
	metrics.auditsUnwritten.Inc()
	l.log.ErrorContext(ctx, "audit record not written", append(recordAttrs(rec), "error", err)...)
}

// close takes no more records, and waits until ctx ends for those waiting
// to be stored; each still waiting then is logged as not written.
func (l *lateAudits) close(ctx context.Context) {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.queue)
	}
	l.mu.Unlock()
	select {
	case <-l.done:
	case <-ctx.Done():
		l.cancel()
		<-l.done
	}
}

// recordAttrs is everything an API call's audit record holds, to log.
func recordAttrs(rec *auditv1.ApiCall) []any {
	return []any{"route", rec.GetRoute(), "user", rec.GetUsername(), "role", rec.GetRole(), "target", rec.GetTarget(),
		"status", rec.GetStatus(), "reason", rec.GetReason(), "source", rec.GetSource(), "trace_id", rec.GetTraceId(),
		"time", rec.GetTime().AsTime()}
}
