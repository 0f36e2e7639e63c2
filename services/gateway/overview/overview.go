// Package overview is the fleet overview's read model: how many instances
// are in each state, how many of their agents are connected (and at which
// versions), which
// instances failed and whose node certificates end soon. Each gateway
// keeps its own (Keep): it replays the instance events of FLOTILLA_EVENTS
// (each carries the instance after the change) from the start and follows
// them, and fills in, from one listing of the instances, those no event in
// the stream speaks of (the stream keeps 90 days: an instance unchanged for
// longer has none). It holds no database of its own.
package overview

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
)

// MaxNamed is how many instances a Snapshot names in each of its lists
// (failed ones, certificates ending soon); its counts count them all.
const MaxNamed = 20

// DefaultCertificateWarning is how long before a node certificate ends a
// Snapshot names its instance, unless New is given another: a custom
// certificate the operator must replace by then, or the fleet CA's or an
// ACME one whose renewals (at two thirds of its lifetime) have kept
// failing.
const DefaultCertificateWarning = 14 * 24 * time.Hour

// ErrNotReady says the overview has not yet replayed the events stored
// when it started, or not yet listed the instances: its counts would be
// short.
var ErrNotReady = errors.New("the fleet overview is still being built from the instance events")

// Overview counts instances by state.
type Overview struct {
	mu     sync.Mutex
	inst   map[string]instance // id → what the overview needs of it
	counts map[string]int      // state → instances
	// expected and connected count the instances with a VM, and those of
	// them whose agent is connected; failed holds the failed ones.
	expected, connected int
	// versions counts the connected agents by version.
	versions map[string]int
	failed   map[string]bool
	seq      uint64 // last stream sequence applied
	// evented holds the instances an event was applied for (deleted ones
	// too) while the listing is under way: the listing fills in only the
	// others. Nil once it is done.
	evented map[string]bool
	// replayed: every event stored at the start applied; listed: the
	// instances listed. Ready when both.
	replayed, listed bool
	ready            chan struct{}
	// warning is how long before a node certificate ends it is named.
	warning time.Duration
}

// instance is what the overview keeps of one.
type instance struct {
	name, state, detail string
	vm, connected       bool
	agentVersion        string    // a connected agent's
	certEnd             time.Time // its VM's node certificate's, if any
}

// Failure is a failed instance as a Snapshot names it.
type Failure struct {
	ID, Name, Detail string
}

// CertificateEnding is an instance whose node certificate ends soon, as a
// Snapshot names it.
type CertificateEnding struct {
	ID, Name string
	NotAfter time.Time
}

// Snapshot is the overview at one moment.
type Snapshot struct {
	// States counts the instances in each state (none: left out).
	States map[string]int
	// Instances is how many there are.
	Instances int
	// AgentsExpected counts the instances with a VM; AgentsConnected those
	// of them whose agent has a stream to an agent gateway.
	AgentsExpected, AgentsConnected int
	// AgentVersions counts the connected agents by the version they report.
	AgentVersions map[string]int
	// Failures are failed instances by name, at most MaxNamed.
	Failures []Failure
	// CertificatesEnding are the instances with a VM whose node
	// certificate ends within CertificateWarning, or has ended, soonest
	// first, at most MaxNamed; CertificatesEndingCount counts them all.
	CertificatesEnding      []CertificateEnding
	CertificatesEndingCount int
	// CertificateWarning is the overview's window (New).
	CertificateWarning time.Duration
	// Sequence is the stream sequence of the last event applied.
	Sequence uint64
}

// New returns an empty overview, not ready, that names the instances
// whose node certificate ends within warning (0: DefaultCertificateWarning).
func New(warning time.Duration) *Overview {
	if warning <= 0 {
		warning = DefaultCertificateWarning
	}
	return &Overview{inst: map[string]instance{}, counts: map[string]int{}, versions: map[string]int{}, failed: map[string]bool{},
		evented: map[string]bool{}, ready: make(chan struct{}), warning: warning}
}

// Ready is closed once the overview is ready: every event stored when
// Keep started applied, and the instances listed.
func (o *Overview) Ready() <-chan struct{} { return o.ready }

