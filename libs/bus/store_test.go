package bus_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestAnAuditRecordOutlastsItsStreamsLeaderElection: on a three-server
// cluster, the server leading the audit stream is lost while four writers
// store audit records one after another. Every record is stored, exactly
// once, though the stream answers nobody until the two servers left elect
// a leader (seconds).
func TestAnAuditRecordOutlastsItsStreamsLeaderElection(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	servers := testkit.JetStreamCluster(t, 3, nil)
	admin, err := jetstream.New(testkit.NATSConn(t, servers[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, admin, 3, subjects.AuditStream); err != nil {
		t.Fatal(err)
	}
	stream, err := admin.Stream(ctx, subjects.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	leader := func() string {
		info, err := stream.Info(ctx)
		if err != nil || info.Cluster == nil {
			return ""
		}
		return info.Cluster.Leader
	}
	testkit.WaitFor(t, 30*time.Second, "the audit stream's leader", func() bool { return leader() != "" })
	lost := leader()
	var (
		doomed *server.Server
		stay   []*server.Server
		left   []string
	)
	for _, s := range servers {
		if s.Name() == lost {
			doomed = s
		} else {
			stay, left = append(stay, s), append(left, s.ClientURL())
		}
	}
	// The writers reach the servers that stay.
	nc, err := nats.Connect(strings.Join(left, ","), nats.Name(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := jetstream.New(testkit.NATSConn(t, stay[0]))
	if err != nil {
		t.Fatal(err)
	}

	var (
		stored, failed atomic.Int64
		longest        atomic.Int64
		firstErr       sync.Once
		errMsg         atomic.Value
		stop           = make(chan struct{})
		wg             sync.WaitGroup
	)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rec := &auditv1.ApiCall{UserId: fmt.Sprintf("writer-%d", w), Route: fmt.Sprintf("call %d", i), Time: timestamppb.Now()}
				start := time.Now()
				err := bus.PublishAudit(ctx, js, subjects.Audit(subjects.NounAPI, rec.UserId, subjects.VerbCall),
					subjects.EventType(subjects.NounAPI, subjects.VerbCall), vocab.User("writer"), start, rec)
				took := time.Since(start)
				if d := int64(took); d > longest.Load() {
					longest.Store(d)
				}
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { errMsg.Store(fmt.Sprintf("after %v: %v", took.Round(time.Millisecond), err)) })
					continue
				}
				stored.Add(1)
			}
		})
	}
	testkit.WaitFor(t, 10*time.Second, "records stored before the leader is lost", func() bool { return stored.Load() >= 20 })
	doomed.Shutdown()
	doomed.WaitForShutdown()
	atStop := stored.Load()
	newLeader := func() bool {
		s, err := reader.Stream(ctx, subjects.AuditStream)
		if err != nil {
			return false // no leader to answer yet
		}
		info := s.CachedInfo()
		return info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != lost
	}
	testkit.WaitFor(t, 30*time.Second, "a new leader of the audit stream", newLeader)
	testkit.WaitFor(t, 10*time.Second, "records stored after the election", func() bool { return stored.Load() >= atStop+20 })
	close(stop)
	wg.Wait()

	t.Logf("%d records stored, the longest store took %v", stored.Load(), time.Duration(longest.Load()).Round(time.Millisecond))
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d records not stored; the first %s", n, errMsg.Load())
	}
	s, err := reader.Stream(ctx, subjects.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	if info := s.CachedInfo(); info.State.Msgs != uint64(stored.Load()) {
		t.Fatalf("the stream holds %d records, %d were stored", info.State.Msgs, stored.Load())
	}
}

// A message with no id is refused: publishing it again could store it twice.
func TestAStoreNeedsAMessageID(t *testing.T) {
	t.Parallel()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = bus.Store(t.Context(), js, &nats.Msg{Subject: "flotilla.audit.api.u.call", Header: nats.Header{}})
	if err == nil || !strings.Contains(err.Error(), bus.HeaderMsgID) {
		t.Fatalf("a message with no id: %v, want an error naming %s", err, bus.HeaderMsgID)
	}
}
