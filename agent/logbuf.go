package agent

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/msgcheck"
)

// Log line sources.
const (
	SourceAgent = "agent"
	SourceSetup = "setup"
	SourceNode  = "node"
)

// Bounds of the log buffer besides its line count.
const (
	// logBufferBytes bounds the text the buffer holds for writers that
	// wait (setup actions, the node software).
	logBufferBytes = 8 << 20
	// ownLinesReserve is how many of the agent's own lines may be kept
	// beyond a full buffer; further ones are dropped and counted.
	ownLinesReserve = 1000
)

// logBuffer holds the log lines not yet stored by JetStream, oldest first.
//
// Output of setup actions and the node software is never dropped: Add
// waits while the buffer holds max lines (or logBufferBytes of text), so
// the program writing the pipe blocks until lines are stored (back-pressure).
// The agent's own lines (AddOwn) must never wait — the code that logs them
// may be the code that empties the buffer — so they may go ownLinesReserve
// lines beyond max; past that they are dropped, and the next line that fits
// is preceded by one saying exactly how many were dropped.
//
// A line is written to a stream (marked sent) and kept until the gateway
// acknowledges it (LogAck: JetStream stored every line up to its seq). A
// gateway that does not acknowledge (an older version) is recognised by
// never sending a LogAck on a stream; then lines are confirmed as before,
// when the stream they were written on stayed healthy through a heartbeat
// interval, or ended cleanly. A new stream resends every line not yet
// acknowledged; the gateway stores each under "<instance-id>-<seq>", so
// JetStream drops lines it already has.
type logBuffer struct {
	mu      sync.Mutex
	room    *sync.Cond // signalled when lines are forgotten, or on close
	max     int
	lines   []*agentv1.LogLine
	bytes   int // text held
	nextSeq uint64
	sent    uint64 // highest seq written on the current stream
	acking  bool   // the current stream's gateway acknowledges lines
	dropped int    // own lines dropped since the last notice
	closed  bool
	notify  chan struct{}
	now     func() time.Time
}

// newLogBuffer returns an empty buffer of max lines. Sequence numbers start
// at the current time in microseconds, so they keep increasing across agent
// restarts and a restarted agent's lines are never taken for resent ones.
func newLogBuffer(max int, now func() time.Time) *logBuffer {
	b := &logBuffer{max: max, nextSeq: uint64(now().UnixMicro()), notify: make(chan struct{}, 1), now: now}
	b.room = sync.NewCond(&b.mu)
	return b
}

// Add appends a line of a program's output, waiting while the buffer is
// full. What a program printed is input like any other: bytes that are not
// UTF-8 become U+FFFD (a log line is a protobuf string, which must be valid
// UTF-8, or the stream breaks), and a line longer than maxLineText is split
// into pieces, each but the last ending in a continuation marker. After
// Close it returns at once, keeping nothing.
func (b *logBuffer) Add(source, text string) {
	b.split(text, func(piece string) { b.add(source, false, piece, true) })
}

// AddStderr is Add for a line written to standard error.
func (b *logBuffer) AddStderr(source, text string) {
	b.split(text, func(piece string) { b.add(source, true, piece, true) })
}

// AddOwn appends one of the agent's own lines without waiting: when the
// buffer is full beyond its reserve, the line is dropped and counted.
func (b *logBuffer) AddOwn(text string) {
	b.split(text, func(piece string) { b.add(SourceAgent, false, piece, false) })
}

func (b *logBuffer) split(text string, add func(string)) {
	text = strings.ToValidUTF8(text, "\uFFFD")
	for len(text) > maxLineText {
		cut := msgcheck.RuneCut(text, maxLineText-len(continued))
		add(text[:cut] + continued)
		text = text[cut:]
	}
	add(text)
}

// continued ends each piece of a split line but the last.
const continued = " …(continued)"

