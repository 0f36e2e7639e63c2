package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// API token lifetimes: DefaultAPITokenTTL when the request names none,
// and the range one may name.
const (
	DefaultAPITokenTTL = 30 * 24 * time.Hour
	MinAPITokenTTL     = time.Minute
	MaxAPITokenTTL     = 365 * 24 * time.Hour
)

// TokenUseFlushInterval is how often the API tokens' last uses noted by
// VerifyToken are written, all in one statement: a token's last use is
// known to within about this plus the gateways' token cache (30 s).
const TokenUseFlushInterval = time.Minute

// newToken returns a fresh bearer token: the prefix and 32 random bytes.
func newToken() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(raw), nil
}

// apiTokenProto is what the API shows of an API token: never the token.
func apiTokenProto(t *adapters.Token) *authv1.ApiToken {
	out := &authv1.ApiToken{Id: t.ID, Name: t.Name, Role: string(t.Role), UserId: t.UserID, Username: t.Username,
		CreateTime: timestamppb.New(t.CreatedAt), ExpireTime: timestamppb.New(t.ExpiresAt), TokenId: t.BearerID()}
	if !t.LastUsedAt.IsZero() {
		out.LastUseTime = timestamppb.New(t.LastUsedAt)
	}
	return out
}

func checkTokenName(name string) error {
	switch {
	case name == "":
		return apierr.Invalid("name", "is required")
	case utf8.RuneCountInString(name) > 64:
		return apierr.Invalid("name", "must be at most 64 characters")
	case strings.TrimSpace(name) != name:
		return apierr.Invalid("name", "must not start or end with a space")
	case strings.ContainsFunc(name, unicode.IsControl):
		return apierr.Invalid("name", "must not contain control characters")
	}
	return nil
}

// caller reads the user making a request (a user actor) and the role it
// may act with: the lesser of the credential's and the user's own, so a
// demotion applies at once, whatever the gateway cached.
func (a *App) caller(ctx context.Context, q adapters.Querier, c Caller) (*adapters.User, vocab.Role, error) {
	if c.Actor.Kind() != vocab.ActorUser {
		return nil, "", apierr.PermissionDenied("%s is not a user", c.Actor)
	}
	u, err := adapters.UserByName(ctx, q, c.Actor.Name())
	if errors.Is(err, adapters.ErrNoUser) {
		return nil, "", apierr.Unauthenticated("user %q no longer exists", c.Actor.Name())
	}
	if err != nil {
		return nil, "", err
	}
	role := u.Role
	if c.Role != "" {
		role = c.Role.Lesser(u.Role)
	}
	return u, role, nil
}

