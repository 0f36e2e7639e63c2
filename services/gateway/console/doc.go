// Package console is Flotilla's web console, served by the gateway at /:
// server-rendered pages (html/template) with a little hand-written
// JavaScript, every asset embedded, nothing fetched from elsewhere.
//
// The console holds no rights of its own. It reads and changes everything
// through the gateway's REST API, in process and as the logged-in user
// (Deps.API), so the API's authentication and checks are the only ones. A
// login puts the user's API token in an HttpOnly, SameSite=Strict cookie
// (Secure over TLS); every form carries a token derived from it and must
// come from this site. The browser's scripts only read: the live state
// badges, the timeline and the logs follow the API's server-sent event
// streams (/api/v1/events, also narrowed to one instance with id=, and
// /api/v1/instances/{id}/logs with follow=true), which the gateway lets
// the session cookie read (SessionToken). Pages carry a
// Content-Security-Policy that allows no inline script or style.
package console
