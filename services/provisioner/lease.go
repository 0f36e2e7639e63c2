package provisioner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
)

// Leases keep two provisioner processes from working on one instance at
// once. A provisioner takes an instance's lease (a key-value Create: it
// fails while a live lease exists) before it works on the instance, renews
// it while it works, waits included (an Update at the revision it holds),
// and releases it when done (a Delete at that revision). The bucket keeps
// each write for LeaseTTL: a lease whose holder died, or lost the bus, is
// gone LeaseTTL after its last renewal, and anyone may take it again.
//
// Why the bucket's age limit and not a per-key TTL: the server supports
// per-message TTLs, but the client's Update writes without one, so a
// renewed key would never expire; a bucket-wide MaxAge expires every write,
// renewals included, LeaseTTL after it was made.
//
// A holder that cannot renew stops working on the instance before its
// lease can have expired (leaseGiveUp after its last renewal), and one that
// finds its lease changed or gone stops at once: the context of its work is
// cancelled with errLeaseLost.
//
// A holder can still lose its lease without knowing in time: a process
// paused (or starved) past the lease's life goes on where it stopped. Its
// records are fenced: each carries the lease as a token (the bucket's
// creation time, then the revision it was taken at: a lease taken later is
// greater), and the inventory refuses a record under an older lease than
// the newest it has seen of the instance (lease_superseded), which the
// holder takes for its lease lost. A driver call in flight is not fenced;
// driver steps are idempotent, by ids recorded before the calls.

// LeasesBucket is the key-value bucket of the provisioners' leases.
const LeasesBucket = subjects.ProvisionerLeasesBucket

// LeaseTTL is how long a lease outlives its holder's last renewal.
const LeaseTTL = 30 * time.Second

// errLeased says another provisioner holds the instance's lease: it is
// working on the instance.
var errLeased = errors.New("another provisioner is working on the instance")

// errLeaseLost says the holder lost its lease while it worked: it expired
// (renewals failed) or someone else holds it now.
var errLeaseLost = errors.New("lease lost")

// leases takes, renews and releases instance leases for one process.
type leases struct {
	kv     jetstream.KeyValue
	holder string
	ttl    time.Duration
	log    *slog.Logger
}

// newLeases declares the bucket, idempotently, with writes kept for ttl,
// and returns the leases of holder.
func newLeases(ctx context.Context, js jetstream.JetStream, replicas int, ttl time.Duration, holder string, log *slog.Logger) (*leases, error) {
	if replicas < 1 {
		replicas = 1
	}
	kv, err := bus.DeclareKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:       LeasesBucket,
		Description:  "Flotilla provisioner leases: which provisioner process works on an instance",
		History:      1,
		TTL:          ttl,
		MaxValueSize: 256,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
	})
	if err != nil {
		return nil, err
	}
	return &leases{kv: kv, holder: holder, ttl: ttl, log: log}, nil
}

// holderID names this process: host, pid and a random suffix, so a
// restarted process never takes its predecessor's leases for its own
// (it takes them over, knowing that process gone: goneFromThisHost).
func holderID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b) // never fails
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
}

