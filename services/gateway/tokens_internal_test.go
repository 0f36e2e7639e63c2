package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/libs/bearer"
)

// TestHeldStreamsEndForTheirCause: a revoked token ends its own streams, a
// changed user all of theirs, each saying the token was withdrawn; a lost
// bus ends every stream, saying so; a stream nothing ended ends with no
// cause of the cache's when released.
func TestHeldStreamsEndForTheirCause(t *testing.T) {
	c := newTokenCache(time.Minute, time.Now)
	stream := func(token, userID string) (context.Context, func()) {
		ctx := context.WithValue(t.Context(), tokenKey{}, token)
		ctx = context.WithValue(ctx, userKey{}, &authv1.VerifyTokenResponse{UserId: userID})
		return c.hold(ctx)
	}
	a, releaseA := stream("flt_a", "ann")
	b, releaseB := stream("flt_b", "ann")
	d, releaseD := stream("flt_d", "dan")
	e, releaseE := stream("flt_e", "eve")
	defer releaseA()
	defer releaseB()
	defer releaseD()

	c.drop(bearer.ID("flt_a"))
	if !errors.Is(streamEnded(a), errTokenWithdrawn) || b.Err() != nil || d.Err() != nil {
		t.Fatalf("after a revocation: %v, %v, %v", streamEnded(a), b.Err(), d.Err())
	}
	c.dropUser("ann")
	if !errors.Is(streamEnded(b), errTokenWithdrawn) || d.Err() != nil {
		t.Fatalf("after ann changed: %v, %v", streamEnded(b), d.Err())
	}
	releaseE()
	if e.Err() == nil || streamEnded(e) != nil {
		t.Fatalf("a released stream: %v, %v", e.Err(), streamEnded(e))
	}
	c.clear()
	if !errors.Is(streamEnded(d), errBusLost) {
		t.Fatalf("after a lost bus: %v", streamEnded(d))
	}
	if len(c.held) != 0 {
		t.Fatalf("%d streams still held", len(c.held))
	}
}
