package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bearer"
)

// Verified tokens are kept briefly so an authenticated request does not
// cost a round trip to the inventory each time.
const (
	// DefaultTokenCacheTTL is how long a verified token is trusted without
	// asking the inventory again (never beyond its expiry).
	DefaultTokenCacheTTL = 30 * time.Second
	// tokenCacheMax bounds the cache; beyond it tokens are verified each time.
	tokenCacheMax = 100000
)

// tokenCache keeps verified tokens by the id of their digest (never the
// token). A revocation takes effect at once: the gateway that revoked the
// token drops it before answering, and every gateway drops it when the
// inventory's revocation record goes by on the bus (the watch is declared
// in api/endpoints.Watches). A gateway that lost the bus for a moment may
// have missed some, so it forgets everything when it reconnects.
type tokenCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]cachedToken // by bearer.ID
	// held are the open streams (log follows, the event feed), each ended
	// when its token is revoked or its user changes.
	held map[*heldStream]struct{}
	// stopping: the gateway stops; a stream held from now on ends at once.
	stopping bool
}

// heldStream is one open stream's token and user, and how to end it.
type heldStream struct {
	tokenID, userID string
	cancel          context.CancelCauseFunc
}

// errTokenWithdrawn ends a stream whose token was revoked, or whose user's
// role or password changed or who was deleted: the client reconnects and
// its token is verified again.
var errTokenWithdrawn = errors.New("the stream's token was revoked, or its user changed: authenticate again")

// errBusLost ends every stream after the gateway lost the bus for a
// moment: a revocation may have gone by unseen, so the client reconnects
// and its token is verified again.
var errBusLost = errors.New("the gateway lost the bus for a moment: reconnect")

// errGatewayStopping ends every stream when the gateway stops, so its
// graceful stop does not wait on followers that would never end (a
// console's live pages, flotilla logs -f): they follow again, from where
// they were, on another gateway or this one once it is back.
var errGatewayStopping = errors.New("the gateway is stopping: follow again")

// streamEnded says why a held stream's context ended, if the cache ended
// it (errTokenWithdrawn, errBusLost or errGatewayStopping); nil otherwise.
func streamEnded(ctx context.Context) error {
	if c := context.Cause(ctx); errors.Is(c, errTokenWithdrawn) || errors.Is(c, errBusLost) || errors.Is(c, errGatewayStopping) {
		return c
	}
	return nil
}

type cachedToken struct {
	digest [sha256.Size]byte
	user   *authv1.VerifyTokenResponse
	until  time.Time
}

func newTokenCache(ttl time.Duration, now func() time.Time) *tokenCache {
	return &tokenCache{ttl: ttl, now: now, m: map[string]cachedToken{}, held: map[*heldStream]struct{}{}}
}

// get returns the user of a token verified less than ttl ago.
func (c *tokenCache) get(token string) *authv1.VerifyTokenResponse {
	if c.ttl <= 0 {
		return nil
	}
	d := bearer.Digest(token)
	id := bearer.IDOf(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || e.digest != d {
		return nil
	}
	if !c.now().Before(e.until) {
		delete(c.m, id)
		return nil
	}
	return e.user
}

// put keeps a verified token until ttl from now or its expiry, whichever
// comes first.
func (c *tokenCache) put(token string, u *authv1.VerifyTokenResponse) {
	if c.ttl <= 0 {
		return
	}
	now := c.now()
	until := now.Add(c.ttl)
	if exp := u.GetExpireTime(); exp != nil && exp.AsTime().Before(until) {
		until = exp.AsTime()
	}
	d := bearer.Digest(token)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= tokenCacheMax {
		for id, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, id)
			}
		}
		if len(c.m) >= tokenCacheMax {
			return
		}
	}
	c.m[bearer.IDOf(d)] = cachedToken{digest: d, user: proto.Clone(u).(*authv1.VerifyTokenResponse), until: until}
}

// hold ties a stream to the token that authenticated it (in ctx): the
// context it returns ends, with errTokenWithdrawn as its cause, when the
// token is dropped for a revocation or its user changes, and with
// errBusLost after a lost bus (a revocation may have gone by unseen). release, when the stream
// ends, forgets it.
func (c *tokenCache) hold(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	token, _ := ctx.Value(tokenKey{}).(string)
	h := &heldStream{tokenID: bearer.ID(token), userID: userFrom(ctx).GetUserId(), cancel: cancel}
	c.mu.Lock()
	if c.stopping {
		cancel(errGatewayStopping)
	} else {
		c.held[h] = struct{}{}
	}
	c.mu.Unlock()
	return ctx, func() {
		c.mu.Lock()
		delete(c.held, h)
		c.mu.Unlock()
		cancel(nil)
	}
}

// endHeld ends the held streams match selects, for cause; c.mu is held.
func (c *tokenCache) endHeld(cause error, match func(*heldStream) bool) {
	for h := range c.held {
		if match(h) {
			h.cancel(cause)
			delete(c.held, h)
		}
	}
}

// drop forgets a token by its id and ends its streams.
func (c *tokenCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.endHeld(errTokenWithdrawn, func(h *heldStream) bool { return h.tokenID == id })
	c.mu.Unlock()
}

// dropUser forgets every token of a user (their role changed, their
// password was reset or changed, they were deleted) and ends their
// streams: each token is verified again at its next use.
func (c *tokenCache) dropUser(userID string) {
	if userID == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.m {
		if e.user.GetUserId() == userID {
			delete(c.m, id)
		}
	}
	c.endHeld(errTokenWithdrawn, func(h *heldStream) bool { return h.userID == userID })
}

// stop ends every stream, and every one held from now on.
func (c *tokenCache) stop() {
	c.mu.Lock()
	c.stopping = true
	c.endHeld(errGatewayStopping, func(*heldStream) bool { return true })
	c.mu.Unlock()
}

// clear forgets every token and ends every stream.
func (c *tokenCache) clear() {
	c.mu.Lock()
	clear(c.m)
	c.endHeld(errBusLost, func(*heldStream) bool { return true })
	c.mu.Unlock()
}

// watch drops revoked tokens, and the tokens of users who changed, as
// their records go by, and everything after the connection was lost,
// until ctx ends.
func (c *tokenCache) watch(ctx context.Context, nc *nats.Conn) error {
	return watchBus(ctx, nc, endpoints.UserTokenWatches(), func(m *nats.Msg) {
		rec := &authv1.AuthAudit{}
		if proto.Unmarshal(m.Data, rec) != nil {
			return
		}
		if rec.GetAction() == subjects.VerbTokenRevoked {
			c.drop(rec.GetTokenId())
		} else {
			c.dropUser(rec.GetUserId())
		}
	}, c.clear, nil)
}
