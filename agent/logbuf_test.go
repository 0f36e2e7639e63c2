package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
)

func texts(lines []*agentv1.LogLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l.GetText())
	}
	return out
}

// TestAFullLogBufferHoldsTheWriterBack: a program's output is never
// dropped; its writer waits until lines are acknowledged, and memory stays
// bounded.
func TestAFullLogBufferHoldsTheWriterBack(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(5, time.Now)
	wrote := make(chan int, 100)
	go func() {
		for i := range 12 {
			b.Add(SourceSetup, fmt.Sprintf("line %d", i))
			wrote <- i
		}
		close(wrote)
	}()
	for range 5 {
		<-wrote
	}
	select {
	case i := <-wrote:
		t.Fatalf("line %d was taken into a full buffer", i)
	case <-time.After(100 * time.Millisecond):
	}
	if b.Len() != 5 {
		t.Fatalf("buffer holds %d lines, want 5", b.Len())
	}
	var got []string
	for len(got) < 12 {
		lines := b.Next(100, 1<<20)
		if len(lines) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		if b.Len() > 5 {
			t.Fatalf("buffer holds %d lines, more than its 5", b.Len())
		}
		b.MarkSent(lines[len(lines)-1].GetSeq())
		got = append(got, texts(lines)...)
		b.Ack(lines[len(lines)-1].GetSeq())
	}
	for i, g := range got {
		if want := fmt.Sprintf("line %d", i); g != want {
			t.Fatalf("line %d = %q, want %q (all: %q)", i, g, want, got)
		}
	}
	for range wrote {
	}
}

// TestTheAgentsOwnLinesAreDroppedPastTheReserveAndCounted: the agent's own
// lines never wait; past the reserve they are dropped, and a line says
// exactly how many.
func TestTheAgentsOwnLinesAreDroppedPastTheReserveAndCounted(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(5, time.Now)
	total := 5 + ownLinesReserve + 37
	for i := range total {
		b.AddOwn(fmt.Sprintf("own %d", i))
	}
	if b.Len() != 5+ownLinesReserve {
		t.Fatalf("buffer holds %d lines, want %d", b.Len(), 5+ownLinesReserve)
	}
	all := b.Next(1<<20, 1<<30)
	b.MarkSent(all[len(all)-1].GetSeq())
	b.Ack(all[9].GetSeq()) // room again: the notice comes first
	next := b.Next(100, 1<<20)
	if len(next) != 1 || !strings.Contains(next[0].GetText(), "37 of the agent's own log lines were dropped") {
		t.Fatalf("after room was made Next = %q, want the notice of 37 dropped lines", texts(next))
	}
	b.AddOwn("after")
	if more := b.Next(100, 1<<20); len(more) != 2 || more[1].GetText() != "after" {
		t.Fatalf("Next = %q, want the notice then the new line", texts(more))
	}
}

// TestLogBufferCloseLetsWritersGo: a writer waiting for room returns when
// the agent stops.
func TestLogBufferCloseLetsWritersGo(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(1, time.Now)
	b.Add(SourceNode, "first")
	done := make(chan struct{})
	go func() { b.Add(SourceNode, "second"); close(done) }()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a writer still waits after Close")
	}
}

// TestOnlyAcknowledgedLinesAreForgotten: with a gateway that acknowledges,
// heartbeats confirm nothing; a line is forgotten only when acknowledged,
// and a reconnect resends the rest under the same sequence numbers.
func TestOnlyAcknowledgedLinesAreForgotten(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(100, time.Now)
	for i := range 6 {
		b.Add(SourceSetup, fmt.Sprintf("line %d", i))
	}
	b.Ack(0) // the gateway says it acknowledges
	if !b.Acking() {
		t.Fatal("a LogAck did not mark the stream acknowledging")
	}
	sent := b.Next(100, 1<<20)
	b.MarkSent(sent[5].GetSeq())
	b.Ack(sent[2].GetSeq())
	if b.Len() != 3 {
		t.Fatalf("after an ack of 3 lines the buffer holds %d, want 3", b.Len())
	}
	b.Rewind()
	if b.Acking() {
		t.Fatal("a new stream is taken to acknowledge before it said so")
	}
	again := b.Next(100, 1<<20)
	if strings.Join(texts(again), ",") != "line 3,line 4,line 5" || again[0].GetSeq() != sent[3].GetSeq() {
		t.Fatalf("after a reconnect Next = %q", texts(again))
	}
}

