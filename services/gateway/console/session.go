package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
)

// Cookies the console sets. Every one is HttpOnly and SameSite=Strict,
// and Secure when the browser reached the gateway over TLS.
const (
	// sessionCookie holds the user's API bearer token.
	sessionCookie = "flotilla_session"
	// flashCookie carries a one-line message to the next page.
	flashCookie = "flotilla_flash"
	// maxTokenLen bounds what SessionToken accepts as a token.
	maxTokenLen = 256
)

// SessionToken returns the API token of the console session a request
// carries, "" without one. The gateway takes it in place of an
// "Authorization: Bearer" header for reads (GET and HEAD) only, so the
// console's live feeds (EventSource cannot send headers) and downloads
// reach the API as the user; a change always comes through a console form,
// which checks its CSRF token, or with a bearer header.
func SessionToken(r *http.Request) string {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || len(ck.Value) > maxTokenLen {
		return ""
	}
	return ck.Value
}

// csrfToken is the token a session's forms carry: derived from the
// session's API token (which a page never shows), so any gateway of a
// cluster checks it without shared state, and it reveals nothing of the
// token.
func csrfToken(session string) string {
	sum := sha256.Sum256([]byte("flotilla console form\x00" + session))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// errForbiddenOrigin refuses a form sent from another site.
var errForbiddenOrigin = errors.New("this form was sent from another site, or without its security token: reload the page and try again")

// crossOrigin refuses state-changing requests another origin's page made
// the browser send (Sec-Fetch-Site, else Origin against Host).
var crossOrigin = http.NewCrossOriginProtection()

// checkForm checks that a POST comes from a console page of this session:
// same origin, and the form's csrf field matches the session.
func checkForm(r *http.Request, session string) error {
	if err := crossOrigin.Check(r); err != nil {
		return errForbiddenOrigin
	}
	want := csrfToken(session)
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(want)) != 1 {
		return errForbiddenOrigin
	}
	return nil
}

// secure reports whether cookies must be Secure: the request came over
// TLS, or through a proxy that says it terminated TLS.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// setCookie sets an HttpOnly, SameSite=Strict cookie until expires (zero:
// for the browser session; in the past: removes it).
func setCookie(w http.ResponseWriter, r *http.Request, name, value string, expires time.Time) {
	ck := &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode}
	if !expires.IsZero() {
		ck.Expires = expires
		if !expires.After(time.Now()) {
			ck.MaxAge = -1
		}
	}
	http.SetCookie(w, ck)
}

func clearCookie(w http.ResponseWriter, r *http.Request, name string) {
	setCookie(w, r, name, "", time.Unix(1, 0))
}

// setFlash leaves a message for the next page the browser shows.
func setFlash(w http.ResponseWriter, r *http.Request, msg string) {
	if len(msg) > 1500 {
		msg = msg[:1500] + "…"
	}
	setCookie(w, r, flashCookie, base64.RawURLEncoding.EncodeToString([]byte(msg)), time.Time{})
}

// takeFlash returns the message left for this page, and removes it.
func takeFlash(w http.ResponseWriter, r *http.Request) string {
	ck, err := r.Cookie(flashCookie)
	if err != nil {
		return ""
	}
	clearCookie(w, r, flashCookie)
	b, err := base64.RawURLEncoding.DecodeString(ck.Value)
	if err != nil {
		return ""
	}
	return string(b)
}

// localPath returns next when it is a path on this site, else "/": a
// login never sends the browser elsewhere.
func localPath(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.HasPrefix(next, "/\\") || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return next
}

// loginData is the login page's.
type loginData struct {
	Username, Next, Error string
}

// loginPage serves GET /login.
func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.URL.Query().Get("next"))
	if SessionToken(r) != "" && r.URL.Query().Get("expired") == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	d := loginData{Next: next}
	if r.URL.Query().Get("expired") != "" {
		d.Error = "Your session has ended: log in again."
	}
	c.render(w, r, nil, http.StatusOK, "login", "Log in", d)
}

// login serves POST /login: the API's login, then the session cookies.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if err := crossOrigin.Check(r); err != nil {
		c.render(w, r, nil, http.StatusForbidden, "login", "Log in", loginData{Error: errForbiddenOrigin.Error(), Next: "/"})
		return
	}
	d := loginData{Username: r.PostFormValue("username"), Next: localPath(r.PostFormValue("next"))}
	api := client{api: c.api, r: r}
	resp := &authv1.LoginResponse{}
	err := api.do(http.MethodPost, "/api/v1/login", &authv1.LoginRequest{Username: d.Username, Password: r.PostFormValue("password")}, resp)
	if err != nil {
		status := http.StatusUnauthorized
		var ae *apiError
		if errors.As(err, &ae) {
			status = ae.Status
		}
		d.Error = "The user name or password is wrong."
		if status != http.StatusUnauthorized {
			d.Error = err.Error()
		}
		c.render(w, r, nil, status, "login", "Log in", d)
		return
	}
	setCookie(w, r, sessionCookie, resp.GetToken(), resp.GetExpireTime().AsTime())
	if resp.GetPasswordChangeRequired() {
		redirect(w, r, "/account", choosePassword)
		return
	}
	http.Redirect(w, r, d.Next, http.StatusSeeOther)
}

// logout serves POST /logout: the API revokes the token, and the cookies
// go.
func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if err := s.api.do(http.MethodPost, "/api/v1/logout", struct{}{}, nil); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			c.fail(w, r, s, err)
			return
		}
	}
	clearCookie(w, r, sessionCookie)
	setFlash(w, r, "You are logged out.")
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// session is a logged-in user's request.
type session struct {
	token, csrf string
	// me is the user, as the API reads them (GET /api/v1/users/me).
	me  *authv1.User
	api client
}

// choosePassword is what a user whose password an admin reset is told.
const choosePassword = "An admin reset your password: choose your own to go on."

// pendingPaths are the pages a user whose password an admin reset may
// open before choosing their own.
var pendingPaths = []string{"/account", "/logout"}

// authed wraps a page that needs a session: without one the browser goes
// to the login page (and back after it); a POST must carry the session's
// form token and come from this site. The page knows the user (GET
// /api/v1/users/me); one who must change the password an admin set is
// sent to their account page.
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := SessionToken(r)
		if token == "" {
			if r.Method != http.MethodGet {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		s := &session{token: token, csrf: csrfToken(token), api: client{api: c.api, r: r, token: token}, me: &authv1.User{}}
		if err := s.api.get("/api/v1/users/me", s.me); err != nil {
			c.fail(w, r, s, err)
			return
		}
		if r.Method == http.MethodPost {
			if err := checkForm(r, token); err != nil {
				c.render(w, r, s, http.StatusForbidden, "error", "Refused", errorData{Message: err.Error()})
				return
			}
		}
		if s.me.GetPasswordChangeRequired() && !slices.Contains(pendingPaths, r.URL.Path) {
			redirect(w, r, "/account", choosePassword)
			return
		}
		h(w, r, s)
	}
}
