package app

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/attempts"
	"flotilla.dev/flotilla/libs/bearer"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/password"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// TokenPrefix starts every bearer token, so a leaked one is easy to recognise.
const TokenPrefix = "flt_"

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// dummyHash is verified against when a user does not exist, so that a login
// takes as long for an unknown user as for a wrong password. It is made on
// first use, not at process start: argon2id costs ~40 ms and ~20 MB, which
// every process built from this package (the agent included) would pay.
var dummyHash = sync.OnceValue(func() string {
	h, _ := password.Hash("flotilla-dummy-password")
	return h
})

// InitialSetup creates the first admin user. It refuses to run twice.
func (a *App) InitialSetup(ctx context.Context, username, pw string) error {
	if err := checkUsername(username); err != nil {
		return err
	}
	if err := checkPassword("password", pw); err != nil {
		return err
	}
	hash, err := password.Hash(pw)
	if err != nil {
		return err
	}
	now := a.now()
	u := &adapters.User{ID: adapters.NewID(), Username: username, PasswordHash: hash, Role: vocab.RoleAdmin, CreatedAt: now}
	return a.inTx(ctx, func(tx pgx.Tx) error {
		if err := adapters.CreateFirstAdmin(ctx, tx, u); err != nil {
			if errors.Is(err, adapters.ErrAdminExists) {
				return apierr.Conflict(apierr.ReasonAlreadyExists, "initial setup has already been done: an admin user exists")
			}
			return err
		}
		return a.emitUser(ctx, tx, vocab.VerbCreated, vocab.System("initial-setup"), u)
	})
}

// LoginPolicy is how failed logins for one user name slow the next: five
// are free, then each waits twice as long as the last, from 30 s up to 15
// minutes; an hour without a failure forgets them.
var LoginPolicy = attempts.Policy{Free: 5, Base: 30 * time.Second, Max: 15 * time.Minute, Forget: time.Hour}

// Login checks a user name and password and returns a new bearer token.
// After a run of failures for the user name (known or not) the next login
// must wait (a 429 with the wait, the password not even checked). Failed
// and refused logins and the token issued are audit records, each written
// in the transaction that records it; source is the client's address.
func (a *App) Login(ctx context.Context, username, pw, source string) (*authv1.LoginResponse, error) {
	if username == "" {
		return nil, apierr.Invalid("username", "is required")
	}
	if pw == "" {
		return nil, apierr.Invalid("password", "is required")
	}
	now := a.now()
	rec := &authv1.AuthAudit{Username: username, Source: source, Time: timestamppb.New(now)}
	failures, last, err := adapters.LoginFailures(ctx, a.pool, username)
	if err != nil {
		return nil, err
	}
	if wait := a.loginPolicy.RetryAfter(attempts.Run{Failures: failures, Last: last}, now); wait > 0 {
		rec.Action, rec.Until = subjects.VerbLoginRefused, timestamppb.New(now.Add(wait))
		rec.Reason = fmt.Sprintf("%d failed logins in a row", failures)
		if err := a.inTx(ctx, func(tx pgx.Tx) error { return a.audit(ctx, tx, rec) }); err != nil {
			return nil, err
		}
		return nil, apierr.TooManyAttempts(wait, "too many failed logins for %q: try again in %v", username, wait)
	}
	u, err := adapters.UserByName(ctx, a.pool, username)
	switch {
	case errors.Is(err, adapters.ErrNoUser):
		_ = password.Verify(pw, dummyHash()) // as slow as a wrong password
		rec.Reason = "no such user"
	case err != nil:
		return nil, err
	default:
		rec.UserId = u.ID
		if err := password.Verify(pw, u.PasswordHash); errors.Is(err, password.ErrMismatch) {
			rec.Reason = "wrong password"
		} else if err != nil {
			return nil, err
		}
	}
	if rec.Reason != "" {
		rec.Action = subjects.VerbLoginFailed
		err := a.inTx(ctx, func(tx pgx.Tx) error {
			if _, err := adapters.RecordLoginFailure(ctx, tx, username, now, a.loginPolicy.Forget); err != nil {
				return err
			}
			return a.audit(ctx, tx, rec)
		})
		if err != nil {
			return nil, err
		}
		return nil, apierr.Unauthenticated("invalid user name or password")
	}
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	exp := now.Add(a.tokenTTL)
	rec.Action, rec.TokenId, rec.Until = subjects.VerbTokenIssued, bearer.ID(token), timestamppb.New(exp)
	err = a.inTx(ctx, func(tx pgx.Tx) error {
		if err := adapters.ClearLoginFailures(ctx, tx, username); err != nil {
			return err
		}
		t := &adapters.Token{ID: adapters.NewID(), UserID: u.ID, Kind: adapters.TokenSession, CreatedAt: now, ExpiresAt: exp}
		if err := adapters.InsertToken(ctx, tx, token, t); err != nil {
			return err
		}
		return a.audit(ctx, tx, rec)
	})
	if err != nil {
		return nil, err
	}
	return &authv1.LoginResponse{Token: token, ExpireTime: timestamppb.New(exp), Username: u.Username, Role: string(u.Role),
		PasswordChangeRequired: u.MustChangePassword}, nil
}

