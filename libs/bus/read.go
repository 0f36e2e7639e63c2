package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/apierr"
)

// ErrIncomplete ends a read whose consumer did not deliver, within
// readPatience, everything stored on the subject (see read): what was read
// is not the whole. It is an unavailable error: try again.
var ErrIncomplete = apierr.Unavailable("the message stream did not deliver everything it holds in time; try again")

// readBatch is how many messages ReadSubject asks for at a time;
// readPatience how long a read waits at most for messages a fetch did not
// find (see read).
const (
	readBatch    = 500
	readPatience = 3 * time.Second
)

// ReadSubject hands each message stored on subject in stream to each, in
// order, with its metadata, until each returns false or nothing more is
// stored: from stream sequence from, or (from 0) from the time since, or
// (both zero) from the oldest. It reads through an ephemeral consumer,
// which it deletes afterwards.
func ReadSubject(ctx context.Context, stream jetstream.Stream, subject string, from uint64, since time.Time,
	each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	cfg := readConfig(subject)
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
// KV-Operation header says so). It reads through an ephemeral consumer,
// which it deletes afterwards.
func ReadLatest(ctx context.Context, stream jetstream.Stream, subject string, each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	cfg := readConfig(subject)
	cfg.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	return read(ctx, stream, cfg, each)
}

// readConfig is the configuration of a read's consumer of subject: one
// replica in memory, no acknowledgements, removed by the server should
// the reader not delete it.
func readConfig(subject string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{FilterSubject: subject, AckPolicy: jetstream.AckNonePolicy,
		Replicas: 1, MemoryStorage: true, InactiveThreshold: time.Minute}
}

// ReadBackwards hands the messages stored on subject in stream below stream
// sequence end (0: all of them) to each, newest first, until each returns
// false or the oldest is handed. A consumer reads forward only, so it reads
// windows of the stream backwards, window (at least 1) sequences first and
// each window twice the size of the last, and hands each window's messages
// in reverse.
func ReadBackwards(ctx context.Context, stream jetstream.Stream, subject string, end uint64, window uint64,
	each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	info, err := stream.Info(ctx)
	if err != nil && ctx.Err() == nil && Unanswered(err) {
		return unanswered(fmt.Errorf("stream info: %w", err))
	}
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	first := max(info.State.FirstSeq, 1)
	if last := info.State.LastSeq + 1; end == 0 || end > last {
		end = last
	}
	type stored struct {
		m    jetstream.Msg
		meta *jetstream.MsgMetadata
	}
	window = max(window, 1)
	for lo := end; lo > first; window *= 2 {
		start := lo - min(window, lo-first)
		var part []stored
		err := ReadSubject(ctx, stream, subject, start, time.Time{}, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
			if meta.Sequence.Stream >= lo {
				return false
			}
			part = append(part, stored{m, meta})
			return true
		})
		if err != nil {
			return err
		}
		for i := len(part) - 1; i >= 0; i-- {
			if !each(part[i].m, part[i].meta) {
				return nil
			}
		}
		lo = start
	}
	return nil
}

