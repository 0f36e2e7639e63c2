// Package provisioner is the reconciler: it takes provisioning work from the
// FLOTILLA_PROVISIONING work queue and moves each instance's observed state
// to its desired state one idempotent step at a time, through the cloud
// driver of the instance's provider, recording every step in the inventory
// (which turns each into an event on the instance's timeline).
//
// Every cloud resource is named by an id recorded in the inventory before
// the driver is asked to create it, so a provisioner killed at any point and
// started again finds the disk and VM it made instead of making new ones.
//
// Several provisioner processes share the work queue; an instance's lease
// (lease.go) keeps them from working on one instance at once. The queue
// also carries rollouts' work (rollout.go): one command taken to many
// instances, a group at a time.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/cloudaccount"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/provisioner/driver"
)

// Actor is how the provisioner signs the events it causes.
var Actor = vocab.System(subjects.Provisioner)

// Deps are what the provisioner is built from; the caller owns them.
type Deps struct {
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// Concurrency is how many requests each of its endpoints serves at
	// once (0: rpc.DefaultConcurrency).
	Concurrency int
	// Drivers by provider name.
	Drivers []driver.Driver
	// AgentGatewayAddr is the host:port agents connect to.
	AgentGatewayAddr string
	// CloudAccounts resolves an aws network's cloud account, whose driver
	// the provisioner makes when no aws driver is in Drivers (nil: the
	// account the network names, read from the inventory, its secret key
	// from the secret broker).
	CloudAccounts CloudAccounts
	// AgentURL is where a cloud VM downloads the agent binary of this
	// version (the gateway's public path), and AgentSHA256 its SHA-256 in
	// hex; cloud drivers need both (the local driver starts its agent
	// itself), and :upgrade-agent sends them to a running agent.
	AgentURL, AgentSHA256 string
	StreamReplicas        int
	// Workers is how many instances are reconciled at once (default 8).
	Workers int
	// AgentTimeout bounds waiting for a new VM's agent (default 3 min).
	AgentTimeout time.Duration
	// SetupTimeout bounds setup, install and start on the agent (default 15 min).
	SetupTimeout time.Duration
	// Recheck is how often a wait looks at its instance without being
	// woken by an event: a safety net only (default 30 s).
	Recheck time.Duration
}

// Service is the running provisioner.
type Service struct {
	d      Deps
	log    *slog.Logger
	tracer trace.Tracer
	rpc    *rpc.Service
	bus    *rpc.Client
	// accounts resolves cloud accounts (their secret keys included).
	accounts busAccounts
	cons     jetstream.Consumer
	drivers  map[string]driver.Driver
	locks    sync.Map // instance id → *sync.Mutex
	slots    chan struct{}
	js       jetstream.JetStream
	wakers   *wakers
	leases   *leases
	clouds   clouds
}

// Retries of an instance another provisioner holds the lease of.
const (
	// leasedRedelivery is how soon a work message is redelivered when the
	// instance's lease is held elsewhere.
	leasedRedelivery = 2 * time.Second
	// leasedRetry is how often resync looks again at an instance whose
	// lease is held elsewhere.
	leasedRetry = 5 * time.Second
)

