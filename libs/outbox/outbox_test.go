package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/failpoint"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/testkit"
)

// Environment of the crash helper: this test binary run as a forwarder.
const (
	helperEnv   = "FLOTILLA_OUTBOX_TEST_HELPER"
	helperDBEnv = "FLOTILLA_OUTBOX_TEST_DB"
	helperNATS  = "FLOTILLA_OUTBOX_TEST_NATS"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "forward" {
		os.Exit(forwardOnce())
	}
	testkit.Main(m)
}

// forwardOnce is the crash helper: one Forward against the database and
// NATS server named in the environment (the failpoint ends it first).
func forwardOnce() int {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(helperDBEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	nc, err := nats.Connect(os.Getenv(helperNATS))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	js, _ := jetstream.New(nc)
	f := outbox.NewForwarder(pool, js, slog.New(slog.DiscardHandler), 0)
	for range 200 {
		n, err := f.Forward(ctx) // the failpoint ends the process once a batch is stored
		fmt.Fprintf(os.Stderr, "forwarded %d: %v\n", n, err)
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

type env struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	ns   *server.Server
	js   jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, url: testkit.NewDatabase(t), ns: testkit.NATS(t)}
	var err error
	if e.pool, err = pgxpool.New(ctx, e.url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	if err := outbox.Migrate(ctx, e.pool, nil); err != nil {
		t.Fatal(err)
	}
	if e.js, err = jetstream.New(testkit.NATSConn(t, e.ns)); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, e.js, 1); err != nil {
		t.Fatal(err)
	}
	return e
}

// event builds a domain event about network id.
func event(ctx context.Context, id string) bus.Message {
	m, err := bus.NewEvent(ctx, subjects.NounNetwork, id, vocab.VerbCreated, vocab.User("test"), 1, time.Now(), &systemv1.PingResponse{Service: id})
	if err != nil {
		panic(err)
	}
	return m
}

// write commits msgs in one transaction.
func (e *env) write(msgs ...bus.Message) {
	e.t.Helper()
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return outbox.Write(ctx, tx, msgs...) }); err != nil {
		e.t.Fatal(err)
	}
}

// stored returns the message ids on the events stream, in stream order.
func (e *env) stored() []string {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		ids = append(ids, m.Header.Get(bus.HeaderMsgID))
	}
	return ids
}

func (e *env) rowsLeft() int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+outbox.MessagesTable).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) forwarder() *outbox.Forwarder {
	return outbox.NewForwarder(e.pool, e.js, slog.New(slog.DiscardHandler), 0)
}

// run runs a forwarder until the test ends.
func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.forwarder().Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("forwarder: %v", err)
		}
	})
}

// forwardAll forwards until the outbox is empty and returns how many rows
// it forwarded. (A forward finds nothing while an older transaction of
// another test is still open: the rows wait behind it.)
func (e *env) forwardAll(f *outbox.Forwarder) int {
	e.t.Helper()
	total := 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		n, err := f.Forward(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		total += n
		if e.rowsLeft() == 0 {
			break
		}
	}
	return total
}

