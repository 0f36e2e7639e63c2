package bus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// ReadSubject reads every message of a subject (a wildcard too) and ends
// by itself: from a sequence or a time past the last message, on a subject
// with nothing stored, and when the subject's last message was removed.
// (An empty fetch is not taken for the end before the subject's last
// message is read; that failure, a new consumer's "no messages" on a busy
// server, shows only under load: agentsim's read-back of 10 000 agents'
// lines.)
func TestReadSubjectReadsToTheSubjectsLastMessage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "READ", Subjects: []string{"read.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := range 1200 { // more than one fetch
		a, err := js.Publish(ctx, fmt.Sprintf("read.a.%d", i%3), []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, a.Sequence)
		if _, err := js.Publish(ctx, "read.b", []byte("y")); err != nil {
			t.Fatal(err)
		}
	}
	mid := time.Now()
	count := func(subject string, from uint64, since time.Time) int {
		t.Helper()
		n := 0
		if err := bus.ReadSubject(ctx, stream, subject, from, since, func(jetstream.Msg, *jetstream.MsgMetadata) bool { n++; return true }); err != nil {
			t.Fatalf("read %s from %d since %v: %v", subject, from, since, err)
		}
		return n
	}
	if n := count("read.a.*", 0, time.Time{}); n != 1200 {
		t.Errorf("read %d of read.a.*, want 1200", n)
	}
	if n := count("read.a.1", seqs[601], time.Time{}); n != 200 {
		t.Errorf("read %d of read.a.1 from the middle, want 200", n)
	}
	if n := count("read.a.*", seqs[len(seqs)-1]+1, time.Time{}); n != 0 {
		t.Errorf("read %d past the last message", n)
	}
	if n := count("read.a.*", 0, mid.Add(time.Second)); n != 0 {
		t.Errorf("read %d since after the last message", n)
	}
	if n := count("read.none", 0, time.Time{}); n != 0 {
		t.Errorf("read %d of a subject with nothing", n)
	}
	if err := stream.DeleteMsg(ctx, seqs[len(seqs)-1]); err != nil {
		t.Fatal(err)
	}
	if n := count("read.a.*", 0, time.Time{}); n != 1199 {
		t.Errorf("read %d after the last was removed, want 1199", n)
	}
}
