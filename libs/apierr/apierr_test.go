package apierr

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestKindsMapToGRPCCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  error
		code codes.Code
	}{
		{Invalid("name", "is required"), codes.InvalidArgument},
		{NotFound("network", "x"), codes.NotFound},
		{fmt.Errorf("wrapped: %w", Conflict(ReasonVersionMismatch, "stale")), codes.Aborted},
		{Unauthenticated("no token"), codes.Unauthenticated},
		{PermissionDenied("no"), codes.PermissionDenied},
		{Unavailable("down"), codes.Unavailable},
		{errors.New("boom: password=hunter2"), codes.Internal},
	}
	for _, c := range cases {
		st, _ := status.FromError(GRPCStatus(context.Background(), nil, c.err))
		if st.Code() != c.code {
			t.Errorf("%v: code %v, want %v", c.err, st.Code(), c.code)
		}
	}
}

func TestInternalErrorHidesDetail(t *testing.T) {
	t.Parallel()
	e := Public(context.Background(), nil, errors.New("dial 10.0.0.1: secret detail"))
	if e.Kind != KindInternal || e.Reason != ReasonInternal || strings.Contains(e.Message, "secret") || !strings.Contains(e.Message, "error id") {
		t.Fatalf("got %+v", e)
	}
}

func TestInvalidNamesField(t *testing.T) {
	t.Parallel()
	e := Invalid("dataDiskGb", "must be between %d and %d", 1, 16384)
	if e.Error() != "dataDiskGb: must be between 1 and 16384" || e.Reason != ReasonInvalidField || e.Field != "dataDiskGb" {
		t.Fatalf("got %+v", e)
	}
	if m := Invalid("", "the body is not JSON"); m.Reason != ReasonMalformedRequest || m.Field != "" {
		t.Fatalf("no field: got %+v", m)
	}
}

// TestReasonsCrossTheBusAndGRPC sends each kind of error through both wire
// forms and expects kind, reason, field and message back unchanged.
func TestReasonsCrossTheBusAndGRPC(t *testing.T) {
	t.Parallel()
	for _, e := range []*Error{
		Invalid("ssl.sans[2]", "%q is neither a DNS name nor an IP address", "a b"),
		Malformed("malformed CreateNetworkRequest"),
		Unsupported("httpsStrategy", "%q is not supported yet", "acme"),
		NotFound("instance", "i-1"),
		Conflict(ReasonVersionMismatch, "network %q is at version 3, not 2", "n"),
		Conflict(ReasonAlreadyExists, "network name %q is already in use", "lab"),
		Conflict(ReasonInUse, "template %q is used by instances a, b", "t"),
		Conflict(ReasonLifecycleBusy, "instance %q is provisioning", "i"),
		Conflict(ReasonInvalidState, "instance %q is running", "i"),
		Conflict(ReasonConcurrentChange, "try again"),
		Unauthenticated("log in"),
		PermissionDenied("no"),
		Unavailable("later"),
		TooLarge("setupActions[1].content", "the template would be %d bytes", 300000),
		TooManyAttempts(90*time.Second, "wait"),
	} {
		bus := FromBus(string(e.Kind), e.Message, e.BusHeaders())
		if *bus != *e {
			t.Errorf("bus round trip: %+v, want %+v", *bus, *e)
		}
		st := status.Convert(GRPCStatus(context.Background(), nil, e))
		back := FromStatus(st)
		if *back != *e {
			t.Errorf("gRPC round trip: %+v, want %+v", *back, *e)
		}
		var info *errdetails.ErrorInfo
		for _, d := range st.Details() {
			if i, ok := d.(*errdetails.ErrorInfo); ok {
				info = i
			}
		}
		if info == nil || info.GetReason() != string(e.Reason) || info.GetDomain() != Domain {
			t.Errorf("%s: ErrorInfo %v", e.Reason, info)
		}
	}
}

func TestOlderPeersGetTheKindsDefaultReason(t *testing.T) {
	t.Parallel()
	if e := FromBus(string(KindConflict), "stale", nil); e.Reason != ReasonConcurrentChange {
		t.Errorf("conflict without reason: %s", e.Reason)
	}
	if e := FromBus("teapot", "?", nil); e.Kind != KindInternal || e.Reason != ReasonInternal {
		t.Errorf("unknown code: %+v", e)
	}
	if e := FromStatus(status.New(codes.NotFound, "Not Found")); e.Reason != ReasonNotFound {
		t.Errorf("status without ErrorInfo: %+v", e)
	}
}

func TestConflictNeedsAConflictReason(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Fatal("Conflict with a non-conflict reason did not panic")
		}
	}()
	_ = Conflict(ReasonNotFound, "x")
}

// TestReasonsAreDocumented keeps docs/errors.md listing every reason with
// its kind.
func TestReasonsAreDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Reasons() {
		row := fmt.Sprintf("| `%s` | %s |", r.Reason, r.Kind)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/errors.md lacks the row starting %q", row)
		}
	}
}

// TestABatchItemsErrorCrossesTheBus: one item's error in a batch's answer
// comes back with its kind, reason and message; no error stays none, and
// an internal error's detail stays behind.
func TestABatchItemsErrorCrossesTheBus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if k, r, m := ItemParts(ctx, nil, nil); k != "" || r != "" || m != "" || FromItem(k, r, m) != nil {
		t.Fatalf("no error: %q %q %q", k, r, m)
	}
	var e *Error
	if err := FromItem(ItemParts(ctx, nil, PermissionDenied("instance %s was deleted", "i-1"))); !errors.As(err, &e) ||
		e.Kind != KindPermissionDenied || e.Reason != ReasonPermissionDenied || e.Message != "instance i-1 was deleted" {
		t.Errorf("permission denied: %+v", err)
	}
	if err := FromItem(ItemParts(ctx, nil, errors.New("secret detail"))); !errors.As(err, &e) ||
		e.Kind != KindInternal || strings.Contains(e.Message, "secret") {
		t.Errorf("internal: %+v", err)
	}
}