// Snapshot returns the overview now, or ErrNotReady.
func (o *Overview) Snapshot() (Snapshot, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.replayed || !o.listed {
		return Snapshot{}, ErrNotReady
	}
	s := Snapshot{States: maps.Clone(o.counts), Instances: len(o.inst), AgentsExpected: o.expected,
		AgentsConnected: o.connected, AgentVersions: maps.Clone(o.versions), Sequence: o.seq, CertificateWarning: o.warning}
	for id := range o.failed {
		in := o.inst[id]
		s.Failures = append(s.Failures, Failure{ID: id, Name: in.name, Detail: in.detail})
	}
	slices.SortFunc(s.Failures, func(a, b Failure) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID)) })
	s.Failures = s.Failures[:min(len(s.Failures), MaxNamed)]
	soon := time.Now().Add(o.warning)
	for id, in := range o.inst {
		if in.vm && !in.certEnd.IsZero() && in.certEnd.Before(soon) {
			s.CertificatesEnding = append(s.CertificatesEnding, CertificateEnding{ID: id, Name: in.name, NotAfter: in.certEnd})
		}
	}
	slices.SortFunc(s.CertificatesEnding, func(a, b CertificateEnding) int {
		return cmp.Or(a.NotAfter.Compare(b.NotAfter), cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	s.CertificatesEndingCount = len(s.CertificatesEnding)
	s.CertificatesEnding = s.CertificatesEnding[:min(len(s.CertificatesEnding), MaxNamed)]
	return s, nil
}

// Apply takes one instance event (its subject and encoded envelope) at
// stream sequence seq; events at or before the last one applied are
// skipped, so replays and redeliveries change nothing. Events of other
// entities are ignored.
func (o *Overview) Apply(seq uint64, subject string, data []byte) error {
	entity, id, verb, ok := subjects.ParseEvent(subject)
	if !ok || entity != subjects.NounInstance {
		return nil
	}
	ev := &eventsv1.Event{}
	in := &inventoryv1.Instance{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return fmt.Errorf("event %d: %w", seq, err)
	}
	if err := ev.GetData().UnmarshalTo(in); err != nil {
		return fmt.Errorf("event %d: %w", seq, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq <= o.seq {
		return nil
	}
	o.seq = seq
	if o.evented != nil {
		o.evented[id] = true
	}
	if vocab.Verb(verb) == vocab.VerbDeleted {
		o.set(id, nil)
	} else {
		o.set(id, in)
	}
	return nil
}

// fill takes one listed instance, unless an event spoke of it: the event
// stream orders every change, a listing does not.
func (o *Overview) fill(in *inventoryv1.Instance) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.evented[in.GetId()] {
		o.set(in.GetId(), in)
	}
}

// set replaces what the overview holds of instance id with in (nil: it
// is gone), keeping the counts. The caller holds mu.
func (o *Overview) set(id string, in *inventoryv1.Instance) {
	if old, ok := o.inst[id]; ok {
		o.count(id, old, -1)
		delete(o.inst, id)
	}
	if in == nil {
		return
	}
	n := instance{name: in.GetName(), state: in.GetState(), detail: in.GetStateDetail(), vm: in.GetVmId() != "",
		connected: in.GetVmId() != "" && in.GetAgent().GetStatus() == string(vocab.AgentConnected)}
	if n.connected {
		n.agentVersion = in.GetAgent().GetVersion()
	}
	if end := in.GetAgent().GetNodeCertificateNotAfter(); end != nil {
		n.certEnd = end.AsTime()
	}
	o.inst[id] = n
	o.count(id, n, 1)
}

// count adds instance id (by 1) to the tallies, or takes it off (by -1).
func (o *Overview) count(id string, in instance, by int) {
	if o.counts[in.state] += by; o.counts[in.state] == 0 {
		delete(o.counts, in.state)
	}
	if in.vm {
		o.expected += by
	}
	if in.connected {
		o.connected += by
		if o.versions[in.agentVersion] += by; o.versions[in.agentVersion] == 0 {
			delete(o.versions, in.agentVersion)
		}
	}
	if in.state == string(vocab.StateFailed) {
		if by > 0 {
			o.failed[id] = true
		} else {
			delete(o.failed, id)
		}
	}
}

// mark records that the replay (replayed) or the listing (listed) is done,
// and closes Ready when both are.
func (o *Overview) mark(replayed, listed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	was := o.replayed && o.listed
	o.replayed, o.listed = o.replayed || replayed, o.listed || listed
	if o.listed {
		o.evented = nil
	}
	if !was && o.replayed && o.listed {
		close(o.ready)
	}
}

// Lister hands every instance to each, page by page.
type Lister func(ctx context.Context, each func(*inventoryv1.Instance)) error

// Keep builds the overview and keeps it current until ctx ends: it
// replays every instance event from the start of FLOTILLA_EVENTS and
// follows new ones, while list (retried until it succeeds) fills in the
// instances no event speaks of. What goes wrong is handed to onErr and
// retried: the consumer's creation (the stream may not exist yet, or be
// electing a leader), an event it cannot decode (skipped), the listing.
// It returns when ctx ends.
func (o *Overview) Keep(ctx context.Context, js jetstream.JetStream, list Lister, onErr func(error)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		retry(ctx, func() error {
			err := list(ctx, o.fill)
			if err == nil {
				o.mark(false, true)
			}
			return err
		}, func(err error) { onErr(fmt.Errorf("list instances: %w", err)) })
	})
	var cc jetstream.ConsumeContext
	retry(ctx, func() (err error) {
		cc, err = o.consume(ctx, js, onErr)
		return err
	}, func(err error) { onErr(fmt.Errorf("replay instance events: %w", err)) })
	<-ctx.Done()
	if cc != nil {
		cc.Stop()
	}
}

// consume starts the ordered consumer that replays and follows the
// instance events into the overview.
func (o *Overview) consume(ctx context.Context, js jetstream.JetStream, onErr func(error)) (jetstream.ConsumeContext, error) {
	cons, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, "*")}})
	if err != nil {
		return nil, err
	}
	if cons.CachedInfo().NumPending == 0 {
		o.mark(true, false)
	}
	return cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			onErr(fmt.Errorf("instance event: %w", err))
			return
		}
		if err := o.Apply(meta.Sequence.Stream, m.Subject(), m.Data()); err != nil {
			onErr(err)
		}
		if meta.NumPending == 0 {
			o.mark(true, false)
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { onErr(fmt.Errorf("instance events: %w", err)) }))
}

// retry calls f until it succeeds or ctx ends, handing each failure to
// onErr and waiting longer after each (1 s, doubling up to 30 s).
func retry(ctx context.Context, f func() error, onErr func(error)) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := f()
		if err == nil || ctx.Err() != nil {
			return
		}
		onErr(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
