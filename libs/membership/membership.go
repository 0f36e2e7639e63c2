// Package membership keeps the cluster's list of running service processes
// (managers) in a JetStream key-value bucket, subjects.ManagersBucket: each
// process writes its own key ("<service>.<host>.<process id>", a
// systemv1.Manager) every Interval, deletes it when it stops cleanly, and a
// process that dies leaves a key the bucket's TTL expires. internal/stack
// runs one Member per service it starts (so `flotilla up` has six, one
// process); the gateway reads them all with List for GET /api/v1/cluster.
package membership

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/every"
)

// Defaults: a heartbeat every DefaultInterval; a member last seen more
// than HealthyWithin ago is reported unhealthy, and its key expires
// DefaultTTL after its last heartbeat.
const (
	DefaultInterval = 5 * time.Second
	HealthyWithin   = 15 * time.Second
	DefaultTTL      = 30 * time.Second
)

// processID names this process among others of the same host: random, so
// a restarted process (or one in another container with the same host
// name and pid) is a new member.
var processID = func() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}()

// Config is one member's settings.
type Config struct {
	Service string
	Version string
	// Host defaults to os.Hostname.
	Host string
	// Interval is how often the member writes its heartbeat
	// (DefaultInterval); TTL is the bucket's: how long a key outlives its
	// last heartbeat (DefaultTTL). Every process of a cluster must use the
	// same TTL: each declares the bucket.
	Interval, TTL time.Duration
	// Replicas is the bucket's replication (FLOTILLA_STREAM_REPLICAS).
	Replicas int
	Log      *slog.Logger
	// Readiness, when set, is read at each heartbeat: why the service is
	// not ready ("" when it is) and whether it stepped out of its queue
	// groups for it (rpc.Service.Readiness).
	Readiness func() (notReady string, out bool)
	// CredentialsProblem is how the process's bus credentials differ from
	// its release's ("" when they do not), cut to MaxCredentialsProblem
	// bytes.
	CredentialsProblem string
	// Features are what the service does that an earlier release's may not
	// (vocab.ManagerFeature; see Lacking).
	Features []string
}

// MaxCredentialsProblem bounds a member's CredentialsProblem: its record
// must fit the bucket's values.
const MaxCredentialsProblem = 1000

// kvOperation is the header JetStream's key-value store marks a deleted or
// purged key with.
const kvOperation = "KV-Operation"

// Member is one service process's membership.
type Member struct {
	kv        jetstream.KeyValue
	rec       *systemv1.Manager
	readiness func() (string, bool)
	interval  time.Duration
	log       *slog.Logger
	left      sync.Once
}

