package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"google.golang.org/protobuf/proto"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// The users, API tokens and cloud accounts pages, and the user's own
// account. Admins manage users; everyone manages their own API tokens; a
// token or a temporary password is shown once, on the page answering the
// form that made it, and kept nowhere else (no cookie, no log).

var userResource = resource{
	noun: "user", apiPath: "/api/v1/users", listPath: "/users", nameField: "username",
	new:  func() proto.Message { return &authv1.User{} },
	done: func(proto.Message) string { return "/users" },
	remove: deletion("The user is removed with every API token of theirs, and their sessions end. " +
		"The last admin cannot be deleted."),
	sets: func(s *session) ([]*fieldset, error) {
		// Whoever may not list users may not make one: the API says so
		// before the form is filled in, not after.
		if err := s.api.get("/api/v1/users?pageSize=1", &authv1.ListUsersResponse{}); err != nil {
			return nil, err
		}
		return []*fieldset{{Legend: "User", Fields: []*formField{
			{Path: "username", Label: "User name", Kind: kindText, Required: true, Create: true,
				Help: "1-64 letters, digits or . _ @ -, starting with a letter or digit."},
			{Path: "password", Label: "Password", Kind: kindPassword, Required: true, Create: true,
				Help: "At least 8 characters. The user may change it on their account page."},
			{Path: "role", Label: "Role", Kind: kindSelect, Options: words(vocab.Roles), Required: true, Value: string(vocab.RoleViewer),
				Help: "viewer reads everything; operator also runs the fleet; admin also manages users, cloud accounts and the audit trail."},
		}}}, nil
	},
}

var tokenResource = resource{
	noun: "API token", apiPath: "/api/v1/tokens", listPath: "/tokens", createOnly: true,
	new:    func() proto.Message { return &authv1.CreateTokenResponse{} },
	remove: removal{verb: "Revoke", done: "revoked", does: "Whatever uses the token is refused from now on, by every gateway."},
	find:   findToken,
	saved:  (*Console).tokenCreated,
	sets: func(s *session) ([]*fieldset, error) {
		var roles []option
		for _, r := range vocab.Roles {
			if vocab.Role(s.me.GetRole()).AtLeast(r) {
				roles = append(roles, option{Value: string(r), Label: string(r)})
			}
		}
		return []*fieldset{{Legend: "API token", Help: "Scripts send it as Authorization: Bearer <token>. It cannot create tokens or change a password.",
			Fields: []*formField{
				{Path: "name", Label: "Name", Kind: kindText, Required: true, Help: "What uses it, e.g. ci-deploy: 1-64 characters, unique among your tokens."},
				{Path: "role", Label: "Role", Kind: kindSelect, Options: roles, Required: true, Value: s.me.GetRole(),
					Help: "At most yours; if your role is lowered, the token's is too."},
				{Path: "expiresIn", Label: "Expires in", Kind: kindDuration, Value: "30d", Help: "1m to 365d, e.g. 90d or 12h."},
			}}}, nil
	},
}

var cloudAccountResource = resource{
	noun: "cloud account", apiPath: "/api/v1/cloud-accounts", listPath: "/cloud-accounts",
	new:    func() proto.Message { return &inventoryv1.CloudAccount{} },
	done:   func(proto.Message) string { return "/cloud-accounts" },
	remove: deletion("The cloud account and its stored secret key are removed. It cannot be deleted while a network uses it."),
	sets: func(*session) ([]*fieldset, error) {
		return []*fieldset{
			{Legend: "Cloud account", Fields: []*formField{
				{Path: "name", Label: "Name", Kind: kindText, Required: true, Help: "1-63 lowercase letters, digits and '-'."},
				{Path: "provider", Label: "Provider", Kind: kindSelect, Options: words([]vocab.Provider{vocab.ProviderAWS}), Required: true, Value: string(vocab.ProviderAWS)},
			}},
			{Legend: "AWS", Path: "aws", Fields: []*formField{
				{Path: "aws.region", Label: "Region", Kind: kindText, Required: true, Help: "e.g. eu-west-1."},
				{Path: "aws.endpointUrl", Label: "Endpoint URL", Kind: kindText, Help: "Empty: AWS's own; else a private endpoint."},
			}},
			{Legend: "Signing in", Path: "aws.credentials",
				Help: "All empty: the default credential chain of the managers' hosts (environment, shared files, instance profile).",
				Fields: []*formField{
					{Path: "aws.credentials.accessKeyId", Label: "Access key id", Kind: kindText},
					{Path: "aws.credentials.secretAccessKey", Label: "Secret access key", Kind: kindPassword, Autocomplete: "off",
						StoredPath: "aws.credentials.secretAccessKeySet", Help: "Write-only: kept by the secret broker, never shown again."},
					{Path: "aws.credentials.roleArn", Label: "Role to assume", Kind: kindText, Help: "arn:aws:iam::<account>:role/<name>, assumed with the keys (or the default chain)."},
					{Path: "aws.credentials.externalId", Label: "External id", Kind: kindText, Help: "With a role only."},
				}},
		}, nil
	},
}