// CreateAPIToken issues an API token for the calling user: named, with a
// role no greater than the caller's, living expiresIn (0:
// DefaultAPITokenTTL). The token is in this answer only; Flotilla keeps
// its SHA-256.
func (a *App) CreateAPIToken(ctx context.Context, c Caller, r *authv1.CreateTokenRequest) (*authv1.CreateTokenResponse, error) {
	if err := checkTokenName(r.GetName()); err != nil {
		return nil, err
	}
	role := vocab.Role(r.GetRole())
	if err := checkRole("role", role); err != nil {
		return nil, err
	}
	ttl := DefaultAPITokenTTL
	if r.GetExpiresIn() != nil {
		if err := r.GetExpiresIn().CheckValid(); err != nil {
			return nil, apierr.Invalid("expiresIn", "is not a duration: %v", err)
		}
		ttl = r.GetExpiresIn().AsDuration()
		if ttl < MinAPITokenTTL || ttl > MaxAPITokenTTL {
			return nil, apierr.Invalid("expiresIn", "%v is out of range: must be between %v and %v (%d days), such as \"2592000s\"",
				ttl, MinAPITokenTTL, MaxAPITokenTTL, int(MaxAPITokenTTL/(24*time.Hour)))
		}
	}
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	now := a.now()
	t := &adapters.Token{ID: adapters.NewID(), Kind: adapters.TokenAPI, Name: r.GetName(), Role: role, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	err = a.inTx(ctx, func(tx pgx.Tx) error {
		u, may, err := a.caller(ctx, tx, c)
		if err != nil {
			return err
		}
		if !may.AtLeast(role) {
			return apierr.Invalid("role", "%q is more than your role %q: a token's role cannot exceed its creator's", role, may)
		}
		t.UserID, t.Username = u.ID, u.Username
		if err := adapters.ForgetExpiredAPIToken(ctx, tx, u.ID, t.Name, now); err != nil {
			return err
		}
		if err := adapters.InsertToken(ctx, tx, token, t); err != nil {
			return err
		}
		return a.audit(ctx, tx, &authv1.AuthAudit{Action: subjects.VerbTokenCreated, Username: u.Username, UserId: u.ID,
			Actor: string(c.Actor), Role: string(role), Source: c.Source, TokenId: t.BearerID(), ApiTokenId: t.ID,
			Reason: "API token " + t.Name, Time: timestamppb.New(now), Until: timestamppb.New(t.ExpiresAt)})
	})
	if err != nil {
		return nil, err
	}
	return &authv1.CreateTokenResponse{Token: token, ApiToken: apiTokenProto(t)}, nil
}

// ListAPITokens lists live API tokens, oldest first: every user's to an
// admin, the caller's own to anyone else. Last uses not yet written show
// as this process noted them.
func (a *App) ListAPITokens(ctx context.Context, c Caller, pageSize int32, pageToken string) (*authv1.ListTokensResponse, error) {
	n, err := pageSizeOf(pageSize)
	if err != nil {
		return nil, err
	}
	after, err := adapters.PageAfter(pageToken)
	if err != nil {
		return nil, err
	}
	u, role, err := a.caller(ctx, a.pool, c)
	if err != nil {
		return nil, err
	}
	owner := u.ID
	if role == vocab.RoleAdmin {
		owner = ""
	}
	ts, err := adapters.ListAPITokens(ctx, a.pool, owner, after, n+1, a.now())
	if err != nil {
		return nil, err
	}
	out := &authv1.ListTokensResponse{}
	ts, out.NextPageToken = page(ts, n, func(t *adapters.Token) string { return adapters.PageToken(t.ID) })
	for _, t := range ts {
		if at, ok := a.tokenUse.get(t.ID); ok && at.After(t.LastUsedAt) {
			t.LastUsedAt = at
		}
		out.Tokens = append(out.Tokens, apiTokenProto(t))
	}
	return out, nil
}

// RevokeAPIToken revokes a live API token: the caller's own, or anyone's
// for an admin (another's is not found to anyone else). The audit record
// names the token, so every gateway drops it from its cache at once.
func (a *App) RevokeAPIToken(ctx context.Context, c Caller, id string) (*authv1.ApiToken, error) {
	now := a.now()
	var out *authv1.ApiToken
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		u, role, err := a.caller(ctx, tx, c)
		if err != nil {
			return err
		}
		t, err := adapters.APITokenByID(ctx, tx, id, now)
		if err != nil {
			return err
		}
		if t.UserID != u.ID && role != vocab.RoleAdmin {
			return apierr.NotFound("API token", id)
		}
		if err := adapters.RevokeTokenByID(ctx, tx, t.ID, now); err != nil {
			return err
		}
		out = apiTokenProto(t)
		return a.audit(ctx, tx, &authv1.AuthAudit{Action: subjects.VerbTokenRevoked, Username: t.Username, UserId: t.UserID,
			Actor: string(c.Actor), Role: string(t.Role), Source: c.Source, TokenId: t.BearerID(), ApiTokenId: t.ID,
			Reason: "API token " + t.Name, Time: timestamppb.New(now)})
	})
	return out, err
}

// tokenUses holds the API tokens' last uses until FlushTokenUse writes
// them: a verification costs no write.
type tokenUses struct {
	mu sync.Mutex
	m  map[string]time.Time // by token id
}

func (u *tokenUses) note(id string, at time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]time.Time{}
	}
	if at.After(u.m[id]) {
		u.m[id] = at
	}
}

func (u *tokenUses) get(id string) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	at, ok := u.m[id]
	return at, ok
}

// take empties the held uses and returns them.
func (u *tokenUses) take() map[string]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := u.m
	u.m = nil
	return m
}

// FlushTokenUse writes the API tokens' last uses noted since the last
// flush in one statement (a later one stored by another process wins).
// What fails to be written is held for the next flush.
func (a *App) FlushTokenUse(ctx context.Context) error {
	held := a.tokenUse.take()
	if len(held) == 0 {
		return nil
	}
	ids := make([]string, 0, len(held))
	ats := make([]time.Time, 0, len(held))
	for id, at := range held {
		ids, ats = append(ids, id), append(ats, at)
	}
	if err := adapters.RecordTokenUse(ctx, a.pool, ids, ats); err != nil {
		for id, at := range held {
			a.tokenUse.note(id, at)
		}
		return err
	}
	return nil
}
