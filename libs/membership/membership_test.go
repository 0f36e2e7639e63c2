package membership_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/membership"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAMemberIsListedWhileItRunsAndNotAfter: Join lists the process at
// once, under a key made of its service, host (made key-safe) and process
// id; Run keeps its heartbeat fresh; ending Run removes it.
func TestAMemberIsListedWhileItRunsAndNotAfter(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	js, err := jetstream.New(bus.Conn(t, subjects.CA))
	if err != nil {
		t.Fatal(err)
	}
	reader, err := jetstream.New(bus.Conn(t, subjects.Gateway))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got, err := membership.List(ctx, reader, time.Now(), 0); err != nil || len(got) != 0 {
		t.Fatalf("before any member joined: %v %v", got, err)
	}
	var ready atomic.Bool
	m, err := membership.Join(ctx, js, membership.Config{Service: subjects.CA, Version: "9.9.9", Host: "db1.example.com",
		Interval: 100 * time.Millisecond, Readiness: func() (string, bool) {
			if ready.Load() {
				return "", false
			}
			return "the CA certificate expired", true
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.Name(), "ca.db1-example-com.") || strings.Count(m.Name(), ".") != 2 {
		t.Fatalf("member name %q", m.Name())
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(runCtx); close(done) }()
	time.Sleep(300 * time.Millisecond)
	got, err := membership.List(ctx, reader, time.Now(), 0)
	if err != nil || len(got) != 1 {
		t.Fatalf("members: %v %v", got, err)
	}
	g := got[0]
	if g.GetName() != m.Name() || g.GetService() != subjects.CA || g.GetHost() != "db1.example.com" || g.GetVersion() != "9.9.9" ||
		g.GetPid() != int32(os.Getpid()) || !g.GetHealthy() || !g.GetLastSeenTime().AsTime().After(g.GetStartTime().AsTime()) ||
		g.GetNotReady() != "the CA certificate expired" || !g.GetSteppedOut() {
		t.Fatalf("member %v", g)
	}
	// Its heartbeat says when it is ready again.
	ready.Store(true)
	testkit.WaitFor(t, 5*time.Second, "the heartbeat to say the member is ready", func() bool {
		got, err := membership.List(ctx, reader, time.Now(), 0)
		return err == nil && len(got) == 1 && got[0].GetNotReady() == "" && !got[0].GetSteppedOut()
	})
	// Seen from a minute on, its last heartbeat is too old to be healthy.
	if later, _ := membership.List(ctx, reader, time.Now().Add(time.Minute), 0); len(later) != 1 || later[0].GetHealthy() {
		t.Fatalf("a member silent for a minute: %v", later)
	}
	stop()
	<-done
	if got, err := membership.List(ctx, reader, time.Now(), 0); err != nil || len(got) != 0 {
		t.Fatalf("after a clean stop: %v %v", got, err)
	}
}

// TestRemoveTakesGoneManagersOffTheList: a host's managers are removed
// together, by host or by key, only once none of them is running, and
// only by a service allowed to (the gateway).
func TestRemoveTakesGoneManagersOffTheList(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	ctx := context.Background()
	var names []string
	for _, svc := range []string{subjects.CA, subjects.Inventory} {
		js, err := jetstream.New(bus.Conn(t, svc))
		if err != nil {
			t.Fatal(err)
		}
		m, err := membership.Join(ctx, js, membership.Config{Service: svc, Host: "h9", Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, m.Name())
	}
	other, err := jetstream.New(bus.Conn(t, subjects.Secrets))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.Join(ctx, other, membership.Config{Service: subjects.Secrets, Host: "h8", Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	gw, err := jetstream.New(bus.Conn(t, subjects.Gateway))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.Remove(ctx, gw, "h9", time.Now(), 0); !errors.Is(err, membership.ErrRunning) || !strings.Contains(err.Error(), names[0]) {
		t.Fatalf("remove running managers: %v, want ErrRunning naming %s", err, names[0])
	}
	if _, err := membership.Remove(ctx, gw, "h7", time.Now(), 0); !errors.Is(err, membership.ErrNoSuchManager) {
		t.Fatalf("remove an unknown host: %v", err)
	}
	// A minute later (as the clock of the asker reads) they are gone.
	later := time.Now().Add(time.Minute)
	if _, err := membership.Remove(ctx, other, "h9", later, 0); err == nil {
		t.Fatal("the secret broker removed other services' managers: only the gateway may")
	}
	removed, err := membership.Remove(ctx, gw, names[1], later, 0)
	if err != nil || len(removed) != 1 || removed[0].GetName() != names[1] {
		t.Fatalf("remove %s: %v %v", names[1], removed, err)
	}
	removed, err = membership.Remove(ctx, gw, "h9", later, 0)
	if err != nil || len(removed) != 1 || removed[0].GetName() != names[0] {
		t.Fatalf("remove h9: %v %v", removed, err)
	}
	left, err := membership.List(ctx, gw, time.Now(), 0)
	if err != nil || len(left) != 1 || left[0].GetHost() != "h8" {
		t.Fatalf("left: %v %v", left, err)
	}
}

// While JetStream does not answer (its server is gone; in a cluster, the
// bucket's stream electing a leader), Remove ends within its context with
// an error the gateway answers as unavailable (503, try again), which
// `local-cluster remove` retries: not a wait without end, and not "no
// such manager" from a list read short. (A server lost in the middle of
// the read is bus's TestAReadWhoseServerGoesAwayEnds.)
func TestRemoveWhileJetStreamDoesNotAnswerEndsRetryable(t *testing.T) {
	t.Parallel()
	srv := testkit.NATS(t)
	js, err := jetstream.New(testkit.NATSConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.Join(context.Background(), js, membership.Config{Service: subjects.CA, Host: "h9", Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := membership.Remove(ctx, js, "h9", time.Now().Add(time.Minute), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if !bus.Unanswered(err) && !apierr.Is(err, apierr.KindUnavailable) {
			t.Fatalf("remove without JetStream: %v, want an error to try again on", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("remove without JetStream has not ended 12 s after its context")
	}
}
