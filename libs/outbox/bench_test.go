package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/testkit"
)

// Run these side by side (docs/benchmarks.md has the figures):
//
//	go test -run '^$' -bench . -benchtime 20000x ./libs/outbox/
//
// Each reports events/s: BenchmarkForward moves committed outbox rows to the
// events stream; BenchmarkJetStreamPublish publishes the same messages
// straight to JetStream, the same way (asynchronously, 500 per batch,
// waiting for every acknowledgement); BenchmarkWriteAndForward adds the
// writing transactions (one event each) with the forwarder running beside
// them, as in the inventory.

type benchEnv struct {
	pool *pgxpool.Pool
	js   jetstream.JetStream
	f    *outbox.Forwarder
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testkit.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if err := outbox.Migrate(ctx, pool, nil); err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(testkit.NATSConn(b, testkit.NATS(b)))
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	return &benchEnv{pool: pool, js: js, f: outbox.NewForwarder(pool, js, slog.New(slog.DiscardHandler), 0)}
}

// fill commits n events, 100 per transaction.
func (e *benchEnv) fill(b *testing.B, n int) {
	b.Helper()
	ctx := context.Background()
	for done := 0; done < n; {
		k := min(100, n-done)
		msgs := make([]bus.Message, k)
		for i := range msgs {
			msgs[i] = event(ctx, fmt.Sprintf("b-%d", done+i))
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return outbox.Write(ctx, tx, msgs...) }); err != nil {
			b.Fatal(err)
		}
		done += k
	}
}

func (e *benchEnv) streamed(b *testing.B) uint64 {
	s, err := e.js.Stream(context.Background(), subjects.EventsStream)
	if err != nil {
		b.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return info.State.Msgs
}

func eventsPerSecond(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

func BenchmarkForward(b *testing.B) {
	e := newBenchEnv(b)
	e.fill(b, b.N)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for forwarded := 0; forwarded < b.N; {
		n, err := e.f.Forward(ctx)
		if err != nil {
			b.Fatal(err)
		}
		forwarded += n
	}
	eventsPerSecond(b, start)
	b.StopTimer()
	if got := e.streamed(b); got != uint64(b.N) {
		b.Fatalf("stream holds %d events, want %d", got, b.N)
	}
}

func BenchmarkJetStreamPublish(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	msgs := make([]*nats.Msg, b.N)
	for i := range msgs {
		m := event(ctx, fmt.Sprintf("b-%d", i))
		msgs[i] = m.NATS()
	}
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; {
		k := min(outbox.DefaultBatch, b.N-done)
		futures := make([]jetstream.PubAckFuture, k)
		for i := range k {
			f, err := e.js.PublishMsgAsync(msgs[done+i])
			if err != nil {
				b.Fatal(err)
			}
			futures[i] = f
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
		done += k
	}
	eventsPerSecond(b, start)
}

func BenchmarkWriteAndForward(b *testing.B) {
	e := newBenchEnv(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			m := event(ctx, fmt.Sprintf("w-%d", i))
			if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return outbox.Write(ctx, tx, m) }); err != nil {
				b.Error(err)
				return
			}
			e.f.Wake()
		}
	})
	for e.streamed(b) < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
	eventsPerSecond(b, start)
}
