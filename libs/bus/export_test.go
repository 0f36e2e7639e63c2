package bus

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// GetManySynced is GetLatestMany's batched read alone, counted only if the
// answering replica had reached synced.
func GetManySynced(ctx context.Context, js jetstream.JetStream, bucket string, keys []string, synced uint64) (map[string]Entry, bool) {
	return getMany(ctx, js, bucket, keys, synced)
}
