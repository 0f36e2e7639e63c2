package apierr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

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
		{fmt.Errorf("wrapped: %w", Conflict("stale")), codes.Aborted},
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
	kind, msg := Public(context.Background(), nil, errors.New("dial 10.0.0.1: secret detail"))
	if kind != KindInternal || strings.Contains(msg, "secret") || !strings.Contains(msg, "error id") {
		t.Fatalf("got %s %q", kind, msg)
	}
}

func TestInvalidNamesField(t *testing.T) {
	t.Parallel()
	e := Invalid("dataDiskGb", "must be between %d and %d", 1, 16384)
	if e.Error() != "dataDiskGb: must be between 1 and 16384" {
		t.Fatalf("got %q", e.Error())
	}
	if FromCode(string(KindInvalid), e.Message).Kind != KindInvalid {
		t.Fatal("round trip through bus code lost the kind")
	}
}
