package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"unicode/utf8"

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

// maxPasswordBytes bounds a password: argon2 hashes any length, but a
// megabyte of one would be an expensive way to be refused.
const maxPasswordBytes = 1024

func checkUsername(username string) error {
	if !usernameRE.MatchString(username) {
		return apierr.Invalid("username", "%q must be 1-64 letters, digits or . _ @ -, starting with a letter or digit", username)
	}
	return nil
}

func checkPassword(field, pw string) error {
	if utf8.RuneCountInString(pw) < password.MinLength {
		return apierr.Invalid(field, "must be at least %d characters", password.MinLength)
	}
	if len(pw) > maxPasswordBytes {
		return apierr.Invalid(field, "must be at most %d bytes", maxPasswordBytes)
	}
	return nil
}

func checkRole(field string, role vocab.Role) error {
	if role == "" {
		return apierr.Invalid(field, "is required: one of %q, %q or %q", vocab.RoleViewer, vocab.RoleOperator, vocab.RoleAdmin)
	}
	if !role.Valid() {
		return apierr.Invalid(field, "%q is not a role: one of %q, %q or %q", role, vocab.RoleViewer, vocab.RoleOperator, vocab.RoleAdmin)
	}
	return nil
}

// pageSizeOf checks a list's page size (0: DefaultPageSize).
func pageSizeOf(pageSize int32) (int, error) {
	if pageSize < 0 || pageSize > MaxPageSize {
		return 0, apierr.Invalid("pageSize", "%d is out of range: must be between 1 and %d (0 means %d)", pageSize, MaxPageSize, DefaultPageSize)
	}
	if pageSize == 0 {
		return DefaultPageSize, nil
	}
	return int(pageSize), nil
}

// page keeps the first n of items read n+1 at a time, and the token of
// the next page (from the last kept) when there were more.
func page[T any](items []T, n int, token func(last T) string) ([]T, string) {
	if len(items) <= n {
		return items, ""
	}
	return items[:n], token(items[n-1])
}

// userProto is what the API and events show of a user: never the password.
func userProto(u *adapters.User) *authv1.User {
	return &authv1.User{Id: u.ID, Username: u.Username, Role: string(u.Role), Version: u.Version,
		CreateTime: timestamppb.New(u.CreatedAt), UpdateTime: timestamppb.New(u.UpdatedAt), PasswordChangeRequired: u.MustChangePassword}
}

// emitUser writes the user.<verb> event for a change of u, inside tx.
func (a *App) emitUser(ctx context.Context, tx pgx.Tx, verb vocab.Verb, actor vocab.Actor, u *adapters.User) error {
	msg, err := bus.NewEvent(ctx, subjects.NounUser, u.ID, verb, actor, u.Version, u.UpdatedAt, userProto(u))
	if err != nil {
		return err
	}
	return outbox.Write(ctx, tx, msg)
}

// Caller is who makes a request: the actor, and for an API client (the
// gateway's calls) its address and the role and token id of the
// credential it used.
type Caller struct {
	Actor   vocab.Actor
	Source  string
	Role    vocab.Role
	TokenID string
}

// auditUser writes the audit record of an admin's (or the user's own)
// change to user u, inside tx.
func (a *App) auditUser(ctx context.Context, tx pgx.Tx, action string, c Caller, u *adapters.User, reason string) error {
	return a.audit(ctx, tx, &authv1.AuthAudit{Action: action, Username: u.Username, UserId: u.ID, Actor: string(c.Actor),
		Role: string(u.Role), Reason: reason, Source: c.Source, Time: timestamppb.New(a.now())})
}

// CreateUser creates a user with a password and a role (an admin's call:
// the gateway checks that).
func (a *App) CreateUser(ctx context.Context, c Caller, r *authv1.CreateUserRequest) (*authv1.User, error) {
	if err := checkUsername(r.GetUsername()); err != nil {
		return nil, err
	}
	if err := checkPassword("password", r.GetPassword()); err != nil {
		return nil, err
	}
	role := vocab.Role(r.GetRole())
	if err := checkRole("role", role); err != nil {
		return nil, err
	}
	hash, err := password.Hash(r.GetPassword())
	if err != nil {
		return nil, err
	}
	u := &adapters.User{ID: adapters.NewID(), Username: r.GetUsername(), PasswordHash: hash, Role: role, CreatedAt: a.now()}
	err = a.inTx(ctx, func(tx pgx.Tx) error {
		if err := adapters.InsertUser(ctx, tx, u); err != nil {
			return err
		}
		if err := a.emitUser(ctx, tx, vocab.VerbCreated, c.Actor, u); err != nil {
			return err
		}
		return a.auditUser(ctx, tx, subjects.VerbUserCreated, c, u, "")
	})
	if err != nil {
		return nil, err
	}
	return userProto(u), nil
}