// users serves GET /users (admins; the API refuses anyone else).
func (c *Console) users(w http.ResponseWriter, r *http.Request, s *session) {
	listPage(c, w, r, s, "/api/v1/users", (*authv1.ListUsersResponse).GetUsers, "users", "Users")
}

// confirmReset serves GET /users/{id}/reset-password: what a reset does,
// and the button.
func (c *Console) confirmReset(w http.ResponseWriter, r *http.Request, s *session) {
	u := &authv1.User{}
	if err := s.api.get("/api/v1/users/"+url.PathEscape(r.PathValue("id")), u); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := deleteData{Verb: "Reset the password of", Noun: "user", Name: u.GetUsername(), ID: u.GetId(),
		Does: u.GetUsername() + " gets a temporary password, shown to you once, to log in with and then replace with their own. " +
			"Their login sessions end; their API tokens go on working.",
		Action: "/users/" + url.PathEscape(u.GetId()) + "/reset-password", Cancel: "/users"}
	c.render(w, r, s, http.StatusOK, "delete", "Reset the password of "+u.GetUsername()+"?", d)
}

// onceData is a page showing a new secret once: an API token or a
// temporary password.
type onceData struct {
	Heading, Label, Value, Use string
	Facts                      []fact
	Back, BackLabel            string
}

// fact is one named value shown beside a secret.
type fact struct{ Name, Value string }

// resetPassword serves POST /users/{id}/reset-password: the temporary
// password, shown on this answer only.
func (c *Console) resetPassword(w http.ResponseWriter, r *http.Request, s *session) {
	resp := &authv1.ResetPasswordResponse{}
	name := r.PostFormValue("name")
	if err := s.api.do(http.MethodPost, "/api/v1/users/"+url.PathEscape(r.PathValue("id"))+":reset-password", struct{}{}, resp); err != nil {
		c.done(w, r, s, err, "/users", "", "The password of "+name+" was not reset")
		return
	}
	u := resp.GetUser()
	c.render(w, r, s, http.StatusOK, "once", "Temporary password for "+u.GetUsername(), onceData{
		Heading: "Temporary password for " + u.GetUsername(), Label: "Temporary password", Value: resp.GetTemporaryPassword(),
		Use:  "Give it to " + u.GetUsername() + " by a safe way: they log in with it and must then choose their own password.",
		Back: "/users", BackLabel: "Back to the users",
	})
}

// tokens serves GET /tokens: the user's API tokens (an admin's: everyone's).
func (c *Console) tokens(w http.ResponseWriter, r *http.Request, s *session) {
	listPage(c, w, r, s, "/api/v1/tokens", (*authv1.ListTokensResponse).GetTokens, "tokens", "API tokens")
}

// findToken reads one of the tokens the user may list (the API has no GET
// of one token).
func findToken(s *session, id string) (proto.Message, error) {
	ts, err := listAll(s.api, "/api/v1/tokens", (*authv1.ListTokensResponse).GetTokens)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(ts, func(t *authv1.ApiToken) bool { return t.GetId() == id })
	if i < 0 {
		return nil, &apiError{Status: http.StatusNotFound, Reason: "not_found", Message: fmt.Sprintf("There is no API token %s.", id)}
	}
	return ts[i], nil
}

