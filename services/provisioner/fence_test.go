package provisioner

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace/noop"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/inventory"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestARecordUnderALostLeaseIsRefused: a provisioner paused past its
// lease's life does not know it lost the lease; when it goes on, the
// inventory refuses its records, since a record came under the lease of
// the provisioner that took the work over, and the paused one takes the
// refusal for its lease lost.
func TestARecordUnderALostLeaseIsRefused(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ns := testkit.NATS(t)
	pool, err := pgxpool.New(ctx, testkit.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := slog.New(slog.DiscardHandler)
	inv, err := inventory.New(ctx, inventory.Deps{Pool: pool, NATS: testkit.NATSConn(t, ns), Log: log, TracerProvider: noop.NewTracerProvider()})
	if err != nil {
		t.Fatal(err)
	}
	inst := newInstance(t, inv)
	id := inst.GetId()
	// A lease renewed far less often than the test lasts: the first
	// holder does not notice its lease is gone, as a paused process.
	first, second, kv, _ := twoHoldersOn(t, ns, 10*time.Minute)
	s := &Service{bus: rpc.NewClient(testkit.NATSConn(t, ns), subjects.Provisioner, 0), log: log}

	fctx, releaseFirst, err := first.hold(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseFirst()
	if _, err := s.record(fctx, step(id, vocab.StateProvisioning, vocab.StepAllocatingDisk)); err != nil {
		t.Fatalf("the first holder's record: %v", err)
	}
	// Its lease expires (gone from the bucket) and the second takes over.
	if err := kv.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	sctx, releaseSecond, err := second.hold(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseSecond()
	if f, s := fenceOf(fctx), fenceOf(sctx); f.GetEpoch() == 0 || f.GetEpoch() != s.GetEpoch() || f.GetRevision() >= s.GetRevision() {
		t.Fatalf("leases as fencing tokens: first %v, second %v; want one epoch, the second's revision greater", f, s)
	}
	if _, err := s.record(sctx, step(id, vocab.StateProvisioning, vocab.StepLaunchingVM)); err != nil {
		t.Fatalf("the second holder's record: %v", err)
	}
	// The first goes on where it stopped.
	_, refused := s.record(fctx, &inventoryv1.RecordStateRequest{Id: id, State: string(vocab.StateFailed), StateDetail: "stale", Event: string(vocab.VerbFailed)})
	if !errors.Is(refused, errLeaseLost) || apierr.ReasonOf(refused) != apierr.ReasonLeaseSuperseded || !strings.Contains(refused.Error(), "newer provisioner lease") {
		t.Fatalf("the paused holder's record: %v; want errLeaseLost (lease_superseded)", refused)
	}
	got, err := inv.App().GetInstance(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetState() != string(vocab.StateProvisioning) || got.GetStateDetail() != string(vocab.StepLaunchingVM) {
		t.Fatalf("instance after the paused holder's record: %s/%s, want the second holder's %s/%s",
			got.GetState(), got.GetStateDetail(), vocab.StateProvisioning, vocab.StepLaunchingVM)
	}
}

// newInstance makes a network, a template and an instance in inv.
func newInstance(t *testing.T, inv *inventory.Service) *inventoryv1.Instance {
	t.Helper()
	ctx, a := t.Context(), inv.App()
	n, err := a.CreateNetwork(ctx, "test", &inventoryv1.Network{Name: "n", Provider: "local", HttpsStrategy: "none"})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := a.CreateTemplate(ctx, "test", &inventoryv1.Template{Name: "t", Provider: "local", DataDiskGb: 1})
	if err != nil {
		t.Fatal(err)
	}
	in, err := a.CreateInstance(ctx, "test", &inventoryv1.Instance{Name: "i", Kind: "design", TemplateId: tp.GetId(), NetworkId: n.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	return in
}