// goneFromThisHost says whether holder (a holderID) names a process of this
// host that no longer runs. Host names are unique in a cluster; a pid
// reused since reads as running, and that lease expires as usual.
func goneFromThisHost(holder string) bool {
	rest := holder[:max(strings.LastIndex(holder, "-"), 0)] // without the random suffix
	i := strings.LastIndex(rest, "-")
	if i < 0 {
		return false
	}
	pid, err := strconv.Atoi(rest[i+1:])
	host, herr := os.Hostname()
	if err != nil || pid <= 0 || pid == os.Getpid() || herr != nil || rest[:i] != host {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// renewEvery is how often a holder renews: three times per TTL.
func (l *leases) renewEvery() time.Duration { return l.ttl / 3 }

// giveUp is how long after its last renewal a holder that cannot renew
// stops working: a third of the TTL before the lease may expire.
func (l *leases) giveUp() time.Duration { return l.ttl * 2 / 3 }

// hold takes the lease of instance id and keeps it until release is
// called. The returned context is ctx, cancelled with errLeaseLost (see
// context.Cause) if the lease is lost meanwhile. A lease another process
// holds is errLeased.
func (l *leases) hold(ctx context.Context, id string) (context.Context, func(), error) {
	// The epoch is read before the take: were the bucket made again in
	// between, the lease would carry the older epoch, and be refused rather
	// than outrank the leases of the new bucket.
	epoch, err := l.epoch(ctx)
	if err != nil {
		return nil, nil, err
	}
	rev, err := l.kv.Create(ctx, id, []byte(l.holder))
	if errors.Is(err, jetstream.ErrKeyExists) {
		holder := "?"
		if e, gerr := l.kv.Get(ctx, id); gerr == nil {
			holder = string(e.Value())
			// A holder of this host that is gone (a provisioner that
			// crashed and was started again): take its lease now, at the
			// revision read, rather than LeaseTTL later.
			if goneFromThisHost(holder) {
				if rev, err = l.kv.Update(ctx, id, []byte(l.holder), e.Revision()); err == nil {
					l.log.InfoContext(ctx, "took over the lease of a provisioner that is gone", "instance", id, "holder", holder)
				}
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w (%s)", errLeased, holder)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("take the lease of %s: %w", id, err)
	}
	lctx, cancel := context.WithCancelCause(context.WithValue(ctx, fenceKey{}, &inventoryv1.LeaseFence{Epoch: epoch, Revision: rev}))
	stop, done := make(chan struct{}), make(chan struct{})
	var held lease
	held.rev = rev
	go func() {
		defer close(done)
		if err := l.keep(id, &held, stop); err != nil {
			l.log.WarnContext(ctx, "lease lost; stopping work on the instance", "instance", id, "error", err)
			cancel(fmt.Errorf("%w: %w", errLeaseLost, err))
		}
	}()
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(stop)
			<-done
			cancel(nil)
			if held.lost {
				return
			}
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer rcancel()
			if err := l.kv.Delete(rctx, id, jetstream.LastRevision(held.rev)); err != nil {
				// It expires by itself within the TTL.
				l.log.WarnContext(ctx, "release lease", "instance", id, "error", err)
			}
		})
	}
	return lctx, release, nil
}

// epoch is when the bucket was made, in Unix nanoseconds: the first part
// of a lease's fencing token.
func (l *leases) epoch(ctx context.Context) (int64, error) {
	st, err := bus.BucketStatus(ctx, l.kv)
	if err != nil {
		return 0, err
	}
	return st.StreamInfo().Created.UnixNano(), nil
}

type fenceKey struct{}

// fenceOf returns the lease ctx's work holds (hold's context), as a
// fencing token for the records it makes; nil outside a lease.
func fenceOf(ctx context.Context) *inventoryv1.LeaseFence {
	f, _ := ctx.Value(fenceKey{}).(*inventoryv1.LeaseFence)
	return f
}

// lease is the revision a holder holds, and whether it lost it; only the
// goroutine running keep touches it until release has waited for keep.
type lease struct {
	rev  uint64
	lost bool
}

// keep renews the lease until stop is closed. It returns nil then, or the
// reason the lease is lost: a renewal refused (the key changed or expired),
// or no renewal for giveUp.
func (l *leases) keep(id string, held *lease, stop <-chan struct{}) error {
	last := time.Now() // the last renewal (or the take) began no earlier
	wait := l.renewEvery()
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(wait):
		}
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), l.renewEvery())
		rev, err := l.kv.Update(ctx, id, []byte(l.holder), held.rev)
		cancel()
		switch {
		case err == nil:
			held.rev, last, wait = rev, began, l.renewEvery()
			continue
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
			held.lost = true
			return fmt.Errorf("renew the lease of %s: %w", id, err)
		case time.Since(last) >= l.giveUp():
			held.lost = true
			return fmt.Errorf("no renewal of the lease of %s for %v: %w", id, time.Since(last).Round(time.Second), err)
		}
		l.log.Warn("renew lease; retrying", "instance", id, "error", err)
		wait = min(time.Second, l.renewEvery())
	}
}