// tokenCreated shows a new API token, once.
func (c *Console) tokenCreated(w http.ResponseWriter, r *http.Request, s *session, rec proto.Message) {
	resp := rec.(*authv1.CreateTokenResponse)
	t := resp.GetApiToken()
	c.render(w, r, s, http.StatusOK, "once", "API token "+t.GetName(), onceData{
		Heading: "API token " + t.GetName(), Label: "Token", Value: resp.GetToken(),
		Use:   "Send it as Authorization: Bearer <token>.",
		Facts: []fact{{"Role", t.GetRole()}, {"Expires", t.GetExpireTime().AsTime().UTC().Format(timeLayout)}},
		Back:  "/tokens", BackLabel: "Back to the API tokens",
	})
}

// accountData is the account page's.
type accountData struct {
	Me   *authv1.User
	Form *form
}

// passwordForm is the account page's password change.
func passwordForm() *form {
	return &form{Action: "/account", Submit: "Change password", Cancel: "/", Sets: []*fieldset{{Legend: "Change your password", Fields: []*formField{
		{Path: "currentPassword", Label: "Current password", Kind: kindPassword, Required: true, Autocomplete: "current-password"},
		{Path: "newPassword", Label: "New password", Kind: kindPassword, Required: true, Help: "At least 8 characters, not the current one."},
		{Path: "confirmPassword", Label: "New password again", Kind: kindPassword, Required: true},
	}}}}
}

// account serves GET and POST /account: who the user is, and their
// password change (the page a user whose password an admin reset is sent
// to). A change ends the user's other sessions, not this one.
func (c *Console) account(w http.ResponseWriter, r *http.Request, s *session) {
	f := passwordForm()
	if r.Method == http.MethodPost {
		f.read(r.PostFormValue)
		cur, next := f.field("currentPassword").Value, f.field("newPassword").Value
		var err error = &apiError{Status: http.StatusBadRequest, Reason: "invalid_field", Field: "confirmPassword",
			Message: "confirmPassword: is not the same as the new password"}
		if next == f.field("confirmPassword").Value {
			err = s.api.do(http.MethodPost, "/api/v1/users/me:change-password", &authv1.ChangePasswordRequest{CurrentPassword: cur, NewPassword: next}, nil)
		}
		if err == nil {
			redirect(w, r, "/", "Your password is changed; your other sessions have ended.")
			return
		}
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status == http.StatusUnauthorized {
			c.fail(w, r, s, err)
			return
		}
		f.setErr(ae)
		c.render(w, r, s, ae.Status, "account", "Your account", accountData{Me: s.me, Form: f})
		return
	}
	c.render(w, r, s, http.StatusOK, "account", "Your account", accountData{Me: s.me, Form: f})
}

// cloudAccounts serves GET /cloud-accounts.
func (c *Console) cloudAccounts(w http.ResponseWriter, r *http.Request, s *session) {
	listPage(c, w, r, s, "/api/v1/cloud-accounts", (*inventoryv1.ListCloudAccountsResponse).GetCloudAccounts, "cloudaccounts", "Cloud accounts")
}

// verifyCloudAccount serves POST /cloud-accounts/{id}/verify: signs in
// with the account's credentials (operators) and says what the cloud
// answered.
func (c *Console) verifyCloudAccount(w http.ResponseWriter, r *http.Request, s *session) {
	v := &inventoryv1.CloudAccountVerification{}
	name := r.PostFormValue("name")
	err := s.api.do(http.MethodPost, "/api/v1/cloud-accounts/"+url.PathEscape(r.PathValue("id"))+":verify", struct{}{}, v)
	msg := fmt.Sprintf("The cloud account %s works: account %s, signed in as %s.", name, v.GetAccount(), v.GetIdentity())
	if err == nil && !v.GetOk() {
		msg = fmt.Sprintf("The cloud account %s does not work: %s", name, v.GetMessage())
	}
	c.done(w, r, s, err, "/cloud-accounts", msg, "The cloud account "+name+" was not verified")
}
