package gateway_test

import (
	"sync"
	"testing"
)

// TestStatusIsOneRoundOfPingsForManyCallers: load balancers and monitors
// ask for the status all the time; callers within a second share one round
// of pings to the services instead of each costing one.
func TestStatusIsOneRoundOfPingsForManyCallers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{only: []string{}})
	pings := func() int { return e.served("inventory PingRequest") }
	// Only the inventory runs: the status is degraded (503), and still
	// answered from one round of pings.
	e.call("GET", "/api/v1/status", nil, nil, "-")
	before := pings()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if code := e.call("GET", "/api/v1/status", nil, nil, "-"); code != 503 {
				t.Errorf("status: %d", code)
			}
		})
	}
	wg.Wait()
	if n := pings() - before; n > 2 {
		t.Fatalf("20 status requests pinged the inventory %d times, want at most 2 (one round a second)", n)
	}
}
