package adapters

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bearer"
)

// User is a Flotilla user account.
type User struct {
	ID           string
	Username     string
	PasswordHash string
	Role         vocab.Role
	Version      int64
	CreatedAt    time.Time
	UpdatedAt    time.Time
	// MustChangePassword: an admin set the password (a reset); the user
	// may do nothing else until they change it.
	MustChangePassword bool
}

// ErrAdminExists is returned by CreateFirstAdmin when an admin already exists.
var ErrAdminExists = errors.New("an admin user already exists")

// ErrNoUser is returned when a user or token is not found.
var ErrNoUser = errors.New("no such user")

const userColumns = "id::text, username, password_hash, role, version, created_at, updated_at, must_change_password"

func scanUser(row pgx.Row) (*User, error) {
	u := &User{}
	var role string
	if err := row.Scan(&u.ID, &u.Username, &u.PasswordHash, &role, &u.Version, &u.CreatedAt, &u.UpdatedAt, &u.MustChangePassword); err != nil {
		return nil, err
	}
	u.Role = vocab.Role(role)
	return u, nil
}

// CreateFirstAdmin creates the first admin user, or fails with ErrAdminExists.
// The table lock makes two concurrent setups end with one admin.
func CreateFirstAdmin(ctx context.Context, tx pgx.Tx, u *User) error {
	if _, err := tx.Exec(ctx, "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("lock users: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')").Scan(&exists); err != nil {
		return fmt.Errorf("check admin: %w", err)
	}
	if exists {
		return ErrAdminExists
	}
	u.Role = vocab.RoleAdmin
	err := InsertUser(ctx, tx, u)
	if apierr.Is(err, apierr.KindConflict) {
		return ErrAdminExists
	}
	return err
}

// InsertUser writes a new user at version 1; a user name in use is a
// conflict naming it.
func InsertUser(ctx context.Context, tx pgx.Tx, u *User) error {
	u.Version, u.UpdatedAt = 1, u.CreatedAt
	_, err := tx.Exec(ctx, `INSERT INTO users (id, username, password_hash, role, version, created_at, updated_at, must_change_password)
		VALUES ($1, $2, $3, $4, 1, $5, $5, $6)`, u.ID, u.Username, u.PasswordHash, string(u.Role), u.CreatedAt, u.MustChangePassword)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return apierr.Conflict(apierr.ReasonAlreadyExists, "user name %q is already in use", u.Username)
	}
	if err != nil {
		return fmt.Errorf("create user: %w", err)
	}
	return nil
}

// UserByName reads a user by user name.
func UserByName(ctx context.Context, q Querier, username string) (*User, error) {
	u, err := scanUser(q.QueryRow(ctx, "SELECT "+userColumns+" FROM users WHERE username = $1", username))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoUser
	}
	if err != nil {
		return nil, fmt.Errorf("read user: %w", err)
	}
	return u, nil
}

