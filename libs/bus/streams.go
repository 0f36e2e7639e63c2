package bus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
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
		Description: "Flotilla audit records: every mutating API call, secret read, login, token and user change, kept for a year",
		Subjects:    []string{subjects.AuditAll()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      AuditMaxAge,
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
		Description:       "Agent log lines, per instance subject; each instance's logRetention is enforced below these ceilings",
		Subjects:          []string{subjects.AgentLogsAll()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxAge:            AgentLogMaxAge,
		MaxMsgsPerSubject: AgentLogMaxLines,
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

// AuditMaxAge is how long the audit stream keeps a record (and the
// inventory's projection of it, GET /api/v1/audit).
const AuditMaxAge = 365 * 24 * time.Hour

// Agent log retention. The stream keeps at most AgentLogMaxLines lines per
// instance and none older than AgentLogMaxAge (and 1 GiB in all, the oldest
// of any instance dropped first); below that ceiling the agent gateway
// enforces each instance's logRetention, whose unset fields mean the
// defaults.
const (
	AgentLogMaxLines     = 1_000_000
	AgentLogMaxAge       = 30 * 24 * time.Hour
	AgentLogMinAge       = time.Minute
	AgentLogDefaultLines = 100_000
	AgentLogDefaultAge   = 7 * 24 * time.Hour
)

// AgentLogRetention returns how many lines of an instance are kept and for
// how long: r's values, or the defaults for those unset (zero).
func AgentLogRetention(r *inventoryv1.LogRetention) (maxLines uint64, maxAge time.Duration) {
	maxLines, maxAge = AgentLogDefaultLines, AgentLogDefaultAge
	if n := r.GetMaxLines(); n > 0 {
		maxLines = uint64(n)
	}
	if d := r.GetMaxAge().AsDuration(); r.GetMaxAge() != nil && d > 0 {
		maxAge = d
	}
	return maxLines, maxAge
}

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
		if err := waitJetStream(ctx, func() error { return declareStream(ctx, js, cfg) }); err != nil {
			return fmt.Errorf("declare stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// declareStream creates cfg's stream, or updates it when a field cfg sets
// differs. A stream already as declared is left alone: every service
// declares its streams at each start, and an update rewrites the stream's
// configuration under the readers of it (nats-server 2.15 reads a file
// store's name without its lock while UpdateConfig writes it: a data race
// the race detector reports in a test binary that embeds the server).
func declareStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	if err == nil && declared(cfg, s.CachedInfo().Config) {
		return nil
	}
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	_, err = js.CreateOrUpdateStream(ctx, cfg)
	return err
}

// declared says have, a stream's or bucket's configuration as the server
// reports it, has every field want sets (the fields want leaves zero take
// the server's defaults, which differ from zero).
func declared[C jetstream.StreamConfig | jetstream.KeyValueConfig](want, have C) bool {
	w, h := reflect.ValueOf(want), reflect.ValueOf(have)
	for i := range w.NumField() {
		if f := w.Field(i); !f.IsZero() && !reflect.DeepEqual(f.Interface(), h.Field(i).Interface()) {
			return false
		}
	}
	return true
}

// DeclareKeyValue creates or updates a key-value bucket, waiting for
// JetStream as EnsureStreams does; a bucket already as declared is left
// alone, as a stream is.
func DeclareKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := waitJetStream(ctx, func() error {
		var err error
		kv, err = declareKeyValue(ctx, js, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("declare key-value bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// declareKeyValue creates cfg's bucket, or updates it when a field cfg sets
// differs (as declareStream).
func declareKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err == nil {
		have, err := BucketStatus(ctx, kv)
		if err != nil {
			return nil, err
		}
		if declared(cfg, have.Config()) {
			return kv, nil
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, err
	}
	return js.CreateOrUpdateKeyValue(ctx, cfg)
}

// BucketStatus reads a key-value bucket's status with its stream's
// information (its configuration, its creation time).
func BucketStatus(ctx context.Context, kv jetstream.KeyValue) (*jetstream.KeyValueBucketStatus, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("the status of bucket %s: %w", kv.Bucket(), err)
	}
	b, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || b.StreamInfo() == nil {
		return nil, fmt.Errorf("the status of bucket %s (%T) holds no stream information", kv.Bucket(), st)
	}
	return b, nil
}

// waitJetStream runs declare until it succeeds, fails for a reason other
// than JetStream not being ready (jetStreamNotReady), or jetStreamWait
// has passed.
func waitJetStream(ctx context.Context, declare func() error) error {
	deadline := time.Now().Add(jetStreamWait)
	for {
		err := declare()
		if err == nil || !jetStreamNotReady(ctx, err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// jetStreamWait is how long EnsureStreams and DeclareKeyValue wait for
// JetStream to answer.
const jetStreamWait = 60 * time.Second

// JetStream API error codes (nats-server's errors.json) the client module
// does not name.
const (
	jsClusterNoPeers      jetstream.ErrorCode = 10005 // "no suitable peers for placement"
	jsClusterNotAvailable jetstream.ErrorCode = 10008 // "JetStream system temporarily unavailable"
)

// jetStreamNotReady says err is JetStream not ready yet (Unanswered) while
// ctx has time left to ask again.
func jetStreamNotReady(ctx context.Context, err error) bool {
	return ctx.Err() == nil && Unanswered(err)
}

// Unanswered says err is JetStream not answering now, worth asking again
// later: no server answering its API, a request that timed out (a cluster
// electing its leaders, a loaded machine), or the cluster saying it is not
// available or has no peers for the stream yet (servers still joining).
func Unanswered(err error) bool {
	var api *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return true
	case errors.As(err, &api):
		return api.ErrorCode == jsClusterNotAvailable || api.ErrorCode == jsClusterNoPeers
	}
	return false
}
