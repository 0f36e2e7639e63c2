package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestLateAuditRecordsLeftAtStopAreLogged: a gateway that stops with
// records still late (no audit stream answers) goes on trying for as long
// as it is given, then logs each as not written, with all it holds, and
// counts it; it takes no record after.
func TestLateAuditRecordsLeftAtStopAreLogged(t *testing.T) {
	t.Parallel()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	var out testkit.Buffer
	l := newLateAudits(js, slog.New(slog.NewTextHandler(&out, nil)))
	go l.work()
	unwritten := testutil.ToFloat64(metrics.auditsUnwritten)
	for i := range 3 {
		rec := &auditv1.ApiCall{Route: fmt.Sprintf("POST /api/v1/late/%d", i), Username: "olga", Target: "n-1",
			Status: 200, Time: timestamppb.Now()}
		m, err := bus.NewMessage(t.Context(), subjects.Audit(subjects.NounAPI, "u-1", subjects.VerbCall), "api.call",
			vocab.User("olga"), time.Now(), rec)
		if err != nil {
			t.Fatal(err)
		}
		if !l.add(lateAudit{msg: m.NATS(), rec: rec}) {
			t.Fatalf("record %d not taken", i)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	l.close(ctx)
	for i := range 3 {
		if !strings.Contains(out.String(), fmt.Sprintf(`msg="audit record not written" route="POST /api/v1/late/%d" user=olga`, i)) {
			t.Errorf("record %d not logged as not written:\n%s", i, out.String())
		}
	}
	if got := testutil.ToFloat64(metrics.auditsUnwritten) - unwritten; got < 3 {
		t.Errorf("%v records counted as not written, want 3", got)
	}
	if l.add(lateAudit{}) {
		t.Error("a stopped gateway took a late record")
	}
}

// TestTheLateAuditGaugeCountsRecordsWaiting: flotilla_gateway_audit_records_late
// counts the records taken and not yet stored or given up, up to
// LateAuditCap; one more is not taken (the call logs it as not written).
// Not parallel: the gauge is the process's, and parallel tests wait until
// this one is over.
func TestTheLateAuditGaugeCountsRecordsWaiting(t *testing.T) {
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	l := newLateAudits(js, slog.New(slog.DiscardHandler))
	before := testutil.ToFloat64(metrics.lateAudits)
	rec := &auditv1.ApiCall{Route: "POST /api/v1/networks", Time: timestamppb.Now()}
	m, err := bus.NewMessage(t.Context(), subjects.Audit(subjects.NounAPI, "u-1", subjects.VerbCall), "api.call",
		vocab.User("olga"), time.Now(), rec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range LateAuditCap {
		if !l.add(lateAudit{msg: m.NATS(), rec: rec}) {
			t.Fatalf("record %d of %d not taken", i+1, LateAuditCap)
		}
	}
	if l.add(lateAudit{msg: m.NATS(), rec: rec}) {
		t.Errorf("a record beyond the %d waiting was taken", LateAuditCap)
	}
	if got := testutil.ToFloat64(metrics.lateAudits) - before; got != LateAuditCap {
		t.Errorf("the gauge counts %v records waiting, want %d", got, LateAuditCap)
	}
	go l.work()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	l.close(ctx) // no stream answers: every record is given up
	if got := testutil.ToFloat64(metrics.lateAudits) - before; got != 0 {
		t.Errorf("the gauge counts %v records waiting after they were given up, want 0", got)
	}
}
