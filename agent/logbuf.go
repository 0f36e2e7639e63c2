package agent

import (
	"fmt"
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

// logBuffer holds the log lines not yet known to be stored, oldest first,
// at most max of them (plus one notice of dropped lines).
//
// A line is written to a stream (marked sent) and kept until it is
// confirmed: the stream it was written on then stayed healthy through a
// whole heartbeat interval, or ended cleanly (the gateway handled
// everything before closing). A new stream resends every unconfirmed line;
// the gateway stores each under "<instance-id>-<seq>", so JetStream drops
// lines it already has.
type logBuffer struct {
	mu      sync.Mutex
	max     int
	lines   []*agentv1.LogLine
	nextSeq uint64
	sent    uint64 // highest seq written on the current stream
	dropped int    // lines dropped since the last notice
	notify  chan struct{}
	now     func() time.Time
}

// newLogBuffer returns an empty buffer of max lines. Sequence numbers start
// at the current time in microseconds, so they keep increasing across agent
// restarts and a restarted agent's lines are never taken for resent ones.
func newLogBuffer(max int, now func() time.Time) *logBuffer {
	return &logBuffer{max: max, nextSeq: uint64(now().UnixMicro()), notify: make(chan struct{}, 1), now: now}
}

// Add appends a line, dropping the oldest when the buffer is full. What a
// program printed is input like any other: bytes that are not UTF-8 become
// U+FFFD (a log line is a protobuf string, which must be valid UTF-8, or
// the stream breaks), and a line longer than maxLineText is split into
// pieces, each but the last ending in a continuation marker.
func (b *logBuffer) Add(source, text string) {
	text = strings.ToValidUTF8(text, "\uFFFD")
	for len(text) > maxLineText {
		cut := msgcheck.RuneCut(text, maxLineText-len(continued))
		b.add(source, text[:cut]+continued)
		text = text[cut:]
	}
	b.add(source, text)
}

// continued ends each piece of a split line but the last.
const continued = " …(continued)"

func (b *logBuffer) add(source, text string) {
	b.mu.Lock()
	b.nextSeq++
	b.lines = append(b.lines, &agentv1.LogLine{Seq: b.nextSeq, Time: timestamppb.New(b.now()), Source: source, Text: text})
	if over := len(b.lines) - b.max; over > 0 {
		b.dropped += over
		clear(b.lines[:over])
		b.lines = b.lines[over:] // append reallocates now and then, keeping only these

	}
	b.mu.Unlock()
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
// least one line), not yet written to the current stream. When lines were
// dropped, a line saying how many is added first, as the newest.
func (b *logBuffer) Next(n, maxBytes int) []*agentv1.LogLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		b.nextSeq++
		b.lines = append(b.lines, &agentv1.LogLine{
			Seq: b.nextSeq, Time: timestamppb.New(b.now()), Source: SourceAgent,
			Text: fmt.Sprintf("%d log lines were dropped: the agent's log buffer (%d lines) was full while they could not be sent", b.dropped, b.max),
		})
		b.dropped = 0
	}
	var out []*agentv1.LogLine
	size := 0
	for _, l := range b.lines {
		if l.Seq <= b.sent {
			continue
		}
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

// Confirm forgets every line up to seq: it is stored.
func (b *logBuffer) Confirm(seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := 0
	for i < len(b.lines) && b.lines[i].Seq <= seq {
		i++
	}
	clear(b.lines[:i])
	b.lines = b.lines[i:]
}

// Rewind makes every unconfirmed line unsent, for a new stream.
func (b *logBuffer) Rewind() {
	b.mu.Lock()
	b.sent = 0
	b.mu.Unlock()
}

// Len returns how many lines are kept.
func (b *logBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lines)
}
