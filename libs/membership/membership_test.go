package membership_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
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
	m, err := membership.Join(ctx, js, membership.Config{Service: subjects.CA, Version: "9.9.9", Host: "db1.example.com",
		Interval: 100 * time.Millisecond})
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
		g.GetPid() != int32(os.Getpid()) || !g.GetHealthy() || !g.GetLastSeenTime().AsTime().After(g.GetStartTime().AsTime()) {
		t.Fatalf("member %v", g)
	}
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
