package console

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"flotilla.dev/flotilla/api/vocab"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Deps are what the console is built from.
type Deps struct {
	// API serves the gateway's REST API (/api/v1/...): the console reads
	// and changes everything through it, in process, as the logged-in user,
	// so the API's authentication and checks are the only ones.
	API     http.Handler
	Log     *slog.Logger
	Version string
}

// Console is the web console's HTTP handler.
type Console struct {
	api     http.Handler
	log     *slog.Logger
	version string
	pages   map[string]*template.Template
	mux     *http.ServeMux
}

// contentSecurityPolicy allows the console's own scripts, styles and API
// only: no inline script or style, no framing, forms post here only.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// New parses the console's templates and routes its pages.
func New(d Deps) (*Console, error) {
	if d.API == nil || d.Log == nil {
		return nil, errors.New("console: API and Log are required")
	}
	c := &Console{api: d.API, log: d.Log, version: d.Version, pages: map[string]*template.Template{}}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		page := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if page == "layout" || page == "fields" {
			continue
		}
		t, err := template.New(page).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/fields.html", n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", page, err)
		}
		c.pages[page] = t
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	m := http.NewServeMux()
	m.Handle("GET /static/", http.StripPrefix("/static/", cacheFor(http.FileServerFS(static))))
	m.HandleFunc("GET /login", c.loginPage)
	m.HandleFunc("POST /login", c.login)
	m.HandleFunc("POST /logout", c.authed(c.logout))
	m.HandleFunc("GET /{$}", c.authed(c.overview))
	m.HandleFunc("GET /instances", c.authed(c.instances))
	m.HandleFunc("POST /instances/bulk", c.authed(c.bulk))
	m.HandleFunc("GET /instances/upgrade-agents", c.authed(c.upgradeAgentsPage))
	m.HandleFunc("GET /instances/refresh-configuration", c.authed(c.refreshTemplatesPage))
	m.HandleFunc("GET /instances/reprovision", c.authed(c.reprovisionTemplatesPage))
	m.HandleFunc("GET /instances/{id}", c.authed(c.instance))
	m.HandleFunc("GET /instances/{id}/logs.txt", c.authed(c.downloadLogs))
	m.HandleFunc("GET /instances/{id}/{action}", c.authed(c.confirmAction))
	m.HandleFunc("POST /instances/{id}/{action}", c.authed(c.instanceAction))
	m.HandleFunc("POST /instances/{id}/secrets", c.authed(c.addSecret))
	m.HandleFunc("POST /instances/{id}/upgrade-agent", c.authed(c.upgradeAgent))
	m.HandleFunc("POST /instances/{id}/refresh-configuration", c.authed(c.refreshConfiguration))
	m.HandleFunc("GET /rollouts", c.authed(c.rollouts))
	m.HandleFunc("GET /rollouts/{id}", c.authed(c.rollout))
	m.HandleFunc("POST /rollouts/{id}/{verb}", c.authed(c.controlRollout))
	m.HandleFunc("GET /secrets", c.authed(c.fleetSecrets))
	m.HandleFunc("POST /secrets", c.authed(c.setFleetSecret))
	m.HandleFunc("GET /secrets/{name}/delete", c.authed(c.confirmDeleteFleetSecret))
	m.HandleFunc("POST /secrets/{name}/delete", c.authed(c.deleteFleetSecret))
	m.HandleFunc("GET /networks", c.authed(c.networks))
	m.HandleFunc("GET /templates", c.authed(c.templates))
	m.HandleFunc("GET /cloud-accounts", c.authed(c.cloudAccounts))
	m.HandleFunc("POST /cloud-accounts/{id}/verify", c.authed(c.verifyCloudAccount))
	m.HandleFunc("GET /cluster", c.authed(c.cluster))
	m.HandleFunc("GET /users", c.authed(c.users))
	m.HandleFunc("GET /users/{id}/reset-password", c.authed(c.confirmReset))
	m.HandleFunc("POST /users/{id}/reset-password", c.authed(c.resetPassword))
	m.HandleFunc("GET /tokens", c.authed(c.tokens))
	for _, res := range []resource{instanceResource, networkResource, templateResource, cloudAccountResource, userResource, tokenResource} {
		c.handleForms(m, res)
	}
	m.HandleFunc("GET /audit", c.authed(c.audit))
	m.HandleFunc("GET /account", c.authed(c.account))
	m.HandleFunc("POST /account", c.authed(c.account))
	m.HandleFunc("GET /ca.pem", c.authed(c.caCertificate))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, nil, http.StatusNotFound, "error", "Not found", errorData{Message: "There is no page at " + r.URL.Path + "."})
	})
	c.mux = m
	return c, nil
}

