package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// readBatch is how many messages ReadSubject asks for at a time.
const readBatch = 500

// ReadSubject hands each message stored on subject in stream to each, in
// order, with its metadata, until each returns false or nothing more is
// stored: from stream sequence from, or (from 0) from the time since, or
// (both zero) from the oldest. It reads through an ephemeral ordered
// consumer, which it deletes afterwards.
func ReadSubject(ctx context.Context, stream jetstream.Stream, subject string, from uint64, since time.Time,
	each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
	switch {
	case from > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	case !since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	return read(ctx, stream, cfg, each)
}

// ReadLatest hands the last message stored on each subject matching
// subject (a pattern) in stream to each, until each returns false: a
// key-value bucket's current entries, deleted ones included (their
// KV-Operation header says so). It reads through an ephemeral ordered
// consumer, which it deletes afterwards.
func ReadLatest(ctx context.Context, stream jetstream.Stream, subject string, each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	return read(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject},
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy}, each)
}

// read hands each message cfg's ordered consumer delivers to each, until
// each returns false or nothing more is stored.
func read(ctx context.Context, stream jetstream.Stream, cfg jetstream.OrderedConsumerConfig, each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	subject := cfg.FilterSubjects[0]
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", subject, err)
	}
	defer func() {
		if name := cons.CachedInfo().Name; name != "" {
			_ = stream.DeleteConsumer(context.WithoutCancel(ctx), name)
		}
	}()
	for {
		batch, err := cons.FetchNoWait(readBatch)
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			if !each(m, meta) {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		if got == 0 {
			return nil
		}
	}
}