// New declares the streams and the work-queue consumer and registers the
// service on the bus.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.NATS == nil || d.Log == nil || d.TracerProvider == nil {
		return nil, errors.New("provisioner: NATS, Log and TracerProvider are required")
	}
	if d.Workers <= 0 {
		d.Workers = 8
	}
	if d.AgentTimeout <= 0 {
		d.AgentTimeout = 3 * time.Minute
	}
	if d.SetupTimeout <= 0 {
		d.SetupTimeout = 15 * time.Minute
	}
	if d.Recheck <= 0 {
		d.Recheck = 30 * time.Second
	}
	log := d.Log.With("service", subjects.Provisioner)
	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, js, d.StreamReplicas, endpoints.StreamsOf(subjects.Provisioner)...); err != nil {
		return nil, err
	}
	lz, err := newLeases(ctx, js, d.StreamReplicas, LeaseTTL, holderID(), log)
	if err != nil {
		return nil, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, subjects.ProvisioningStream, jetstream.ConsumerConfig{
		Durable:       subjects.ProvisioningConsumer,
		Description:   "The provisioner's work queue",
		FilterSubject: subjects.ProvisionAll(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
	})
	if err != nil {
		return nil, fmt.Errorf("provisioning consumer: %w", err)
	}
	s := &Service{d: d, log: log, tracer: d.TracerProvider.Tracer("flotilla.dev/flotilla/services/provisioner"),
		cons: cons, drivers: map[string]driver.Driver{}, bus: rpc.NewClient(d.NATS, subjects.Provisioner, 0),
		slots: make(chan struct{}, d.Workers), js: js, wakers: newWakers(), leases: lz}
	for _, drv := range d.Drivers {
		s.drivers[drv.Name()] = drv
	}
	if s.rpc, err = rpc.New(d.NATS, subjects.Provisioner, d.Version, "Flotilla provisioner", log, d.TracerProvider, nil, rpc.WithConcurrency(d.Concurrency)); err != nil {
		return nil, err
	}
	s.accounts = busAccounts{r: cloudaccount.Resolver{Client: s.bus}}
	if s.d.CloudAccounts == nil {
		s.d.CloudAccounts = s.accounts
	}
	if err := errors.Join(
		rpc.Handle(s.rpc, endpoints.CloudAccountVerify, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.VerifyCloudAccountRequest) (*inventoryv1.CloudAccountVerification, error) {
			return s.accounts.verify(ctx, r.GetId())
		}),
		rpc.Handle(s.rpc, endpoints.CertificateRefresh, s.refreshCertificate),
		rpc.Handle(s.rpc, endpoints.ConfigRefresh, s.refreshConfiguration),
		rpc.Handle(s.rpc, endpoints.AgentUpgrade, s.upgradeAgent),
		rpc.Handle(s.rpc, endpoints.RolloutStart, s.startRollout),
		rpc.Handle(s.rpc, endpoints.DNSChallengePut, s.dnsChallenge(true)),
		rpc.Handle(s.rpc, endpoints.DNSChallengeDelete, s.dnsChallenge(false)),
	); err != nil {
		_ = s.rpc.Stop()
		return nil, err
	}
	return s, nil
}