// handleForms routes res's forms under its list path: new, edit (unless
// it is made only), and when it can be removed the confirmation and the
// removal.
func (c *Console) handleForms(m *http.ServeMux, res resource) {
	form := c.authed(func(w http.ResponseWriter, r *http.Request, s *session) { c.editForm(w, r, s, res) })
	m.HandleFunc("GET "+res.listPath+"/new", form)
	m.HandleFunc("POST "+res.listPath+"/new", form)
	if !res.createOnly {
		m.HandleFunc("GET "+res.listPath+"/{id}/edit", form)
		m.HandleFunc("POST "+res.listPath+"/{id}/edit", form)
	}
	if res.remove.verb != "" {
		m.HandleFunc("GET "+res.listPath+"/{id}/delete", c.authed(func(w http.ResponseWriter, r *http.Request, s *session) { c.confirmDelete(w, r, s, res) }))
		m.HandleFunc("POST "+res.listPath+"/{id}/delete", c.authed(func(w http.ResponseWriter, r *http.Request, s *session) { c.deleteResource(w, r, s, res) }))
	}
}

// ServeHTTP serves the console's pages and files, with headers that keep
// them out of frames and caches and confine scripts to the console's own.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

// cacheFor lets browsers keep the static files an hour (pages name them
// with the version, so an upgrade loads the new ones).
func cacheFor(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// view is what the layout renders around a page.
type view struct {
	Title   string
	Page    string
	User    string
	Role    string
	CSRF    string
	Flash   string
	Version string
	Nav     []navItem
	Data    any
}

// Can reports whether the logged-in user's role is at least role: the
// pages show only what the API would let them do (the API still checks).
func (v view) Can(role string) bool { return vocab.Role(v.Role).AtLeast(vocab.Role(role)) }

// navItem is one entry of the navigation: Key is the first segment of
// the paths it covers ("" for the overview); Admin entries are shown to
// admins only.
type navItem struct {
	Key, Label, Href string
	Admin, Current   bool
}

// nav is the console's navigation, in order.
var nav = []navItem{
	{Key: "", Label: "Overview", Href: "/"},
	{Key: "instances", Label: "Instances", Href: "/instances"},
	{Key: "networks", Label: "Networks", Href: "/networks"},
	{Key: "templates", Label: "Templates", Href: "/templates"},
	{Key: "rollouts", Label: "Rollouts", Href: "/rollouts"},
	{Key: "secrets", Label: "Secrets", Href: "/secrets"},
	{Key: "cloud-accounts", Label: "Cloud accounts", Href: "/cloud-accounts"},
	{Key: "cluster", Label: "Cluster", Href: "/cluster"},
	{Key: "users", Label: "Users", Href: "/users", Admin: true},
	{Key: "audit", Label: "Audit", Href: "/audit", Admin: true},
	{Key: "tokens", Label: "API tokens", Href: "/tokens"},
}

// render writes page inside the layout with status. s is nil on pages
// without a session.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, status int, page, title string, data any) {
	t, ok := c.pages[page]
	if !ok {
		c.log.Error("console: no such page", "page", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	v := view{Title: title, Page: page, Version: c.version, Data: data, Flash: takeFlash(w, r)}
	if s != nil {
		v.User, v.Role, v.CSRF = s.me.GetUsername(), s.me.GetRole(), s.csrf
		cur, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		for _, n := range nav {
			if n.Admin && !v.Can(string(vocab.RoleAdmin)) {
				continue
			}
			n.Current = n.Key == cur
			v.Nav = append(v.Nav, n)
		}
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorData is the error page's.
type errorData struct {
	Message string
	Back    string
}

// fail shows what went wrong with a request: an ended session goes back
// to the login page; an API error shows its message with its status;
// anything else is logged and shown as an internal error.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		if ae.Reason == reasonPasswordChangeRequired {
			redirect(w, r, "/account", choosePassword)
			return
		}
		if ae.Status == http.StatusUnauthorized {
			clearCookie(w, r, sessionCookie)
			next := r.URL.RequestURI()
			if r.Method != http.MethodGet {
				next = "/"
			}
			http.Redirect(w, r, "/login?expired=1&next="+url.QueryEscape(next), http.StatusSeeOther)
			return
		}
		title := http.StatusText(ae.Status)
		c.render(w, r, s, ae.Status, "error", title, errorData{Message: ae.Message})
		return
	}
	c.log.Error("console", "path", r.URL.Path, "err", err)
	c.render(w, r, s, http.StatusInternalServerError, "error", "Internal error", errorData{Message: "Something went wrong on the server; its log says what."})
}

// redirect sends the browser to path after a change, with a message.
func redirect(w http.ResponseWriter, r *http.Request, path, flash string) {
	if flash != "" {
		setFlash(w, r, flash)
	}
	http.Redirect(w, r, path, http.StatusSeeOther)
}