// DeclareBucket creates or updates the managers' bucket, with keys
// expiring ttl after their last write.
func DeclareBucket(ctx context.Context, js jetstream.JetStream, replicas int, ttl time.Duration) (jetstream.KeyValue, error) {
	kv, err := bus.DeclareKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:       subjects.ManagersBucket,
		Description:  "Flotilla managers: one heartbeat per running service process, expiring when it stops",
		History:      1,
		TTL:          ttl,
		MaxValueSize: 4096,
		Storage:      jetstream.FileStorage,
		Replicas:     max(replicas, 1),
	})
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// Join declares the bucket and writes the member's first heartbeat: when
// it returns, the process is listed. Run keeps it listed.
func Join(ctx context.Context, js jetstream.JetStream, cfg Config) (*Member, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	kv, err := DeclareBucket(ctx, js, cfg.Replicas, cfg.TTL)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	m := &Member{kv: kv, interval: cfg.Interval, log: cfg.Log, readiness: cfg.Readiness, rec: &systemv1.Manager{
		Name:      subjects.ManagerKey(cfg.Service, cfg.Host, processID),
		Service:   cfg.Service,
		Host:      cfg.Host,
		Version:   cfg.Version,
		Pid:       int32(os.Getpid()),
		StartTime: timestamppb.New(now),
		// Cut at a rune's start: the record is a protobuf string.
		CredentialsProblem: strings.ToValidUTF8(cut(cfg.CredentialsProblem, MaxCredentialsProblem), ""),
		Features:           cfg.Features,
	}}
	if err := m.beat(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Name is the member's key.
func (m *Member) Name() string { return m.rec.GetName() }

// beat writes the heartbeat.
func (m *Member) beat(ctx context.Context) error {
	m.rec.LastSeenTime = timestamppb.Now()
	if m.readiness != nil {
		m.rec.NotReady, m.rec.SteppedOut = m.readiness()
	}
	data, err := proto.Marshal(m.rec)
	if err != nil {
		return err
	}
	if _, err := m.kv.Put(ctx, m.rec.GetName(), data); err != nil {
		return fmt.Errorf("heartbeat %s: %w", m.rec.GetName(), err)
	}
	return nil
}

// Run writes a heartbeat every interval until ctx ends, then leaves. A
// heartbeat that fails is logged and tried again at the next.
func (m *Member) Run(ctx context.Context) {
	every.Run(ctx, m.interval, m.log, "membership heartbeat", func(ctx context.Context) error {
		bctx, cancel := context.WithTimeout(ctx, m.interval)
		defer cancel()
		return m.beat(bctx)
	})
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	m.Leave(lctx)
}

// Leave deletes the member's key (once): the process is no longer listed.
func (m *Member) Leave(ctx context.Context) {
	m.left.Do(func() {
		if err := m.kv.Delete(ctx, m.rec.GetName()); err != nil {
			m.log.WarnContext(ctx, "leave the managers' bucket: the key expires by itself", "member", m.rec.GetName(), "error", err)
		}
	})
}

// List returns every member in the bucket, healthy when last seen within
// healthyWithin of now (0: HealthyWithin), ordered by name. No bucket
// (nothing joined yet) is an empty list.
func List(ctx context.Context, js jetstream.JetStream, now time.Time, healthyWithin time.Duration) ([]*systemv1.Manager, error) {
	entries, err := read(ctx, js, now, healthyWithin)
	out := make([]*systemv1.Manager, len(entries))
	for i, e := range entries {
		out[i] = e.m
	}
	return out, err
}

// Lacking returns the members of service listed in the bucket that do not
// list feature, ordered by name: healthy or not, since one only slow to
// write its heartbeat still answers requests. A setting that needs every
// process of service to act on it is refused while any is returned.
func Lacking(ctx context.Context, js jetstream.JetStream, service, feature string) ([]*systemv1.Manager, error) {
	all, err := List(ctx, js, time.Now(), 0)
	if err != nil {
		return nil, err
	}
	return LackingOf(all, service, feature), nil
}

// LackingOf returns the members of service among managers that do not
// list feature, in their order.
func LackingOf(managers []*systemv1.Manager, service, feature string) []*systemv1.Manager {
	var out []*systemv1.Manager
	for _, m := range managers {
		if m.GetService() == service && !slices.Contains(m.GetFeatures(), feature) {
			out = append(out, m)
		}
	}
	return out
}

// entry is a member as read, with its key's revision.
type entry struct {
	m   *systemv1.Manager
	rev uint64
}

// read reads every member's latest heartbeat (see List).
func read(ctx context.Context, js jetstream.JetStream, now time.Time, healthyWithin time.Duration) ([]entry, error) {
	if healthyWithin <= 0 {
		healthyWithin = HealthyWithin
	}
	stream, err := js.Stream(ctx, subjects.KVStream(subjects.ManagersBucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("managers' bucket: %w", err)
	}
	// A heartbeat written while reading comes too: the latest wins.
	latest := map[string]entry{}
	var bad []string
	prefix := "$KV." + subjects.ManagersBucket + "."
	err = bus.ReadLatest(ctx, stream, subjects.KVAll(subjects.ManagersBucket), func(msg jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		key := strings.TrimPrefix(msg.Subject(), prefix)
		delete(latest, key)
		if msg.Headers().Get(kvOperation) != "" { // DEL or PURGE: the process left
			return true
		}
		m := &systemv1.Manager{}
		if err := proto.Unmarshal(msg.Data(), m); err != nil {
			bad = append(bad, key)
			return true
		}
		m.Name = key
		m.Healthy = now.Sub(m.GetLastSeenTime().AsTime()) <= healthyWithin
		latest[key] = entry{m: m, rev: meta.Sequence.Stream}
		return true
	})
	out := slices.Collect(maps.Values(latest))
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(a.m.GetName(), b.m.GetName()) })
	if len(bad) > 0 {
		return out, fmt.Errorf("managers' bucket: undecodable entries %s", strings.Join(bad, ", "))
	}
	return out, nil
}

// ErrNoSuchManager says no manager is listed under the name Remove was
// given; ErrRunning that one of them is running (seen within the healthy
// window).
var (
	ErrNoSuchManager = errors.New("no manager is listed under that name")
	ErrRunning       = errors.New("manager is running")
)

// Remove deletes the keys of the managers named name — every manager of a
// host, or the one whose key it is — so they are listed no more, and
// returns them. It removes none when one of them is healthy (ErrRunning,
// naming it): a running process would list itself again at its next
// heartbeat. Each key is deleted at the revision read, so a heartbeat
// written since keeps its manager listed.
func Remove(ctx context.Context, js jetstream.JetStream, name string, now time.Time, healthyWithin time.Duration) ([]*systemv1.Manager, error) {
	entries, err := read(ctx, js, now, healthyWithin)
	if err != nil {
		return nil, err
	}
	var match []entry
	for _, e := range entries {
		if e.m.GetName() == name || e.m.GetHost() == name {
			match = append(match, e)
		}
	}
	if len(match) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchManager, name)
	}
	var running []string
	for _, e := range match {
		if e.m.GetHealthy() {
			running = append(running, fmt.Sprintf("%s (seen %s ago)", e.m.GetName(), now.Sub(e.m.GetLastSeenTime().AsTime()).Round(time.Second)))
		}
	}
	if len(running) > 0 {
		return nil, fmt.Errorf("%w: %s: stop its services first, or wait until it has not been seen for %s", ErrRunning, strings.Join(running, ", "), healthyWithin)
	}
	kv, err := js.KeyValue(ctx, subjects.ManagersBucket)
	if err != nil {
		return nil, fmt.Errorf("managers' bucket: %w", err)
	}
	out := make([]*systemv1.Manager, 0, len(match))
	for _, e := range match {
		err := kv.Delete(ctx, e.m.GetName(), jetstream.LastRevision(e.rev))
		if isRevisionMismatch(err) { // a heartbeat since: it runs again
			continue
		}
		if err != nil {
			return out, fmt.Errorf("remove manager %s: %w", e.m.GetName(), err)
		}
		out = append(out, e.m)
	}
	return out, nil
}

// isRevisionMismatch says a write at a revision found the key written
// since.
func isRevisionMismatch(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &api) && api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// cut is s, at most n bytes of it, with "…" for what is left out.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-len("…")] + "…"
}
