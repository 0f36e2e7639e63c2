package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
)

// DuplicateWindow is how long JetStream remembers message ids: a message
// published again within it (an outbox retry after a crash) is dropped.
const DuplicateWindow = 10 * time.Minute

// Streams returns the configuration of every stream Flotilla uses, replicated
// replicas times (1 embedded, 3 in a cluster).
func Streams(replicas int) []jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return []jetstream.StreamConfig{{
		Name:        subjects.EventsStream,
		Description: "Flotilla domain events: the replayable history of every resource, bounded by age and size",
		Subjects:    []string{subjects.EventsAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      EventsMaxAge,
		MaxBytes:    EventsMaxBytes,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
		Discard:     jetstream.DiscardOld,
	}, {
		Name:        subjects.AuditStream,
		Description: "Flotilla audit records: every secret read, failed login and token issued or revoked, kept for a year",
		Subjects:    []string{subjects.AuditAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      365 * 24 * time.Hour,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
	}, {
		Name:        subjects.PoisonStream,
		Description: "Flotilla events a consumer could never handle, kept for 30 days",
		Subjects:    []string{subjects.PoisonAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      30 * 24 * time.Hour,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
	}, {
		Name:        subjects.ProvisioningStream,
		Description: "Flotilla provisioning work: one message per instance that needs reconciling",
		Subjects:    []string{subjects.ProvisionAll()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
	}, {
		Name:              subjects.AgentLogsStream,
		Description:       "Agent log lines, per instance subject, bounded by count and age",
		Subjects:          []string{subjects.AgentLogsAll()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxAge:            7 * 24 * time.Hour,
		MaxMsgsPerSubject: AgentLogLinesKept,
		MaxBytes:          1 << 30,
		Discard:           jetstream.DiscardOld,
		Duplicates:        DuplicateWindow,
		Replicas:          replicas,
	}}
}

// FLOTILLA_EVENTS keeps events for EventsMaxAge and at most EventsMaxBytes,
// dropping the oldest first. The inventory's tables are the source of truth;
// the stream is history (instance timelines) and the feed of the services'
// durable consumers, which must not stay stopped for longer than the age.
const (
	EventsMaxAge   = 90 * 24 * time.Hour
	EventsMaxBytes = 4 << 30
)

// AgentLogLinesKept is how many log lines (messages) are kept per instance.
const AgentLogLinesKept = 10000

// EnsureStreams creates or updates the named streams (every stream when
// none is named); it is idempotent and safe to run from several services at
// once. A service declares the streams it publishes to or consumes
// (endpoints.StreamsOf), the ones its bus permissions let it declare.
//
// A server whose JetStream is not answering yet (just started, or the
// account's JetStream still being enabled: "no responders") is asked again
// for up to jetStreamWait.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int, names ...string) error {
	for _, cfg := range Streams(replicas) {
		if len(names) > 0 && !slices.Contains(names, cfg.Name) {
			continue
		}
		deadline := time.Now().Add(jetStreamWait)
		for {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			if err == nil {
				break
			}
			if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
				return fmt.Errorf("declare stream %s: %w", cfg.Name, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("declare stream %s: %w", cfg.Name, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// jetStreamWait is how long EnsureStreams waits for JetStream to answer.
const jetStreamWait = 30 * time.Second
