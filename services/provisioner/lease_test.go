package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/testkit"
)

// twoHolders are two provisioner processes' leases on one bucket whose
// writes are kept for ttl, each on its own connection (a's is aConn).
func twoHolders(t *testing.T, ttl time.Duration) (a, b *leases, kv jetstream.KeyValue, aConn *nats.Conn) {
	t.Helper()
	return twoHoldersOn(t, testkit.NATS(t), ttl)
}

// twoHoldersOn is twoHolders on the server ns.
func twoHoldersOn(t *testing.T, ns *server.Server, ttl time.Duration) (a, b *leases, kv jetstream.KeyValue, aConn *nats.Conn) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	open := func(holder string) (*leases, *nats.Conn) {
		nc := testkit.NATSConn(t, ns)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		l, err := newLeases(t.Context(), js, 1, ttl, holder, log)
		if err != nil {
			t.Fatal(err)
		}
		return l, nc
	}
	a, aConn = open("a")
	b, _ = open("b")
	return a, b, b.kv, aConn
}

func holderOf(t *testing.T, kv jetstream.KeyValue, id string) string {
	t.Helper()
	e, err := kv.Get(t.Context(), id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(e.Value())
}

// TestALeaseHasOneHolderAtATime: a lease is taken once, refused to another
// holder while held and renewed past its TTL, taken by the other once
// released; a holder that stops renewing loses it within the TTL, and
// the other takes it.
func TestALeaseHasOneHolderAtATime(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	a, b, kv, _ := twoHolders(t, ttl)
	ctx := t.Context()

	actx, release, err := a.hold(ctx, "i-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.hold(ctx, "i-1"); !errors.Is(err, errLeased) {
		t.Fatalf("b took a's lease: %v", err)
	}
	if _, relB, err := b.hold(ctx, "i-2"); err != nil {
		t.Fatalf("b may not take another instance's lease: %v", err)
	} else {
		relB()
	}
	// Renewed: still a's after three TTLs.
	time.Sleep(3 * ttl)
	if h := holderOf(t, kv, "i-1"); h != "a" || actx.Err() != nil {
		t.Fatalf("after %v the lease is %q's, a's context: %v", 3*ttl, h, context.Cause(actx))
	}
	if _, _, err := b.hold(ctx, "i-1"); !errors.Is(err, errLeased) {
		t.Fatalf("b took a's renewed lease: %v", err)
	}
	release()
	if h := holderOf(t, kv, "i-1"); h != "" {
		t.Fatalf("released, the lease is still %q's", h)
	}
	bctx, releaseB, err := b.hold(ctx, "i-1")
	if err != nil {
		t.Fatalf("b could not take the released lease: %v", err)
	}
	defer releaseB()
	if actx.Err() == nil || errors.Is(context.Cause(actx), errLeaseLost) {
		t.Fatalf("a's context after release: %v (cause %v)", actx.Err(), context.Cause(actx))
	}
	if bctx.Err() != nil {
		t.Fatal(bctx.Err())
	}
}

// TestADeadHoldersLeaseExpires: a lease nobody renews (its holder died) is
// gone within the TTL, and another holder takes it.
func TestADeadHoldersLeaseExpires(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	a, b, kv, _ := twoHolders(t, ttl)
	ctx := t.Context()
	// a dies holding the lease: it wrote the key and never renews it.
	if _, err := a.kv.Create(ctx, "i-1", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.hold(ctx, "i-1"); !errors.Is(err, errLeased) {
		t.Fatalf("b took a live lease: %v", err)
	}
	deadline := time.Now().Add(ttl + 5*time.Second)
	for {
		_, release, err := b.hold(ctx, "i-1")
		if err == nil {
			defer release()
			break
		}
		if !errors.Is(err, errLeased) || time.Now().After(deadline) {
			t.Fatalf("the dead holder's lease did not expire within %v: %v", ttl, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h := holderOf(t, kv, "i-1"); h != "b" {
		t.Fatalf("the lease is %q's, not b's", h)
	}
}

// TestALeaseOfAProcessGoneFromThisHostIsTakenAtOnce: a provisioner started
// again after a crash takes over its predecessor's leases at once (that
// process is not running on this host), not a TTL later; the lease of a
// process still running here, or of another host's, it leaves alone.
func TestALeaseOfAProcessGoneFromThisHostIsTakenAtOnce(t *testing.T) {
	t.Parallel()
	_, b, kv, _ := twoHolders(t, time.Hour)
	ctx := t.Context()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	holders := map[string]string{
		"gone":       fmt.Sprintf("%s-%d-0a0b0c0d", host, gone.Process.Pid),
		"running":    fmt.Sprintf("%s-%d-0a0b0c0d", host, os.Getppid()),
		"other-host": fmt.Sprintf("%s-elsewhere-%d-0a0b0c0d", host, gone.Process.Pid),
		"not-an-id":  "a",
	}
	for name, holder := range holders {
		if _, err := kv.Create(ctx, name, []byte(holder)); err != nil {
			t.Fatal(err)
		}
		_, release, err := b.hold(ctx, name)
		if name == "gone" {
			if err != nil {
				t.Fatalf("the lease of a process gone from this host (%s): %v", holder, err)
			}
			release()
			continue
		}
		if !errors.Is(err, errLeased) || holderOf(t, kv, name) != holder {
			t.Errorf("%s: took %s's lease (%v), want it left alone", name, holder, err)
		}
	}
}

// TestAHolderNoticesItsLostLease: a holder whose lease someone else took
// (its renewals stalled past the TTL) has its work's context cancelled with
// errLeaseLost at its next renewal, and does not release the other's lease.
func TestAHolderNoticesItsLostLease(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	a, b, kv, _ := twoHolders(t, ttl)
	ctx := t.Context()
	actx, release, err := a.hold(ctx, "i-1")
	if err != nil {
		t.Fatal(err)
	}
	// As if a's renewals had stalled and the lease had expired: b holds it now.
	if err := kv.Delete(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	_, releaseB, err := b.hold(ctx, "i-1")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseB()
	select {
	case <-actx.Done():
		if !errors.Is(context.Cause(actx), errLeaseLost) {
			t.Fatalf("a's work was cancelled for %v, not a lost lease", context.Cause(actx))
		}
	case <-time.After(2 * ttl):
		t.Fatal("a kept working without its lease")
	}
	release()
	if h := holderOf(t, kv, "i-1"); h != "b" {
		t.Fatalf("a's release took b's lease: the lease is %q's", h)
	}
}

// TestAHolderCutOffStopsBeforeItsLeaseExpires: a holder that cannot reach
// the bus to renew stops working before its lease can have expired, so
// whoever takes the expired lease works alone.
func TestAHolderCutOffStopsBeforeItsLeaseExpires(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	a, b, _, aConn := twoHolders(t, ttl)
	ctx := t.Context()
	actx, release, err := a.hold(ctx, "i-1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	aConn.Close()
	// b takes the lease as soon as it expires; by then a has stopped.
	deadline := time.Now().Add(ttl + 5*time.Second)
	for {
		_, releaseB, err := b.hold(ctx, "i-1")
		if err == nil {
			aStopped := actx.Err() != nil
			releaseB()
			if !aStopped {
				t.Fatal("b took the lease while a, cut off, still worked")
			}
			break
		}
		if !errors.Is(err, errLeased) || time.Now().After(deadline) {
			t.Fatalf("a's lease did not expire: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !errors.Is(context.Cause(actx), errLeaseLost) {
		t.Fatalf("a's work was cancelled for %v, not a lost lease", context.Cause(actx))
	}
}
