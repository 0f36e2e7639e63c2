package adapters

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"flotilla.dev/flotilla/libs/bearer"
)

// User is a Flotilla user account.
type User struct {
	ID           string
	Username     string
	PasswordHash string
	IsAdmin      bool
	CreatedAt    time.Time
}

// ErrAdminExists is returned by CreateFirstAdmin when an admin already exists.
var ErrAdminExists = errors.New("an admin user already exists")

// ErrNoUser is returned when a user or token is not found.
var ErrNoUser = errors.New("no such user")

// CreateFirstAdmin creates the first admin user, or fails with ErrAdminExists.
// The table lock makes two concurrent setups end with one admin.
func CreateFirstAdmin(ctx context.Context, tx pgx.Tx, u *User) error {
	if _, err := tx.Exec(ctx, "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("lock users: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE is_admin)").Scan(&exists); err != nil {
		return fmt.Errorf("check admin: %w", err)
	}
	if exists {
		return ErrAdminExists
	}
	_, err := tx.Exec(ctx, "INSERT INTO users (id, username, password_hash, is_admin, created_at) VALUES ($1, $2, $3, true, $4)",
		u.ID, u.Username, u.PasswordHash, u.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return ErrAdminExists
	}
	if err != nil {
		return fmt.Errorf("create admin: %w", err)
	}
	return nil
}

// UserByName reads a user by user name.
func UserByName(ctx context.Context, q Querier, username string) (*User, error) {
	u := &User{}
	err := q.QueryRow(ctx, "SELECT id::text, username, password_hash, is_admin, created_at FROM users WHERE username = $1", username).
		Scan(&u.ID, &u.Username, &u.PasswordHash, &u.IsAdmin, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoUser
	}
	if err != nil {
		return nil, fmt.Errorf("read user: %w", err)
	}
	return u, nil
}

// tokenDigest is how a bearer token is stored.
func tokenDigest(token string) []byte {
	d := bearer.Digest(token)
	return d[:]
}

// InsertToken stores a new token's digest for a user.
func InsertToken(ctx context.Context, q Querier, token, userID string, now, expires time.Time) error {
	if _, err := q.Exec(ctx, "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
		tokenDigest(token), userID, now, expires); err != nil {
		return fmt.Errorf("store token: %w", err)
	}
	return nil
}

// UserByToken returns the user a live (unexpired, unrevoked) token belongs to.
func UserByToken(ctx context.Context, q Querier, token string, now time.Time) (*User, time.Time, error) {
	u := &User{}
	var exp time.Time
	err := q.QueryRow(ctx, `SELECT u.id::text, u.username, u.is_admin, u.created_at, t.expires_at
		FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2`, tokenDigest(token), now).
		Scan(&u.ID, &u.Username, &u.IsAdmin, &u.CreatedAt, &exp)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, time.Time{}, ErrNoUser
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read token: %w", err)
	}
	return u, exp, nil
}

// RevokeToken marks a token revoked and returns whose it was; an unknown or
// already revoked token is ErrNoUser.
func RevokeToken(ctx context.Context, q Querier, token string, now time.Time) (*User, error) {
	u := &User{}
	err := q.QueryRow(ctx, `UPDATE api_tokens t SET revoked_at = $2 FROM users u
		WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.id = t.user_id
		RETURNING u.id::text, u.username`, tokenDigest(token), now).Scan(&u.ID, &u.Username)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoUser
	}
	if err != nil {
		return nil, fmt.Errorf("revoke token: %w", err)
	}
	return u, nil
}

// DeleteExpiredTokens removes tokens that expired before cutoff.
func DeleteExpiredTokens(ctx context.Context, q Querier, cutoff time.Time) (int64, error) {
	tag, err := q.Exec(ctx, "DELETE FROM api_tokens WHERE expires_at < $1", cutoff)
	if err != nil {
		return 0, fmt.Errorf("delete expired tokens: %w", err)
	}
	return tag.RowsAffected(), nil
}

// LoginFailures reads the run of failed logins for a user name (zero when
// there is none).
func LoginFailures(ctx context.Context, q Querier, username string) (failures int, last time.Time, err error) {
	err = q.QueryRow(ctx, "SELECT failures, last_failure FROM login_failures WHERE username = $1", username).Scan(&failures, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read login failures: %w", err)
	}
	return failures, last, nil
}

// RecordLoginFailure counts one more failed login for a user name at now,
// starting a new run when the last failure is older than forget, and
// returns the run's length. Concurrent failures are all counted.
func RecordLoginFailure(ctx context.Context, q Querier, username string, now time.Time, forget time.Duration) (int, error) {
	var n int
	err := q.QueryRow(ctx, `INSERT INTO login_failures (username, failures, last_failure) VALUES ($1, 1, $2)
		ON CONFLICT (username) DO UPDATE SET
			failures = CASE WHEN login_failures.last_failure < $3 THEN 1 ELSE login_failures.failures + 1 END,
			last_failure = GREATEST(login_failures.last_failure, $2)
		RETURNING failures`, username, now, now.Add(-forget)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("record login failure: %w", err)
	}
	return n, nil
}

// ClearLoginFailures ends the run of failed logins for a user name.
func ClearLoginFailures(ctx context.Context, q Querier, username string) error {
	if _, err := q.Exec(ctx, "DELETE FROM login_failures WHERE username = $1", username); err != nil {
		return fmt.Errorf("clear login failures: %w", err)
	}
	return nil
}

// DeleteLoginFailures removes runs whose last failure is before cutoff.
func DeleteLoginFailures(ctx context.Context, q Querier, cutoff time.Time) (int64, error) {
	tag, err := q.Exec(ctx, "DELETE FROM login_failures WHERE last_failure < $1", cutoff)
	if err != nil {
		return 0, fmt.Errorf("delete old login failures: %w", err)
	}
	return tag.RowsAffected(), nil
}
