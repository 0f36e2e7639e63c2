package gateway

import (
	"testing"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/gateway/overview"
)

// While the gateway is still building the fleet overview, GET
// /api/v1/overview answers unavailable (503: try again), not counts that
// would be short.
func TestTheOverviewIsUnavailableUntilBuilt(t *testing.T) {
	t.Parallel()
	s := systemServer{g: &Gateway{overview: overview.New(0)}}
	if ov, err := s.GetOverview(t.Context(), &systemv1.GetOverviewRequest{}); !apierr.Is(err, apierr.KindUnavailable) {
		t.Fatalf("before it is built: %v, %v; want unavailable", ov, err)
	}
}