// read hands each message cfg's consumer delivers to each, until each
// returns false or nothing more is stored.
//
// It reads through a plain ephemeral consumer, not nats.go's ordered one:
// that one recreates its server-side consumer at every fetch, retrying
// without end and deaf to ctx, which held a request (removing a lost
// host's managers) past every deadline while a stream elected a leader.
// What the ordered consumer is for, no message skipped, read checks
// itself: each delivery's consumer sequence follows the last one, else
// the consumer is created again after the last message handed over.
//
// A fetch that finds nothing is not taken for the end on its word: on a
// busy server a new consumer's first fetches have answered "no messages"
// while it had some (an instance's log lines read back as none, or only
// the first few, right after they were stored). So read asks the stream
// for the subject's last message first, and reads until it has had that
// one, asking again (and waiting a little longer each time) only while a
// fetch finds nothing before it: the last may have been removed meanwhile.
// It waits so at most readPatience in all, then ends with ErrIncomplete:
// a read must not hang, should its consumer never deliver that last
// message, nor pass off part of what is stored as the whole (a page of an
// instance's log read back as empty, a list of managers missing some).
func read(ctx context.Context, stream jetstream.Stream, cfg jetstream.ConsumerConfig, each func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	subject := cfg.FilterSubject
	var cons jetstream.Consumer
	drop := func() {
		if cons == nil {
			return
		}
		// Bounded, so a lost server does not hold the reader: the consumer
		// goes by itself after its InactiveThreshold.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
		cons = nil
	}
	defer drop()
	var seen, delivered uint64 // the highest stream sequence handed over; the consumer's deliveries
	// again has the consumer made anew, to deliver from the message after
	// the last handed over.
	again := func() {
		drop()
		if seen > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, seen+1, nil
		}
	}
	wait := 5 * time.Millisecond
	patience := time.Now().Add(readPatience)
	// pause waits a little longer each time, or ends the read when its
	// context ends.
	pause := func() error {
		select {
		case <-ctx.Done():
			return fmt.Errorf("read %s: %w", subject, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
		return nil
	}
	// failed decides on a request of the read's that failed: one the stream
	// may answer once it has a leader again (lostTrack) is made again, with
	// a new consumer, while patience lasts; at its end the read is
	// unavailable; any other failure ends the read.
	failed := func(what string, err error) error {
		if ctx.Err() != nil || !lostTrack(err) {
			return fmt.Errorf("%s %s: %w", what, subject, err)
		}
		if time.Now().After(patience) {
			return unanswered(fmt.Errorf("%s %s: %w", what, subject, err))
		}
		again()
		return pause()
	}
	var last uint64
	for {
		var err error
		if last, err = lastToRead(ctx, stream, cfg); err == nil {
			break
		}
		if err := failed("last message on", err); err != nil {
			return err
		}
	}
	if last == 0 {
		return nil
	}
	for {
		if cons == nil {
			var err error
			if cons, err = stream.CreateConsumer(ctx, cfg); err != nil {
				if err := failed("consumer on", err); err != nil {
					return err
				}
				continue
			}
			delivered = 0
		}
		batch, err := cons.FetchNoWait(readBatch)
		if err != nil {
			if err := failed("read", err); err != nil {
				return err
			}
			continue
		}
		got, gap := 0, false
		for m := range batch.Messages() {
			if gap {
				continue // drained: the consumer is created again below
			}
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			if meta.Sequence.Consumer != delivered+1 {
				gap = true
				continue
			}
			delivered = meta.Sequence.Consumer
			got++
			seen = max(seen, meta.Sequence.Stream)
			if !each(m, meta) {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			if err := failed("read", err); err != nil {
				return err
			}
			continue
		}
		if gap {
			again()
			continue
		}
		if seen >= last {
			return nil
		}
		if got > 0 {
			continue
		}
		if last, err = lastToRead(ctx, stream, cfg); err != nil {
			if err := failed("last message on", err); err != nil {
				return err
			}
			continue
		}
		if seen >= last {
			return nil
		}
		if time.Now().After(patience) {
			return fmt.Errorf("read %s: delivered up to stream sequence %d of %d: %w", subject, seen, last, ErrIncomplete)
		}
		if err := pause(); err != nil {
			return err
		}
	}
}

// unanswered is the unavailable error of a read whose stream did not
// answer, cause.
func unanswered(cause error) error {
	e := apierr.Unavailable("the message stream did not answer in time (it may be electing a leader); try again shortly")
	e.Err = cause
	return e
}

// lostTrack says err is a read's request that may succeed once made
// again: JetStream not answering just now (Unanswered), or the read's
// consumer gone with its stream's old leader.
func lostTrack(err error) bool {
	return Unanswered(err) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged)
}

// lastToRead returns the stream sequence of the last message stored on
// cfg's subject if cfg's consumer is to deliver it, else 0: nothing is
// stored, or all of it lies before where cfg starts.
func lastToRead(ctx context.Context, stream jetstream.Stream, cfg jetstream.ConsumerConfig) (uint64, error) {
	subject := cfg.FilterSubject
	m, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last message on %s: %w", subject, err)
	}
	switch {
	case cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && m.Sequence < cfg.OptStartSeq,
		cfg.DeliverPolicy == jetstream.DeliverByStartTimePolicy && m.Time.Before(*cfg.OptStartTime):
		return 0, nil
	}
	return m.Sequence, nil
}