// UserByID reads a user by id; with forUpdate the row stays locked until
// the transaction ends. A malformed id is invalid input, a missing user
// not found.
func UserByID(ctx context.Context, q Querier, id string, forUpdate bool) (*User, error) {
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	sql := "SELECT " + userColumns + " FROM users WHERE id = $1"
	if forUpdate {
		sql += " FOR UPDATE"
	}
	u, err := scanUser(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apierr.NotFound("user", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read user %s: %w", id, err)
	}
	return u, nil
}

// ListUsers returns up to limit users with ids after after, oldest first.
func ListUsers(ctx context.Context, q Querier, after string, limit int) ([]*User, error) {
	rows, err := q.Query(ctx, "SELECT "+userColumns+" FROM users WHERE id > $1 ORDER BY users.id LIMIT $2", after, limit)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*User, error) { return scanUser(r) })
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// UpdateUser writes u's role, password and must-change flag if the stored
// version is still u.Version, then advances u to the next version.
func UpdateUser(ctx context.Context, tx pgx.Tx, u *User, now time.Time) error {
	tag, err := tx.Exec(ctx, `UPDATE users SET role = $3, password_hash = $4, must_change_password = $5, version = version + 1, updated_at = $6
		WHERE id = $1 AND version = $2`, u.ID, u.Version, string(u.Role), u.PasswordHash, u.MustChangePassword, now)
	if err != nil {
		return fmt.Errorf("update user %s: %w", u.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return apierr.Conflict(apierr.ReasonVersionMismatch, "user %q changed since version %d: read it again and retry", u.ID, u.Version)
	}
	u.Version++
	u.UpdatedAt = now
	return nil
}

// DeleteUser removes a user (their tokens go with them).
func DeleteUser(ctx context.Context, tx pgx.Tx, id string) error {
	if _, err := tx.Exec(ctx, "DELETE FROM users WHERE id = $1", id); err != nil {
		return fmt.Errorf("delete user %s: %w", id, err)
	}
	return nil
}

// LockAdmins locks every admin's row, in id order, until the transaction
// ends and returns how many there are: of two transactions that each take
// an admin away, the second waits and then counts without the first's.
func LockAdmins(ctx context.Context, tx pgx.Tx) (int, error) {
	rows, err := tx.Query(ctx, "SELECT id FROM users WHERE role = 'admin' ORDER BY id FOR UPDATE")
	if err != nil {
		return 0, fmt.Errorf("lock admins: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[[16]byte])
	if err != nil {
		return 0, fmt.Errorf("lock admins: %w", err)
	}
	return len(ids), nil
}

// TokenKind tells a login session from an API token.
type TokenKind string

// Token kinds.
const (
	TokenSession TokenKind = "session"
	TokenAPI     TokenKind = "api"
)

// Token is a bearer token as stored: never the token, only its digest.
type Token struct {
	ID     string
	Digest []byte
	UserID string
	Kind   TokenKind
	// Name and Role: API tokens only.
	Name       string
	Role       vocab.Role
	CreatedAt  time.Time
	ExpiresAt  time.Time
	LastUsedAt time.Time // zero: never
	// Username is the user's, read with the token.
	Username string
}

// BearerID is the token's id in audit records and revocation notices.
func (t *Token) BearerID() string {
	if len(t.Digest) < 8 {
		return ""
	}
	return hex.EncodeToString(t.Digest[:8])
}

// tokenDigest is how a bearer token is stored.
func tokenDigest(token string) []byte {
	d := bearer.Digest(token)
	return d[:]
}

// InsertToken stores a new token's digest: t's id, user, kind, name, role,
// creation and expiry. A live API token of the same user and name is a
// conflict naming it.
func InsertToken(ctx context.Context, q Querier, token string, t *Token) error {
	t.Digest = tokenDigest(token)
	var name, role any
	if t.Kind == TokenAPI {
		name, role = t.Name, string(t.Role)
	}
	_, err := q.Exec(ctx, `INSERT INTO api_tokens (token_hash, id, user_id, kind, name, role, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, t.Digest, t.ID, t.UserID, string(t.Kind), name, role, t.CreatedAt, t.ExpiresAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "api_tokens_live_name" {
		e := apierr.Conflict(apierr.ReasonAlreadyExists, "you already have an API token named %q: revoke it or choose another name", t.Name)
		e.Field = "name"
		return e
	}
	if err != nil {
		return fmt.Errorf("store token: %w", err)
	}
	return nil
}

// UserByToken returns the user a live (unexpired, unrevoked) token belongs
// to, and the token.
func UserByToken(ctx context.Context, q Querier, token string, now time.Time) (*User, *Token, error) {
	u, t := &User{}, &Token{Digest: tokenDigest(token)}
	var userRole, kind string
	var name, role *string
	var lastUsed *time.Time
	err := q.QueryRow(ctx, `SELECT u.id::text, u.username, u.role, u.version, u.created_at, u.updated_at, u.must_change_password,
			t.id::text, t.kind, t.name, t.role, t.created_at, t.expires_at, t.last_used_at
		FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2`, t.Digest, now).
		Scan(&u.ID, &u.Username, &userRole, &u.Version, &u.CreatedAt, &u.UpdatedAt, &u.MustChangePassword,
			&t.ID, &kind, &name, &role, &t.CreatedAt, &t.ExpiresAt, &lastUsed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, ErrNoUser
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read token: %w", err)
	}
	u.Role = vocab.Role(userRole)
	t.UserID, t.Username, t.Kind = u.ID, u.Username, TokenKind(kind)
	if name != nil {
		t.Name = *name
	}
	if role != nil {
		t.Role = vocab.Role(*role)
	}
	if lastUsed != nil {
		t.LastUsedAt = *lastUsed
	}
	return u, t, nil
}

// RevokedToken is the token of that bearer value if it was revoked (its
// id, kind and whose it is); a token never issued, or one that is not
// revoked, is ErrNoUser.
func RevokedToken(ctx context.Context, q Querier, token string) (*Token, error) {
	t := &Token{Digest: tokenDigest(token)}
	var kind string
	err := q.QueryRow(ctx, `SELECT t.id::text, t.kind, u.id::text, u.username
		FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.token_hash = $1 AND t.revoked_at IS NOT NULL`, t.Digest).Scan(&t.ID, &kind, &t.UserID, &t.Username)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoUser
	}
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	t.Kind = TokenKind(kind)
	return t, nil
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

const apiTokenColumns = "t.id::text, t.token_hash, t.user_id::text, u.username, t.name, t.role, t.created_at, t.expires_at, t.last_used_at"

func scanAPIToken(row pgx.Row) (*Token, error) {
	t := &Token{Kind: TokenAPI}
	var role string
	var lastUsed *time.Time
	if err := row.Scan(&t.ID, &t.Digest, &t.UserID, &t.Username, &t.Name, &role, &t.CreatedAt, &t.ExpiresAt, &lastUsed); err != nil {
		return nil, err
	}
	t.Role = vocab.Role(role)
	if lastUsed != nil {
		t.LastUsedAt = *lastUsed
	}
	return t, nil
}

// APITokenByID reads a live API token, locked until the transaction ends;
// an unknown, expired or revoked one is not found.
func APITokenByID(ctx context.Context, tx pgx.Tx, id string, now time.Time) (*Token, error) {
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	t, err := scanAPIToken(tx.QueryRow(ctx, "SELECT "+apiTokenColumns+` FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.id = $1 AND t.kind = 'api' AND t.revoked_at IS NULL AND t.expires_at > $2 FOR UPDATE OF t`, id, now))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apierr.NotFound("API token", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read API token %s: %w", id, err)
	}
	return t, nil
}

// RevokeTokenByID marks the token with this id revoked.
func RevokeTokenByID(ctx context.Context, tx pgx.Tx, id string, now time.Time) error {
	if _, err := tx.Exec(ctx, "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", id, now); err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return nil
}

// ListAPITokens returns up to limit live API tokens with ids after after,
// oldest first: every user's, or userID's only when it is not "".
func ListAPITokens(ctx context.Context, q Querier, userID, after string, limit int, now time.Time) ([]*Token, error) {
	rows, err := q.Query(ctx, "SELECT "+apiTokenColumns+` FROM api_tokens t JOIN users u ON u.id = t.user_id
		WHERE t.kind = 'api' AND t.revoked_at IS NULL AND t.expires_at > $1 AND t.id > $2 AND ($3 = '' OR t.user_id::text = $3)
		ORDER BY t.id LIMIT $4`, now, after, userID, limit)
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*Token, error) { return scanAPIToken(r) })
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	return out, nil
}

// ForgetExpiredAPIToken removes userID's expired or revoked API tokens
// named name, so the name can be given again.
func ForgetExpiredAPIToken(ctx context.Context, tx pgx.Tx, userID, name string, now time.Time) error {
	if _, err := tx.Exec(ctx, `DELETE FROM api_tokens WHERE user_id = $1 AND kind = 'api' AND name = $2
		AND (expires_at <= $3 OR revoked_at IS NOT NULL)`, userID, name, now); err != nil {
		return fmt.Errorf("forget expired API tokens: %w", err)
	}
	return nil
}

// RevokeSessions revokes userID's live login sessions but the one whose
// bearer id is except ("": all of them) and returns how many.
func RevokeSessions(ctx context.Context, tx pgx.Tx, userID, except string, now time.Time) (int64, error) {
	tag, err := tx.Exec(ctx, `UPDATE api_tokens SET revoked_at = $2 WHERE user_id = $1 AND kind = 'session'
		AND revoked_at IS NULL AND encode(substring(token_hash FROM 1 FOR 8), 'hex') <> $3`, userID, now, except)
	if err != nil {
		return 0, fmt.Errorf("revoke sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}

// RecordTokenUse sets the last use of the tokens with these ids to the
// times given, unless a later one is stored.
func RecordTokenUse(ctx context.Context, q Querier, ids []string, at []time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.Exec(ctx, `UPDATE api_tokens t SET last_used_at = v.at
		FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
		WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)`, ids, at)
	if err != nil {
		return fmt.Errorf("record token use: %w", err)
	}
	return nil
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
