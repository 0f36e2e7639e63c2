package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
)

// fleetSecretRow is one fleet secret as its page shows it: its templates
// and networks by name (an id the console cannot name, as it is).
type fleetSecretRow struct {
	S                   *secretsv1.FleetSecret
	Templates, Networks []option
}

// fleetSecretsData is the fleet secrets page's: the secrets, and every
// template and network to give one to. With Edit, the form changes that
// secret as shown: its templates and networks checked, over its update
// time.
type fleetSecretsData struct {
	Rows                []fleetSecretRow
	Templates, Networks []option
	Edit                *secretsv1.FleetSecret
}

// fleetSecrets serves GET /secrets: the fleet secrets (names, templates,
// networks, never values) and, for operators, the form that stores one.
func (c *Console) fleetSecrets(w http.ResponseWriter, r *http.Request, s *session) {
	list := &secretsv1.ListFleetSecretsResponse{}
	if err := s.api.get("/api/v1/secrets", list); err != nil {
		c.fail(w, r, s, err)
		return
	}
	tpls, err := listAll(s.api, "/api/v1/templates", (*inventoryv1.ListTemplatesResponse).GetTemplates)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	nets, err := listAll(s.api, "/api/v1/networks", (*inventoryv1.ListNetworksResponse).GetNetworks)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := fleetSecretsData{}
	name := map[string]string{}
	for _, t := range tpls {
		name[t.GetId()] = t.GetName()
		d.Templates = append(d.Templates, option{Value: t.GetId(), Label: t.GetName()})
	}
	for _, n := range nets {
		name[n.GetId()] = n.GetName()
		d.Networks = append(d.Networks, option{Value: n.GetId(), Label: n.GetName()})
	}
	named := func(ids []string) []option {
		var out []option
		for _, id := range ids {
			out = append(out, option{Value: id, Label: name[id]})
		}
		return out
	}
	edit := r.URL.Query().Get("edit")
	for _, sec := range list.GetSecrets() {
		d.Rows = append(d.Rows, fleetSecretRow{S: sec, Templates: named(sec.GetTemplateIds()), Networks: named(sec.GetNetworkIds())})
		if edit != "" && sec.GetName() == edit {
			d.Edit = sec
		}
	}
	if edit != "" && d.Edit == nil {
		c.fail(w, r, s, &apiError{Status: http.StatusNotFound, Reason: "not_found", Message: fmt.Sprintf("There is no fleet secret %s.", edit)})
		return
	}
	c.render(w, r, s, http.StatusOK, "secrets", "Fleet secrets", d)
}

// setFleetSecret serves POST /secrets: stores a fleet secret (or, with no
// value, gives the one stored other templates and networks). The value
// goes to the API and is never shown. With no network chosen, nor "every
// network", a stored secret keeps the networks it has, so a new value
// never widens who reads it. The change form sends the update time of the
// secret it showed: one another changed meanwhile is refused, not written
// over, and the form shown again as the secret is now.
func (c *Console) setFleetSecret(w http.ResponseWriter, r *http.Request, s *session) {
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, s, err)
		return
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" {
		redirect(w, r, "/secrets", "The fleet secret was not stored: name: is required")
		return
	}
	networks := r.PostForm["networkId"]
	if len(networks) == 0 && r.PostFormValue("allNetworks") == "" {
		had := &secretsv1.FleetSecret{}
		var ae *apiError
		if err := s.api.get("/api/v1/secrets/"+url.PathEscape(name), had); err != nil && !(errors.As(err, &ae) && ae.Status == http.StatusNotFound) {
			c.done(w, r, s, err, "/secrets", "", "The fleet secret was not stored")
			return
		}
		networks = had.GetNetworkIds()
	}
	req := &secretsv1.SetFleetSecretRequest{Name: name, Value: r.PostFormValue("value"), TemplateIds: r.PostForm["templateId"], NetworkIds: networks,
		SecretsManagerId: strings.TrimSpace(r.PostFormValue("secretsManagerId"))}
	if v := r.PostFormValue("updateTime"); v != "" {
		read, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			redirect(w, r, "/secrets", "The fleet secret was not stored: updateTime: "+strconv.Quote(v)+" is not a time (RFC 3339)")
			return
		}
		req.IfUpdateTime = timestamppb.New(read)
	}
	err := s.api.do(http.MethodPut, "/api/v1/secrets/"+url.PathEscape(name), req, nil)
	var ae *apiError
	if errors.As(err, &ae) && ae.Reason == reasonVersionMismatch {
		// Overtaken: the form again, with the secret as it is now.
		redirect(w, r, "/secrets?edit="+url.QueryEscape(name)+"#set-h", "The fleet secret was not stored: "+ae.Message+
			" (here it is as it is now; choose again)")
		return
	}
	c.done(w, r, s, err, "/secrets", "The fleet secret "+name+" is stored.", "The fleet secret was not stored")
}

// confirmDeleteFleetSecret serves GET /secrets/{name}/delete.
func (c *Console) confirmDeleteFleetSecret(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("name")
	d := deleteData{Verb: "Delete", Noun: "fleet secret", Name: name,
		Does:   "Its value is gone for good: the agents of its templates' instances (in its networks) can no longer read it, and a setup that uses it fails (an instance's own secret of the name is kept).",
		Action: "/secrets/" + url.PathEscape(name) + "/delete", Cancel: "/secrets"}
	c.render(w, r, s, http.StatusOK, "delete", "Delete "+name+"?", d)
}

// deleteFleetSecret serves POST /secrets/{name}/delete.
func (c *Console) deleteFleetSecret(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("name")
	err := s.api.do(http.MethodDelete, "/api/v1/secrets/"+url.PathEscape(name), nil, nil)
	c.done(w, r, s, err, "/secrets", "The fleet secret "+name+" is deleted.", "The fleet secret was not deleted")
}