func (b *logBuffer) add(source string, stderr bool, text string, wait bool) {
	b.mu.Lock()
	if wait {
		for !b.closed && len(b.lines) > 0 && (len(b.lines) >= b.max || b.bytes >= logBufferBytes) {
			b.room.Wait()
		}
		if b.closed {
			b.mu.Unlock()
			return
		}
	} else if len(b.lines) >= b.max+ownLinesReserve {
		b.dropped++
		b.mu.Unlock()
		return
	}
	b.noticeDropped()
	b.append(source, stderr, text)
	b.mu.Unlock()
	b.wake()
}

// append adds a line with the next sequence number; b.mu is held.
func (b *logBuffer) append(source string, stderr bool, text string) {
	b.nextSeq++
	b.lines = append(b.lines, &agentv1.LogLine{Seq: b.nextSeq, Time: timestamppb.New(b.now()), Source: source, Text: text, Stderr: stderr})
	b.bytes += len(text)
}

// noticeDropped adds the line saying how many of the agent's own lines were
// dropped, if some were and there is room again; b.mu is held.
func (b *logBuffer) noticeDropped() {
	if b.dropped == 0 || len(b.lines) >= b.max+ownLinesReserve {
		return
	}
	b.append(SourceAgent, false, fmt.Sprintf("%d of the agent's own log lines were dropped: its log buffer (%d lines and %d more of its own) was full while lines could not be stored",
		b.dropped, b.max, ownLinesReserve))
	b.dropped = 0
}

func (b *logBuffer) wake() {
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

// Notify is signalled when lines are added.
func (b *logBuffer) Notify() <-chan struct{} { return b.notify }

// maxLineText bounds one line's text; longer ones are split.
const maxLineText = 16 << 10

// Next returns up to n lines, of at most maxBytes of text together (but at
// least one line), not yet written to the current stream.
func (b *logBuffer) Next(n, maxBytes int) []*agentv1.LogLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.lines), func(i int) bool { return b.lines[i].GetSeq() > b.sent })
	var out []*agentv1.LogLine
	size := 0
	for _, l := range b.lines[i:] {
		size += len(l.Text)
		if len(out) > 0 && size > maxBytes {
			break
		}
		out = append(out, l)
		if len(out) == n {
			break
		}
	}
	return out
}

// MarkSent records that every line up to seq was written to the current
// stream.
func (b *logBuffer) MarkSent(seq uint64) {
	b.mu.Lock()
	b.sent = max(b.sent, seq)
	b.mu.Unlock()
}

// Sent returns the highest seq written to the current stream.
func (b *logBuffer) Sent() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sent
}

// Ack forgets every line up to seq, which JetStream stored, and records
// that the current stream's gateway acknowledges lines.
func (b *logBuffer) Ack(seq uint64) {
	b.mu.Lock()
	b.acking = true
	b.mu.Unlock()
	b.Confirm(seq)
}

// Acking reports whether the current stream's gateway acknowledges lines.
func (b *logBuffer) Acking() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.acking
}

// Confirm forgets every line up to seq: it is stored.
func (b *logBuffer) Confirm(seq uint64) {
	b.mu.Lock()
	i := sort.Search(len(b.lines), func(i int) bool { return b.lines[i].GetSeq() > seq })
	if i == 0 {
		b.mu.Unlock()
		return
	}
	for _, l := range b.lines[:i] {
		b.bytes -= len(l.Text)
	}
	clear(b.lines[:i])
	b.lines = b.lines[i:] // append reallocates now and then, keeping only these
	had := b.dropped
	b.noticeDropped()
	added := had > 0 && b.dropped == 0
	b.mu.Unlock()
	b.room.Broadcast()
	if added {
		b.wake()
	}
}

// Rewind makes every line not yet stored unsent, for a new stream, whose
// gateway is not yet known to acknowledge lines.
func (b *logBuffer) Rewind() {
	b.mu.Lock()
	b.sent = 0
	b.acking = false
	b.mu.Unlock()
}

// Close makes Add return at once, keeping nothing: the agent is stopping
// and nothing will empty the buffer any more.
func (b *logBuffer) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.room.Broadcast()
}

// Len returns how many lines are kept.
func (b *logBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lines)
}
