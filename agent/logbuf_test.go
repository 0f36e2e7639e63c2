package agent

import (
	"fmt"
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

func TestLogBufferDropsTheOldestAndSaysSo(t *testing.T) {
	t.Parallel()
	b := newLogBuffer(5, time.Now)
	for i := range 12 {
		b.Add(SourceSetup, fmt.Sprintf("line %d", i))
	}
	if b.Len() != 5 {
		t.Fatalf("buffer holds %d lines, want 5", b.Len())
	}
	got := b.Next(100, 1<<20)
	want := []string{"line 7", "line 8", "line 9", "line 10", "line 11"}
	if len(got) != 6 {
		t.Fatalf("Next = %q, want the 5 newest lines and a notice", texts(got))
	}
	for i, w := range want {
		if got[i].GetText() != w {
			t.Fatalf("Next = %q, want %q first", texts(got), want)
		}
	}
	notice := got[5]
	if notice.GetSource() != SourceAgent || !strings.Contains(notice.GetText(), "7 log lines were dropped") {
		t.Fatalf("notice = %v, want the agent saying 7 lines were dropped", notice)
	}
	for i := 1; i < len(got); i++ {
		if got[i].GetSeq() <= got[i-1].GetSeq() {
			t.Fatalf("sequence numbers do not increase: %v", got)
		}
	}
	// The notice is said once.
	b.MarkSent(notice.GetSeq())
	if more := b.Next(100, 1<<20); len(more) != 0 {
		t.Fatalf("Next after everything was sent = %q", texts(more))
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
