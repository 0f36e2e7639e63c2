package bus

import (
	"context"
	"fmt"
	"time"

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
		Description: "Flotilla domain events: the replayable history of every resource",
		Subjects:    []string{subjects.EventsAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		Replicas:    replicas,
		Discard:     jetstream.DiscardOld,
	}}
}

// EnsureStreams creates or updates every stream; it is idempotent and safe to
// run from several services at once.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range Streams(replicas) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("declare stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