// GetUser reads a user.
func (a *App) GetUser(ctx context.Context, id string) (*authv1.User, error) {
	u, err := adapters.UserByID(ctx, a.pool, id, false)
	if err != nil {
		return nil, err
	}
	return userProto(u), nil
}

// ListUsers lists users, oldest first.
func (a *App) ListUsers(ctx context.Context, pageSize int32, pageToken string) (*authv1.ListUsersResponse, error) {
	n, err := pageSizeOf(pageSize)
	if err != nil {
		return nil, err
	}
	after, err := adapters.PageAfter(pageToken)
	if err != nil {
		return nil, err
	}
	us, err := adapters.ListUsers(ctx, a.pool, after, n+1)
	if err != nil {
		return nil, err
	}
	out := &authv1.ListUsersResponse{}
	us, out.NextPageToken = page(us, n, func(u *adapters.User) string { return adapters.PageToken(u.ID) })
	for _, u := range us {
		out.Users = append(out.Users, userProto(u))
	}
	return out, nil
}

// changeUser reads user id locked at version (0: any), lets change alter
// it, and writes it at the next version with the event and the audit
// record, all in one transaction. change returns the audit action and its
// reason, or "" when it changed nothing (no new version, no event). With
// guardAdmins (a change that may take an admin away) every admin's row is
// locked first, in one order, and counted: the last admin always stays,
// and two such changes at once take turns instead of deadlocking.
func (a *App) changeUser(ctx context.Context, c Caller, id string, version int64, guardAdmins bool,
	change func(tx pgx.Tx, u *adapters.User) (action, reason string, err error)) (*adapters.User, error) {
	var out *adapters.User
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		admins := 0
		if guardAdmins {
			var err error
			if admins, err = adapters.LockAdmins(ctx, tx); err != nil {
				return err
			}
		}
		u, err := adapters.UserByID(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if version != 0 && u.Version != version {
			return apierr.Conflict(apierr.ReasonVersionMismatch, "user %q is at version %d, not %d: read it again and retry", id, u.Version, version)
		}
		wasAdmin := u.Role == vocab.RoleAdmin
		action, reason, err := change(tx, u)
		if err != nil || action == "" {
			out = u
			return err
		}
		if wasAdmin && (u.Role != vocab.RoleAdmin || action == subjects.VerbUserDeleted) {
			if !guardAdmins {
				return fmt.Errorf("change of admin %s without the admins' locks", u.ID)
			}
			if admins <= 1 {
				return apierr.Conflict(apierr.ReasonLastAdmin, "%q is the last admin: make another user admin first", u.Username)
			}
		}
		verb := vocab.VerbUpdated
		if action == subjects.VerbUserDeleted {
			verb = vocab.VerbDeleted
			if err := adapters.DeleteUser(ctx, tx, u.ID); err != nil {
				return err
			}
		} else if err := adapters.UpdateUser(ctx, tx, u, a.now()); err != nil {
			return err
		}
		if err := a.emitUser(ctx, tx, verb, c.Actor, u); err != nil {
			return err
		}
		out = u
		return a.auditUser(ctx, tx, action, c, u, reason)
	})
	return out, err
}