func TestLogBufferResendsWhatWasNotConfirmed(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(100, time.Now)
	for i := range 6 {
		b.Add(SourceAgent, fmt.Sprintf("line %d", i))
	}
	first := b.Next(4, 1<<20)
	if len(first) != 4 {
		t.Fatalf("Next(4) gave %d lines", len(first))
	}
	b.MarkSent(first[3].GetSeq())
	b.Confirm(first[1].GetSeq()) // lines 0 and 1 are stored
	if rest := b.Next(100, 1<<20); len(rest) != 2 || rest[0].GetText() != "line 4" {
		t.Fatalf("unsent lines = %q, want lines 4 and 5", texts(rest))
	}
	// The stream broke: a new one sends every unconfirmed line again.
	b.Rewind()
	again := b.Next(100, 1<<20)
	if want := []string{"line 2", "line 3", "line 4", "line 5"}; strings.Join(texts(again), ",") != strings.Join(want, ",") {
		t.Fatalf("after a reconnect Next = %q, want %q", texts(again), want)
	}
	if again[0].GetSeq() != first[2].GetSeq() {
		t.Fatal("a resent line got a new sequence number: the gateway could not drop the copy")
	}
}

func TestLogSequenceNumbersKeepIncreasingAcrossRestarts(t *testing.T) {
	t.Parallel()
	now := time.Now()
	before := newLogBuffer(10, func() time.Time { return now })
	for range 3 {
		before.Add(SourceAgent, "x")
	}
	last := before.Next(10, 1<<20)[2].GetSeq()
	after := newLogBuffer(10, func() time.Time { return now.Add(time.Second) })
	after.Add(SourceAgent, "y")
	if first := after.Next(1, 1<<20)[0].GetSeq(); first <= last {
		t.Fatalf("a restarted agent's first seq %d is not above the last one %d", first, last)
	}
}

func TestLogBatchesStaySmall(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(100, time.Now)
	for range 5 {
		b.Add(SourceNode, strings.Repeat("x", 1000))
	}
	if got := b.Next(100, 2500); len(got) != 2 {
		t.Fatalf("a 2500-byte batch holds %d lines of 1000 bytes, want 2", len(got))
	}
	if got := b.Next(100, 10); len(got) != 1 {
		t.Fatalf("a batch smaller than one line holds %d lines, want that line", len(got))
	}
	b.Add(SourceNode, strings.Repeat("y", 1<<20))
	lines := b.Next(100, 1<<30)
	if l := lines[len(lines)-1]; len(l.GetText()) > maxLineText+20 {
		t.Fatalf("a %d-byte line was kept whole", len(l.GetText()))
	}
}

// TestWhatAProgramPrintsIsMadeValid: bytes that are not UTF-8 become
// U+FFFD, and an over-long line is split with a marker, never inside a
// character, so every line marshals.
func TestWhatAProgramPrintsIsMadeValid(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(100, time.Now)
	b.Add(SourceSetup, "before \xff\xfe\x80 after")
	long := strings.Repeat("é", maxLineText) // 2 bytes each: twice the limit
	b.Add(SourceSetup, long)
	lines := b.Next(100, 1<<30)
	if got := lines[0].GetText(); got != "before \uFFFD after" { // a run of bad bytes is one U+FFFD
		t.Errorf("invalid bytes became %q", got)
	}
	var joined strings.Builder
	for i, l := range lines[1:] {
		if !utf8.ValidString(l.GetText()) || len(l.GetText()) > maxLineText {
			t.Fatalf("piece %d: %d bytes, valid %v", i, len(l.GetText()), utf8.ValidString(l.GetText()))
		}
		if _, err := proto.Marshal(l); err != nil {
			t.Fatal(err)
		}
		text := l.GetText()
		if i < len(lines)-2 {
			if !strings.HasSuffix(text, continued) {
				t.Fatalf("piece %d lacks the continuation marker", i)
			}
			text = strings.TrimSuffix(text, continued)
		}
		joined.WriteString(text)
	}
	if len(lines) < 3 || joined.String() != long {
		t.Fatalf("the long line came back in %d pieces, joined equal: %v", len(lines)-1, joined.String() == long)
	}
}

