package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/apierr"
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
	ctx, js, stream := newStream(t, "READ", "read.>")
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

// A read whose consumer does not deliver everything stored on the subject
// in time ends with ErrIncomplete, an unavailable error, and not with the
// part it read passed off as the whole: a log page read back as empty
// while its lines were stored (agentsim's read-back after 10 000 agents,
// on a loaded server). Here the stream's consumers deliver nothing after
// the first fetch.
func TestAReadNotDeliveredInFullIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx, js, stream := newStream(t, "STALLS", "stalls.>")
	for range 600 { // more than one fetch
		if _, err := js.Publish(ctx, "stalls.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	// An empty consumer's fetch stands for the stalled ones: a consumer of
	// a subject nothing is stored on.
	idle, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"stalls.none"}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	started := time.Now()
	err = bus.ReadSubject(ctx, stallingStream{Stream: stream, idle: idle}, "stalls.a", 0, time.Time{},
		func(jetstream.Msg, *jetstream.MsgMetadata) bool { n++; return true })
	if !errors.Is(err, bus.ErrIncomplete) || !apierr.Is(err, apierr.KindUnavailable) {
		t.Fatalf("read %d of 600, then err = %v; want ErrIncomplete, unavailable", n, err)
	}
	if n != 500 || !strings.Contains(err.Error(), "of 600") {
		t.Errorf("read %d (want the first fetch's 500), err %v", n, err)
	}
	if took := time.Since(started); took > 10*time.Second {
		t.Errorf("the read gave up after %v", took)
	}
}

// stallingStream is a stream whose ordered consumers deliver their first
// fetch and then nothing (each further fetch is idle's).
type stallingStream struct {
	jetstream.Stream
	idle jetstream.Consumer
}

func (s stallingStream) OrderedConsumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	c, err := s.Stream.OrderedConsumer(ctx, cfg)
	return &stallingConsumer{Consumer: c, idle: s.idle}, err
}

type stallingConsumer struct {
	jetstream.Consumer
	idle    jetstream.Consumer
	fetched bool
}

func (c *stallingConsumer) FetchNoWait(batch int) (jetstream.MessageBatch, error) {
	if c.fetched {
		return c.idle.FetchNoWait(batch)
	}
	c.fetched = true
	return c.Consumer.FetchNoWait(batch)
}

// newStream creates a stream named name of subjects on a NATS server of
// its own, and returns a context for the test's calls (30 s).
func newStream(t *testing.T, name, subjects string) (context.Context, jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subjects}})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, stream
}
