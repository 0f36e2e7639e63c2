package console

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
)

// auditPageSize is how many records the audit page shows at once.
const auditPageSize = "100"

// auditFilter is the audit page's filter, as its query names it: user
// and target as the API takes them, from and to as a datetime-local
// input sends them (UTC).
type auditFilter struct {
	User, Target, From, To string
}

// auditData is the audit page's.
type auditData struct {
	Filter  auditFilter
	Records []*auditv1.AuditRecord
	// Err is a filter the page or the API refused, shown at ErrField.
	Err      string
	ErrField string
	// FirstURL reads the newest page again (set on a later page); NextURL
	// reads the next one.
	FirstURL, NextURL string
}

// query is the page's query for the filter on the page token page.
func (f auditFilter) query(page string) string {
	v := url.Values{}
	for k, x := range map[string]string{"user": f.User, "target": f.Target, "from": f.From, "to": f.To, "page": page} {
		if x != "" {
			v.Set(k, x)
		}
	}
	return "/audit?" + v.Encode()
}

// auditTimeLayouts are the times the filter takes: a datetime-local
// input's, with or without seconds, or RFC 3339.
var auditTimeLayouts = []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.RFC3339}

// apiTime turns a filter's time (UTC unless it says otherwise) into the
// API's RFC 3339; ok is false for one it cannot read.
func apiTime(s string) (string, bool) {
	if s == "" {
		return "", true
	}
	for _, l := range auditTimeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC().Format(time.RFC3339), true
		}
	}
	return "", false
}

// audit serves GET /audit: the audit trail, newest first, filtered by
// user, target and time, a page at a time (admins; the API refuses anyone
// else).
func (c *Console) audit(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := auditData{Filter: auditFilter{User: strings.TrimSpace(q.Get("user")), Target: strings.TrimSpace(q.Get("target")),
		From: q.Get("from"), To: q.Get("to")}}
	if q.Get("page") != "" {
		d.FirstURL = d.Filter.query("")
	}
	api := url.Values{"pageSize": {auditPageSize}, "user": {d.Filter.User}, "target": {d.Filter.Target}, "pageToken": {q.Get("page")}}
	for _, t := range []struct{ field, param, value string }{{"from", "since", d.Filter.From}, {"to", "until", d.Filter.To}} {
		v, ok := apiTime(t.value)
		if !ok {
			d.Err, d.ErrField = t.field+": "+t.value+" is not a time such as 2025-01-31T13:45", t.field
			c.render(w, r, s, http.StatusBadRequest, "audit", "Audit", d)
			return
		}
		api.Set(t.param, v)
	}
	resp := &auditv1.ListAuditRecordsResponse{}
	if err := s.api.get("/api/v1/audit?"+api.Encode(), resp); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			c.fail(w, r, s, err)
			return
		}
		d.Err, d.ErrField = ae.Message, map[string]string{"since": "from", "until": "to", "user": "user", "target": "target"}[ae.Field]
		c.render(w, r, s, http.StatusBadRequest, "audit", "Audit", d)
		return
	}
	d.Records = resp.GetRecords()
	if next := resp.GetNextPageToken(); next != "" {
		d.NextURL = d.Filter.query(next)
	}
	c.render(w, r, s, http.StatusOK, "audit", "Audit", d)
}
