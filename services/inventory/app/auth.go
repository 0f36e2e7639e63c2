package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/password"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// TokenPrefix starts every bearer token, so a leaked one is easy to recognise.
const TokenPrefix = "flt_"

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// dummyHash is verified against when a user does not exist, so that a login
// takes as long for an unknown user as for a wrong password.
var dummyHash, _ = password.Hash("flotilla-dummy-password")

// InitialSetup creates the first admin user. It refuses to run twice.
func (a *App) InitialSetup(ctx context.Context, username, pw string) error {
	if !usernameRE.MatchString(username) {
		return apierr.Invalid("username", "%q must be 1-64 letters, digits or . _ @ -, starting with a letter or digit", username)
	}
	if len(pw) < password.MinLength {
		return apierr.Invalid("password", "must be at least %d characters", password.MinLength)
	}
	hash, err := password.Hash(pw)
	if err != nil {
		return err
	}
	now := a.now()
	u := &adapters.User{ID: adapters.NewID(), Username: username, PasswordHash: hash, IsAdmin: true, CreatedAt: now}
	return a.inTx(ctx, func(tx pgx.Tx) error {
		if err := adapters.CreateFirstAdmin(ctx, tx, u); err != nil {
			if errors.Is(err, adapters.ErrAdminExists) {
				return apierr.Conflict(apierr.ReasonAlreadyExists, "initial setup has already been done: an admin user exists")
			}
			return err
		}
		msg, err := bus.NewEvent(ctx, subjects.NounUser, u.ID, vocab.VerbCreated, vocab.System("initial-setup"), 1, now,
			&authv1.User{Id: u.ID, Username: u.Username, IsAdmin: true, CreateTime: timestamppb.New(now)})
		if err != nil {
			return err
		}
		return outbox.Write(ctx, tx, msg)
	})
}

// Login checks a user name and password and returns a new bearer token.
func (a *App) Login(ctx context.Context, username, pw string) (*authv1.LoginResponse, error) {
	if username == "" {
		return nil, apierr.Invalid("username", "is required")
	}
	if pw == "" {
		return nil, apierr.Invalid("password", "is required")
	}
	bad := apierr.Unauthenticated("invalid user name or password")
	u, err := adapters.UserByName(ctx, a.pool, username)
	if errors.Is(err, adapters.ErrNoUser) {
		_ = password.Verify(pw, dummyHash)
		return nil, bad
	}
	if err != nil {
		return nil, err
	}
	if err := password.Verify(pw, u.PasswordHash); err != nil {
		if errors.Is(err, password.ErrMismatch) {
			return nil, bad
		}
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	now := a.now()
	exp := now.Add(a.tokenTTL)
	if err := adapters.InsertToken(ctx, a.pool, token, u.ID, now, exp); err != nil {
		return nil, err
	}
	return &authv1.LoginResponse{Token: token, ExpireTime: timestamppb.New(exp), Username: u.Username}, nil
}

// VerifyToken returns the user a live bearer token belongs to.
func (a *App) VerifyToken(ctx context.Context, token string) (*authv1.VerifyTokenResponse, error) {
	if token == "" {
		return nil, apierr.Unauthenticated("a bearer token is required")
	}
	u, exp, err := adapters.UserByToken(ctx, a.pool, token, a.now())
	if errors.Is(err, adapters.ErrNoUser) {
		return nil, apierr.Unauthenticated("the bearer token is invalid, expired or revoked: log in again")
	}
	if err != nil {
		return nil, err
	}
	return &authv1.VerifyTokenResponse{UserId: u.ID, Username: u.Username, ExpireTime: timestamppb.New(exp)}, nil
}

// RevokeToken revokes a bearer token.
func (a *App) RevokeToken(ctx context.Context, token string) error {
	return adapters.RevokeToken(ctx, a.pool, token, a.now())
}

// PurgeExpiredTokens deletes tokens that expired more than a day ago.
func (a *App) PurgeExpiredTokens(ctx context.Context) (int64, error) {
	return adapters.DeleteExpiredTokens(ctx, a.pool, a.now().Add(-24*time.Hour))
}