// TestAChattyScriptIsSlowedDownNotCut: a script's output goes through a
// pipe into the buffer; while the buffer is full the script blocks, and
// once lines are acknowledged every line arrives, in order.
func TestAChattyScriptIsSlowedDownNotCut(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(50, time.Now)
	dir := t.TempDir()
	r := &setupRunner{dataDir: dir, installer: NoPackageInstaller, log: b.Add}
	const n = 20000
	done := make(chan error, 1)
	go func() {
		done <- r.command(context.Background(), []string{"sh", "-c", fmt.Sprintf("seq 1 %d; touch finished", n)}, "script")
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(dir, "finished")); err == nil {
		t.Fatal("the script finished although nothing took its lines: it was not held back")
	}
	if b.Len() != 50 {
		t.Fatalf("the buffer holds %d lines, want its 50", b.Len())
	}
	next := 1
	for next <= n {
		lines := b.Next(500, 1<<20)
		if len(lines) == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		for _, l := range lines {
			if want := strconv.Itoa(next); l.GetText() != want {
				t.Fatalf("line %d = %q", next, l.GetText())
			}
			next++
		}
		b.MarkSent(lines[len(lines)-1].GetSeq())
		b.Ack(lines[len(lines)-1].GetSeq())
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestAScriptsStandardErrorIsMarked: a setup script's lines on standard
// error are marked stderr, those on standard output are not, and both
// arrive whole.
func TestAScriptsStandardErrorIsMarked(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(100, time.Now)
	r := &setupRunner{dataDir: t.TempDir(), installer: NoPackageInstaller, log: b.Add, logErr: b.AddStderr}
	if err := r.command(t.Context(), []string{"sh", "-c", "echo to-out; echo to-err >&2; exit 3"}, "script"); err == nil {
		t.Fatal("a script exiting 3 succeeded")
	}
	got := map[string]bool{}
	for _, l := range b.Next(100, 1<<20) {
		if l.GetSource() != SourceSetup {
			t.Errorf("line %q from %q", l.GetText(), l.GetSource())
		}
		got[l.GetText()] = l.GetStderr()
	}
	if stderr, ok := got["to-out"]; !ok || stderr {
		t.Errorf("standard output's line: present %v, marked stderr %v", ok, stderr)
	}
	if stderr, ok := got["to-err"]; !ok || !stderr {
		t.Errorf("standard error's line: present %v, marked stderr %v", ok, stderr)
	}
}

// TestTheNodeSoftwaresStandardErrorIsMarked: what the node software writes
// to standard error is logged marked stderr, its standard output not.
func TestTheNodeSoftwaresStandardErrorIsMarked(t *testing.T) {
	t.Parallel()
	ta := newTestAgent(t)
	ta.cfg.NodeBinary = []string{"sh", "-c", "echo to-out; echo to-err >&2"} // the node's flags become $0 and on
	_, exited, err := ta.node.launch(nodeSpec{InstanceName: "node-1"}, nil, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-exited
	got := map[string]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(got) < 2; time.Sleep(20 * time.Millisecond) {
		for _, l := range ta.logs.Next(100, 1<<20) {
			if l.GetSource() == SourceNode {
				got[l.GetText()] = l.GetStderr()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node's lines: %v", got)
		}
	}
	if got["to-out"] || !got["to-err"] {
		t.Errorf("stderr marks: %v; want to-err marked, to-out not", got)
	}
}
