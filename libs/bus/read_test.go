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
	idle, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{FilterSubject: "stalls.none", AckPolicy: jetstream.AckNonePolicy})
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

// A read whose server goes away in the middle ends by itself within its
// context, with an error: not a page passed off as the whole, and not a
// wait without end. (nats.go's ordered consumer, which reads used to go
// through, recreated its consumer at every fetch and retried that without
// end and without regard to the context: removing a lost host's managers
// waited on it while the managers' stream had no leader.)
func TestAReadWhoseServerGoesAwayEnds(t *testing.T) {
	t.Parallel()
	srv := testkit.NATS(t)
	js, err := jetstream.New(testkit.NATSConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "GOES", Subjects: []string{"goes.>"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 600 { // more than one fetch
		if _, err := js.Publish(ctx, "goes.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	done := make(chan error, 1)
	go func() {
		done <- bus.ReadSubject(ctx, stream, "goes.a", 0, time.Time{}, func(jetstream.Msg, *jetstream.MsgMetadata) bool {
			if n++; n == 500 { // the first fetch's last
				srv.Shutdown()
			}
			return true
		})
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("read %d of 600 and ended without an error, its server gone", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the read, its context ended 15 s ago, has not ended (%d of 600 read)", n)
	}
}

// A read whose consumer is lost on its way (gone with its stream's old
// leader, say) makes another and reads on after the last message it
// handed: every message once, in order, and no error.
func TestAReadWhoseConsumerIsLostReadsOn(t *testing.T) {
	t.Parallel()
	ctx, js, stream := newStream(t, "LOSES", "loses.>")
	for range 600 { // more than one fetch
		if _, err := js.Publish(ctx, "loses.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	err := bus.ReadSubject(ctx, stream, "loses.a", 0, time.Time{}, func(_ jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		seqs = append(seqs, meta.Sequence.Stream)
		if len(seqs) == 500 { // the first fetch's last: the next fetch finds no consumer
			if err := stream.DeleteConsumer(ctx, meta.Consumer); err != nil {
				t.Error(err)
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("read %d of 600: %v", len(seqs), err)
	}
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("read %d messages, the %dth at stream sequence %d: want 1 to 600 in order", len(seqs), i+1, seq)
		}
	}
	if len(seqs) != 600 {
		t.Errorf("read %d of 600", len(seqs))
	}
}

// A message its consumer skipped (lost on its way, as a slow reader's
// can be) is read all the same, in its place: the read notices the gap in
// the consumer's deliveries and reads on from the last message it handed.
func TestAReadNoticesAMessageSkipped(t *testing.T) {
	t.Parallel()
	ctx, js, stream := newStream(t, "SKIPS", "skips.>")
	for range 600 {
		if _, err := js.Publish(ctx, "skips.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	err := bus.ReadSubject(ctx, skippingStream{Stream: stream}, "skips.a", 0, time.Time{},
		func(_ jetstream.Msg, meta *jetstream.MsgMetadata) bool {
			seqs = append(seqs, meta.Sequence.Stream)
			return true
		})
	if err != nil {
		t.Fatal(err)
	}
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("read %d messages, the %dth at stream sequence %d: want 1 to 600 in order", len(seqs), i+1, seq)
		}
	}
	if len(seqs) != 600 {
		t.Errorf("read %d of 600", len(seqs))
	}
}

// skippingStream is a stream whose consumers' first fetch loses its
// hundredth message.
type skippingStream struct{ jetstream.Stream }

func (s skippingStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := s.Stream.CreateConsumer(ctx, cfg)
	return &skippingConsumer{Consumer: c}, err
}

type skippingConsumer struct {
	jetstream.Consumer
	fetched bool
}

func (c *skippingConsumer) FetchNoWait(batch int) (jetstream.MessageBatch, error) {
	b, err := c.Consumer.FetchNoWait(batch)
	if err != nil || c.fetched {
		return b, err
	}
	c.fetched = true
	out := make(chan jetstream.Msg, batch)
	i := 0
	for m := range b.Messages() {
		if i++; i != 100 {
			out <- m
		}
	}
	close(out)
	return skippedBatch{MessageBatch: b, msgs: out}, nil
}

type skippedBatch struct {
	jetstream.MessageBatch
	msgs chan jetstream.Msg
}

func (b skippedBatch) Messages() <-chan jetstream.Msg { return b.msgs }

// stallingStream is a stream whose consumers deliver their first fetch
// and then nothing (each further fetch is idle's).
type stallingStream struct {
	jetstream.Stream
	idle jetstream.Consumer
}

func (s stallingStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := s.Stream.CreateConsumer(ctx, cfg)
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