// waitStored waits until the stream holds n messages.
func (e *env) waitStored(n int, within time.Duration) []string {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ids := e.stored()
		if len(ids) >= n || time.Now().After(deadline) {
			return ids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLateCommitsAreNeverSkipped runs 240 transactions that each write an
// event, with up to 40 open at a time committing in random order (the
// oldest often last) and one in eight rolling back, while a forwarder
// works the whole time. Every committed event must reach the stream exactly
// once, no rolled-back one ever, and each transaction's events in order.
func TestLateCommitsAreNeverSkipped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.run()
	ctx := context.Background()
	const total, window = 240, 40
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = window + 2
	writers, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer writers.Close()

	type open struct {
		tx    pgx.Tx
		ids   []string
		abort bool
	}
	var (
		pending   []open
		committed = map[string]bool{}
		order     [][]string // each transaction's ids, in write order
		aborted   = map[string]bool{}
	)
	finish := func(i int) {
		o := pending[i]
		pending = append(pending[:i], pending[i+1:]...)
		if o.abort {
			if err := o.tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			for _, id := range o.ids {
				aborted[id] = true
			}
			return
		}
		if err := o.tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range o.ids {
			committed[id] = true
		}
		order = append(order, o.ids)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range total {
		tx, err := writers.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Two events per transaction, so order within one is checked too.
		msgs := []bus.Message{event(ctx, fmt.Sprintf("n-%d-a", i)), event(ctx, fmt.Sprintf("n-%d-b", i))}
		if err := outbox.Write(ctx, tx, msgs...); err != nil {
			t.Fatal(err)
		}
		pending = append(pending, open{tx: tx, ids: []string{msgs[0].ID(), msgs[1].ID()}, abort: i%8 == 3})
		if len(pending) == window {
			// Commit a random one that is not the oldest: the oldest
			// transactions stay open while newer ones commit and forward.
			finish(1 + rng.IntN(len(pending)-1))
		}
		if i%10 == 0 {
			time.Sleep(time.Millisecond) // let the forwarder catch up now and then
		}
	}
	for len(pending) > 0 {
		finish(rng.IntN(len(pending)))
	}

	ids := e.waitStored(len(committed), 30*time.Second)
	seen := map[string]int{}
	pos := map[string]int{}
	for i, id := range ids {
		seen[id]++
		pos[id] = i
	}
	for id := range committed {
		if seen[id] != 1 {
			t.Errorf("committed event %s is on the stream %d times", id, seen[id])
		}
	}
	for id := range aborted {
		if seen[id] != 0 {
			t.Errorf("rolled-back event %s reached the stream", id)
		}
	}
	if len(ids) != len(committed) {
		t.Errorf("stream holds %d events, %d were committed", len(ids), len(committed))
	}
	for _, tx := range order {
		if pos[tx[0]] > pos[tx[1]] {
			t.Errorf("events of one transaction out of order: %v", tx)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.rowsLeft() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := e.rowsLeft(); n != 0 {
		t.Errorf("%d outbox rows left after forwarding", n)
	}
}

// TestACrashBetweenPublishAndCommitLosesNothing kills a forwarder (a real
// process, exit at the failpoint) after JetStream stored a batch and before
// the offset was committed. The next forwarder publishes the batch again;
// JetStream drops the copies; nothing is lost or doubled. It runs before the
// package's parallel tests, so no other transaction holds its rows back and
// the whole outbox is one batch.
func TestACrashBetweenPublishAndCommitLosesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var want []string
	for i := range 5 {
		var msgs []bus.Message
		for j := range 10 {
			msgs = append(msgs, event(ctx, fmt.Sprintf("c-%d-%d", i, j)))
			want = append(want, msgs[j].ID())
		}
		e.write(msgs...)
	}

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"=forward", helperDBEnv+"="+e.url, helperNATS+"="+e.ns.ClientURL(),
		failpoint.Env+"="+outbox.FailpointPublished)
	out, err := helper.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != failpoint.ExitCode {
		t.Fatalf("the forwarder did not die at the failpoint: %v\n%s", err, out)
	}
	if got := e.stored(); len(got) != len(want) {
		t.Fatalf("before the crash JetStream stored %d of %d events", len(got), len(want))
	}
	if n := e.rowsLeft(); n != len(want) {
		t.Fatalf("the crashed forwarder's transaction left %d rows, want all %d", n, len(want))
	}

	f := e.forwarder()
	if n := e.forwardAll(f); n != len(want) {
		t.Fatalf("forwarded %d rows after the crash, want %d", n, len(want))
	}
	got := e.stored()
	if len(got) != len(want) {
		t.Fatalf("after the republish the stream holds %d events, want %d (copies dropped)", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d is %s, want %s", i, got[i], want[i])
		}
	}
	if n := e.rowsLeft(); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	if n, err := f.Forward(ctx); err != nil || n != 0 {
		t.Fatalf("a forward with nothing left: %d %v", n, err)
	}
}

func TestRowsWaitWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.write(event(ctx, "down-1"))
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
	// The row may wait behind another test's transaction first; then the
	// publish fails.
	f := e.forwarder()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		n, err := f.Forward(cctx)
		cancel()
		if n != 0 {
			t.Fatalf("forwarded %d rows with NATS down", n)
		}
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("forward with NATS down never tried to publish")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.rowsLeft(); n != 1 {
		t.Fatalf("outbox rows after a failed publish: %d, want 1", n)
	}
}

// TestHeadersAndTraceContextTravel checks that a forwarded event carries
// every header it was written with, its trace context among them.
func TestHeadersAndTraceContextTravel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	m := event(ctx, "traced")
	span.End()
	e.write(m)
	if n := e.forwardAll(e.forwarder()); n != 1 {
		t.Fatalf("forwarded %d rows, want 1", n)
	}
	s, _ := e.js.Stream(context.Background(), subjects.EventsStream)
	got, err := s.GetLastMsgForSubject(context.Background(), m.Subject)
	if err != nil {
		t.Fatal(err)
	}
	for k := range m.Header {
		if got.Header.Get(k) != m.Header.Get(k) {
			t.Errorf("header %s = %q, want %q", k, got.Header.Get(k), m.Header.Get(k))
		}
	}
	if got.Header.Get(bus.HeaderSubject) != "" {
		t.Error("the outbox's subject key leaked into the headers")
	}
	carried := trace.SpanContextFromContext(natsx.Extract(context.Background(), nats.Header(got.Header)))
	if carried.TraceID() != span.SpanContext().TraceID() || carried.SpanID() != span.SpanContext().SpanID() {
		t.Errorf("traceparent %q does not carry the writer's span %v", got.Header.Get("traceparent"), span.SpanContext())
	}
	if string(got.Data) != string(m.Data) {
		t.Error("payload changed on the way")
	}
}

// TestAHeldOutboxForwardsNothingUntilReleased: while a backup holds the
// forwarders, a committed row stays in the outbox and off the stream; once
// released, or once the holder's session ends, it is forwarded.
func TestAHeldOutboxForwardsNothingUntilReleased(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	hold := func() (*pgx.Conn, func(context.Context) error) {
		conn, err := pgx.Connect(ctx, e.url)
		if err != nil {
			t.Fatal(err)
		}
		release, err := outbox.Hold(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		return conn, release
	}
	f := e.forwarder()
	for i, end := range []string{"released", "session-ended"} {
		conn, release := hold()
		e.write(event(ctx, end))
		for range 5 {
			if n, err := f.Forward(ctx); n != 0 || err != nil {
				t.Fatalf("held: forwarded %d rows (%v)", n, err)
			}
		}
		if n := e.rowsLeft(); n != 1 {
			t.Fatalf("held: %d rows in the outbox, want 1", n)
		}
		if end == "released" {
			if err := release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := e.forwardAll(f); n != 1 {
			t.Fatalf("%s: forwarded %d rows, want 1", end, n)
		}
		if ids := e.stored(); len(ids) != i+1 {
			t.Fatalf("%s: the stream holds %v", end, ids)
		}
	}
}
