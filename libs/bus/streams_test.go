package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// A stream declared by an older Flotilla, without limits, takes today's
// limits when a service starts: the events stream cannot grow without bound.
func TestEventsAreBoundedByAgeAndSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: subjects.EventsStream, Subjects: []string{subjects.EventsAll()}}); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1, subjects.EventsStream); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxAge != bus.EventsMaxAge || cfg.MaxBytes != bus.EventsMaxBytes || cfg.Discard != jetstream.DiscardOld {
		t.Fatalf("events stream limits: age %v, bytes %d, discard %v", cfg.MaxAge, cfg.MaxBytes, cfg.Discard)
	}
	// Every stream is bounded by age or size, except the work queue, whose
	// messages are removed when done.
	for _, c := range bus.Streams(1) {
		if c.Retention != jetstream.WorkQueuePolicy && c.MaxAge == 0 && c.MaxBytes <= 0 {
			t.Errorf("stream %s grows without bound", c.Name)
		}
	}
}

// A service that starts while JetStream does not answer yet waits for it
// rather than failing its start.
func TestStreamsAreDeclaredOnceJetStreamAnswers(t *testing.T) {
	t.Parallel()
	ns := testkit.Serve(t, &server.Options{})
	js, err := jetstream.New(testkit.NATSConn(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- bus.EnsureStreams(t.Context(), js, 1, subjects.EventsStream) }()
	time.Sleep(500 * time.Millisecond) // the first requests find no JetStream
	if err := ns.EnableJetStream(&server.JetStreamConfig{StoreDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("declare streams once JetStream answers: %v", err)
	}
}

// Unanswered tells JetStream not answering now (worth asking again) from a
// refusal.
func TestUnansweredIsJetStreamNotAnsweringNow(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("consumer on x: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("read: %w", nats.ErrNoResponders), true},
		{nats.ErrTimeout, true},
		{jetstream.ErrNoStreamResponse, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 403, ErrorCode: 10100, Description: "permission denied"}, false},
		{jetstream.ErrKeyNotFound, false},
		{errors.New("undecodable entries"), false},
	} {
		if got := bus.Unanswered(c.err); got != c.want {
			t.Errorf("Unanswered(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Every service declares its streams and buckets at each start: one
// already as declared is not updated again (an update rewrites the stream's
// configuration under its readers), and one that differs is brought back.
func TestStreamsAreUpdatedOnlyWhenTheyDiffer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nc := testkit.NATSConn(t, testkit.NATS(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	bucket := jetstream.KeyValueConfig{Bucket: "leases", History: 1, TTL: time.Minute, MaxValueSize: 256, Storage: jetstream.FileStorage}
	declare := func() {
		t.Helper()
		if err := bus.EnsureStreams(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := bus.DeclareKeyValue(ctx, js, bucket); err != nil {
			t.Fatal(err)
		}
	}
	declare()
	updated, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Unchanged: no update. The server sends its advisories in order, so
	// an update here would come before the one below.
	declare()
	// Changed by hand (one advisory), then brought back (a second).
	s, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	changed := s.CachedInfo().Config
	changed.MaxAge = time.Hour
	if _, err := js.UpdateStream(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	want := "$JS.EVENT.ADVISORY.STREAM.UPDATED." + subjects.EventsStream
	for i := range 2 {
		m, err := updated.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("update advisory %d: %v", i+1, err)
		}
		if m.Subject != want {
			t.Fatalf("update advisory %d is %s, want %s: a stream already as declared was updated", i+1, m.Subject, want)
		}
	}
	if m, err := updated.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("an update more than expected: %s", m.Subject)
	}
	s, err = js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != bus.EventsMaxAge {
		t.Fatalf("events stream's age after a start: %v, want %v", got, bus.EventsMaxAge)
	}
}