// Run takes work until ctx ends. At start it also picks up every instance
// left in a transitional state, so work interrupted by a crash resumes at
// once rather than when its message is redelivered.
//
// Each work item gets a goroutine (the consumer's MaxAckPending bounds how
// many); Workers bounds how many of them work at once. An item waiting for
// its agent gives its worker slot back until an event wakes it, so many
// instances wait for their VMs together while others make progress.
func (s *Service) Run(ctx context.Context) error {
	defer func() { _ = s.rpc.Stop() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.wakers.watch(ctx, s.js, func(err error) {
			s.log.WarnContext(ctx, "instance events", "error", err)
		})
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.resync(ctx, &wg)
	}()
	cc, err := s.cons.Consume(func(m jetstream.Msg) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, m)
		}()
	}, jetstream.PullMaxMessages(s.d.Workers))
	if err != nil {
		return fmt.Errorf("consume provisioning work: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

// resync resumes every instance left in a transitional state, and every
// running rollout. One whose lease another provisioner holds is being
// worked on there: resume looks again every leasedRetry until it takes the
// lease (see resume).
func (s *Service) resync(ctx context.Context, wg *sync.WaitGroup) {
	s.resyncRollouts(ctx, wg)
	token := ""
	for {
		resp, err := rpc.Call(ctx, s.bus, endpoints.InstanceList, &inventoryv1.ListInstancesRequest{PageSize: 500, PageToken: token})
		if err != nil {
			if ctx.Err() == nil {
				s.log.WarnContext(ctx, "resync: list instances", "error", err)
			}
			return
		}
		for _, in := range resp.GetInstances() {
			if !vocab.State(in.GetState()).Transitional() {
				continue
			}
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				s.resume(ctx, id)
			}(in.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			return
		}
	}
}

// resume reconciles an instance resync found in a transitional state.
//
// If another provisioner holds its lease, that one is working on it, and
// resume does not: it looks again every leasedRetry until it takes the
// lease — the holder finished (the reconcile then finds the instance
// settled and does nothing), or died and its lease expired after LeaseTTL —
// and resumes the work itself. The work queue would bring the instance back
// too (its message stays unacknowledged until a reconcile of it finishes,
// and is redelivered after the ack wait if its holder dies), but resync does
// not rely on that: whatever resync saw in a transitional state is worked
// on until it is settled, by someone, without waiting for a redelivery, and
// without a periodic resync listing every instance. It also takes the work
// over if it loses the lease it took. Other failures are left to the work
// queue's redelivery, as before.
func (s *Service) resume(ctx context.Context, id string) {
	s.resumeWith(ctx, id, s.reconcileLocked)
}

// resumeWith does work (an instance's reconcile, a rollout's drive) on id
// until it is not held elsewhere, as resume says.
func (s *Service) resumeWith(ctx context.Context, id string, work func(context.Context, string) error) {
	s.log.InfoContext(ctx, "resuming interrupted work", "id", id)
	for {
		err := work(ctx, id)
		if !errors.Is(err, errLeased) && !errors.Is(err, errLeaseLost) {
			return
		}
		s.log.DebugContext(ctx, "resync: another provisioner is on it; looking again later", "id", id, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(leasedRetry):
		}
	}
}

// handle reconciles the instance a work message names and acknowledges the
// message, or asks for redelivery after a transient failure.
func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	req := &inventoryv1.LifecycleRequest{}
	if err := proto.Unmarshal(m.Data(), req); err != nil || req.GetId() == "" {
		s.log.ErrorContext(ctx, "dropping malformed provisioning work", "subject", m.Subject(), "error", err)
		_ = m.Term()
		return
	}
	ctx = natsx.Extract(ctx, m.Headers())
	ctx, span := s.tracer.Start(ctx, "provision "+req.GetAction(), trace.WithSpanKind(trace.SpanKindConsumer))
	work := s.reconcileLocked
	if vocab.Action(req.GetAction()) == vocab.RolloutWork {
		work = s.driveRollout
	}
	defer span.End()
	// Keep the message ours while a long step runs.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	if err := work(ctx, req.GetId()); err != nil {
		if ctx.Err() != nil {
			return // shutting down: the message is redelivered to whoever runs next
		}
		if errors.Is(err, errLeased) {
			// The holder is working on it; this comes back once it is done
			// (and finds nothing to do) or its lease has expired.
			s.log.DebugContext(ctx, "another provisioner is on it; redelivering later", "instance", req.GetId(), "error", err)
			_ = m.NakWithDelay(leasedRedelivery)
			return
		}
		s.log.WarnContext(ctx, "reconcile failed; will retry", "instance", req.GetId(), "error", err)
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	_ = m.Ack()
}

// reconcileLocked reconciles one instance at a time per instance, in a
// worker slot (see Run): in this process under the instance's mutex, across
// processes under its lease, taken once the work has a slot and held until
// it ends, waits included. It returns errLeased, doing nothing, when another
// process holds the lease, and an error wrapping errLeaseLost when the
// lease was lost while it worked (the work stopped there).
func (s *Service) reconcileLocked(ctx context.Context, id string) error {
	mu, _ := s.locks.LoadOrStore(id, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	sl := &slot{sem: s.slots}
	if err := sl.acquire(ctx); err != nil {
		return err
	}
	defer sl.release()
	lctx, release, err := s.leases.hold(ctx, id)
	if err != nil {
		return err
	}
	defer release()
	s.log.InfoContext(ctx, "work started", "instance", id, "holder", s.leases.holder)
	err = s.reconcile(withSlot(lctx, sl), id)
	s.log.InfoContext(ctx, "work ended", "instance", id, "holder", s.leases.holder)
	if cause := context.Cause(lctx); errors.Is(cause, errLeaseLost) && ctx.Err() == nil {
		return fmt.Errorf("reconcile %s: %w", id, cause)
	}
	return err
}

// slot is a worker slot held by one goroutine's reconcile. A wait releases
// it and acquires it again when woken.
type slot struct {
	sem  chan struct{}
	held bool
}

func (sl *slot) acquire(ctx context.Context) error {
	select {
	case sl.sem <- struct{}{}:
		sl.held = true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (sl *slot) release() {
	if sl.held {
		<-sl.sem
		sl.held = false
	}
}

type slotKey struct{}

func withSlot(ctx context.Context, sl *slot) context.Context {
	return context.WithValue(ctx, slotKey{}, sl)
}

func slotOf(ctx context.Context) *slot { sl, _ := ctx.Value(slotKey{}).(*slot); return sl }