// UpdateUser changes a user's role at the version read. The same role
// changes nothing; the last admin keeps theirs.
func (a *App) UpdateUser(ctx context.Context, c Caller, r *authv1.UpdateUserRequest) (*authv1.User, error) {
	if err := apierr.CheckID("id", r.GetId()); err != nil {
		return nil, err
	}
	if r.GetVersion() == 0 {
		return nil, apierr.Invalid("version", "is required: send the version you read, so a concurrent change is not overwritten")
	}
	role := vocab.Role(r.GetRole())
	if err := checkRole("role", role); err != nil {
		return nil, err
	}
	u, err := a.changeUser(ctx, c, r.GetId(), r.GetVersion(), true, func(_ pgx.Tx, u *adapters.User) (string, string, error) {
		if u.Role == role {
			return "", "", nil
		}
		reason := fmt.Sprintf("%s → %s", u.Role, role)
		u.Role = role
		return subjects.VerbRoleChanged, reason, nil
	})
	if err != nil {
		return nil, err
	}
	return userProto(u), nil
}

// DeleteUser deletes a user (at version, if not 0) and every token of
// theirs; never the last admin.
func (a *App) DeleteUser(ctx context.Context, c Caller, id string, version int64) error {
	_, err := a.changeUser(ctx, c, id, version, true, func(_ pgx.Tx, _ *adapters.User) (string, string, error) {
		return subjects.VerbUserDeleted, "", nil
	})
	return err
}

// ResetPassword gives a user a new random password, answered once, which
// they must change at their next login (until then their tokens may only
// read the user and change the password), and ends their login sessions.
// Their API tokens stay: an admin revokes those one by one.
func (a *App) ResetPassword(ctx context.Context, c Caller, id string) (*authv1.ResetPasswordResponse, error) {
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	raw := make([]byte, 15)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	temporary := base64.RawURLEncoding.EncodeToString(raw)
	hash, err := password.Hash(temporary)
	if err != nil {
		return nil, err
	}
	u, err := a.changeUser(ctx, c, id, 0, false, func(tx pgx.Tx, u *adapters.User) (string, string, error) {
		u.PasswordHash, u.MustChangePassword = hash, true
		n, err := adapters.RevokeSessions(ctx, tx, u.ID, "", a.now())
		return subjects.VerbPasswordReset, fmt.Sprintf("%d sessions ended", n), err
	})
	if err != nil {
		return nil, err
	}
	return &authv1.ResetPasswordResponse{User: userProto(u), TemporaryPassword: temporary}, nil
}

// ChangePassword changes the calling user's own password and ends their
// other login sessions (the one the call is made with stays). Sending the
// same change again succeeds without changing anything, so a retry is safe.
func (a *App) ChangePassword(ctx context.Context, c Caller, r *authv1.ChangePasswordRequest) error {
	actor := c.Actor
	if actor.Kind() != vocab.ActorUser {
		return apierr.PermissionDenied("only a user changes their own password")
	}
	if r.GetCurrentPassword() == "" {
		return apierr.Invalid("currentPassword", "is required")
	}
	if err := checkPassword("newPassword", r.GetNewPassword()); err != nil {
		return err
	}
	if r.GetNewPassword() == r.GetCurrentPassword() {
		return apierr.Invalid("newPassword", "must differ from the current password")
	}
	u, err := adapters.UserByName(ctx, a.pool, actor.Name())
	if errors.Is(err, adapters.ErrNoUser) {
		return apierr.Unauthenticated("user %q no longer exists", actor.Name())
	}
	if err != nil {
		return err
	}
	if err := password.Verify(r.GetCurrentPassword(), u.PasswordHash); errors.Is(err, password.ErrMismatch) {
		if !u.MustChangePassword && password.Verify(r.GetNewPassword(), u.PasswordHash) == nil {
			return nil // done already: a retry
		}
		return apierr.Invalid("currentPassword", "is not your current password")
	} else if err != nil {
		return err
	}
	hash, err := password.Hash(r.GetNewPassword())
	if err != nil {
		return err
	}
	_, err = a.changeUser(ctx, c, u.ID, u.Version, false, func(tx pgx.Tx, u *adapters.User) (string, string, error) {
		u.PasswordHash, u.MustChangePassword = hash, false
		n, err := adapters.RevokeSessions(ctx, tx, u.ID, c.TokenID, a.now())
		return subjects.VerbPasswordChanged, fmt.Sprintf("%d other sessions ended", n), err
	})
	if apierr.ReasonOf(err) == apierr.ReasonVersionMismatch {
		return apierr.Conflict(apierr.ReasonConcurrentChange, "your user changed while the password was checked: try again")
	}
	return err
}