// audit writes an audit record to the outbox, for FLOTILLA_AUDIT, and logs
// it (never a password or token: the record holds neither). Its actor is
// rec.Actor, or the inventory itself (a login).
func (a *App) audit(ctx context.Context, tx pgx.Tx, rec *authv1.AuthAudit) error {
	id := rec.GetUserId()
	if id == "" {
		id = subjects.UnknownUser
	}
	actor := vocab.Actor(rec.GetActor())
	if actor == "" {
		actor = vocab.System(subjects.Inventory)
	}
	msg, err := bus.NewMessage(ctx, subjects.Audit(subjects.NounUser, id, rec.GetAction()), "user."+rec.GetAction(),
		actor, rec.GetTime().AsTime(), rec)
	if err != nil {
		return err
	}
	if err := outbox.Write(ctx, tx, msg); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "auth: "+rec.GetAction(), "username", rec.GetUsername(), "user_id", rec.GetUserId(),
		"source", rec.GetSource(), "reason", rec.GetReason(), "token_id", rec.GetTokenId(), "actor", rec.GetActor(), "role", rec.GetRole())
	return nil
}

// VerifyToken returns the user a live bearer token belongs to, the
// token's effective role (a session's is its user's; an API token's the
// lesser of its own and its user's) and, for a login session, whether the
// user must change their password first. An API token's use is noted, to be written with
// the others (FlushTokenUse). A revoked token presented is an audit record
// (token-refused, naming source, the client's address), at most once per
// token in RefusedTokenQuiet.
func (a *App) VerifyToken(ctx context.Context, token, source string) (*authv1.VerifyTokenResponse, error) {
	if token == "" {
		return nil, apierr.Unauthenticated("a bearer token is required")
	}
	now := a.now()
	u, t, err := adapters.UserByToken(ctx, a.pool, token, now)
	if errors.Is(err, adapters.ErrNoUser) {
		a.auditRefused(ctx, token, source, now)
		return nil, apierr.Unauthenticated("the bearer token is invalid, expired or revoked: log in again")
	}
	if err != nil {
		return nil, err
	}
	resp := &authv1.VerifyTokenResponse{UserId: u.ID, Username: u.Username, ExpireTime: timestamppb.New(t.ExpiresAt),
		Role: string(u.Role), TokenId: t.BearerID(), Kind: string(t.Kind)}
	// A reset password holds the user's logins back until they change it;
	// their API tokens go on working (an admin revokes those one by one).
	resp.PasswordChangeRequired = u.MustChangePassword && t.Kind == adapters.TokenSession
	if t.Kind == adapters.TokenAPI {
		resp.Role, resp.ApiTokenId = string(t.Role.Lesser(u.Role)), t.ID
		a.tokenUse.note(t.ID, now)
	}
	return resp, nil
}

// RefusedTokenQuiet is how long after the audit record of a revoked token
// presented the same token's next refusals go unrecorded (by this
// inventory), so a client that keeps trying does not flood the trail.
const RefusedTokenQuiet = 10 * time.Minute

// refusedTokenPolicy makes a Limiter of the tokens recorded lately: one
// "failure" (a record) holds the token back for RefusedTokenQuiet.
var refusedTokenPolicy = attempts.Policy{Base: RefusedTokenQuiet, Max: RefusedTokenQuiet, Forget: RefusedTokenQuiet}

// auditRefused writes the audit record of a revoked token presented, unless
// one of the same token was written within RefusedTokenQuiet. A token never
// issued, or expired, is no record: there is nobody to name, or nothing to
// warn of. What fails is logged; the caller is refused all the same.
func (a *App) auditRefused(ctx context.Context, token, source string, now time.Time) {
	t, err := adapters.RevokedToken(ctx, a.pool, token)
	switch {
	case errors.Is(err, adapters.ErrNoUser):
		return
	case err == nil:
		if a.refused.RetryAfter(t.ID) > 0 {
			return
		}
		a.refused.Fail(t.ID)
		rec := &authv1.AuthAudit{Action: subjects.VerbTokenRefused, Username: t.Username, UserId: t.UserID, Source: source,
			Reason: "revoked", TokenId: bearer.ID(token), Time: timestamppb.New(now)}
		if t.Kind == adapters.TokenAPI {
			rec.ApiTokenId = t.ID
		}
		err = a.inTx(ctx, func(tx pgx.Tx) error { return a.audit(ctx, tx, rec) })
	}
	if err != nil {
		a.log.WarnContext(ctx, "audit record of a revoked token presented not written", "source", source, "error", err)
	}
}

// RevokeToken revokes a bearer token and writes the audit record of it;
// revoking an unknown or revoked token does nothing.
func (a *App) RevokeToken(ctx context.Context, token, source string) error {
	now := a.now()
	return a.inTx(ctx, func(tx pgx.Tx) error {
		u, err := adapters.RevokeToken(ctx, tx, token, now)
		if errors.Is(err, adapters.ErrNoUser) {
			return nil
		}
		if err != nil {
			return err
		}
		return a.audit(ctx, tx, &authv1.AuthAudit{Action: subjects.VerbTokenRevoked, Username: u.Username, UserId: u.ID,
			Source: source, TokenId: bearer.ID(token), Time: timestamppb.New(now)})
	})
}

// PurgeExpiredTokens deletes tokens that expired more than a day ago, and
// runs of failed logins that are forgotten.
func (a *App) PurgeExpiredTokens(ctx context.Context) (int64, error) {
	if _, err := adapters.DeleteLoginFailures(ctx, a.pool, a.now().Add(-a.loginPolicy.Forget)); err != nil {
		return 0, err
	}
	return adapters.DeleteExpiredTokens(ctx, a.pool, a.now().Add(-24*time.Hour))
}
