package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// apiEvent is an event as the API answers it; Data is the instance after
// the change (the fields the console shows).
type apiEvent struct {
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	EntityID string    `json:"entityId"`
	Actor    string    `json:"actor"`
	Time     time.Time `json:"time"`
	Data     struct {
		Name          string `json:"name"`
		State         string `json:"state"`
		StateDetail   string `json:"stateDetail"`
		AgentProgress string `json:"agentProgress"`
	} `json:"data"`
}

// Verb is the event's verb ("provision-requested").
func (e apiEvent) Verb() string {
	_, v, _ := strings.Cut(e.Type, ".")
	return v
}

// Detail is what the event says beyond the state: the agent's report for
// a progress event ("running-setup/succeeded"), else the step.
func (e apiEvent) Detail() string {
	if e.Verb() == string(vocab.VerbProgress) && e.Data.AgentProgress != "" {
		return e.Data.AgentProgress
	}
	return e.Data.StateDetail
}

// Ago says how long ago it happened.
func (e apiEvent) Ago() string { return sinceText(time.Since(e.Time)) }

// ISO is its time for a <time> element.
func (e apiEvent) ISO() string { return e.Time.UTC().Format(time.RFC3339) }

// events reads the newest n events at path, newest first.
func (s *session) events(path string, n int) ([]apiEvent, error) {
	var resp struct {
		Events []apiEvent `json:"events"`
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	if err := s.api.get(path+sep+"limit="+strconv.Itoa(n), &resp); err != nil {
		return nil, err
	}
	slices.Reverse(resp.Events)
	return resp.Events, nil
}

// instancePage reads page p (from 1) of the instances f lets through, by
// name, instancesPerPage to a page.
func (s *session) instancePage(f instanceFilter, p int) (*inventoryv1.ListInstancesResponse, error) {
	q := f.query()
	q.Set("orderBy", "name")
	q.Set("pageSize", strconv.Itoa(instancesPerPage))
	q.Set("skip", strconv.Itoa((p-1)*instancesPerPage))
	resp := &inventoryv1.ListInstancesResponse{}
	if err := s.api.get("/api/v1/instances?"+q.Encode(), resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// stateCount is how many instances are in one state.
type stateCount struct {
	State string
	N     int64
}

// overviewData is the overview page's.
type overviewData struct {
	Total           int64
	States          []stateCount
	AgentsConnected int64
	AgentsExpected  int64
	// AgentsBehind counts the connected agents at another version than
	// the manager's.
	AgentsBehind int64
	// Failures are failed instances by name, the first of FailedCount;
	// MoreFailures says there are more than those.
	Failures     []*systemv1.FailedInstance
	FailedCount  int64
	MoreFailures bool
	// Certificates are the instances whose node certificate ends soon,
	// the first of CertificatesCount.
	Certificates      []*systemv1.CertificateEnding
	CertificatesCount int64
	// CertificateWindow is how far ahead the overview looks ("14 days").
	CertificateWindow string
	// Rollouts are the open ones: stopped (to see to), paused, running.
	Rollouts []rolloutRow
	// Building: the gateway is still building the fleet overview (it just
	// started); the counts are not shown.
	Building bool
	Events   []apiEvent
	Status   *systemv1.Status
}

// overview serves GET /: instances by state, agents, failures (the fleet
// overview the gateway keeps, GET /api/v1/overview), recent events.
func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	ov := &systemv1.Overview{}
	d := overviewData{Status: &systemv1.Status{}}
	switch err := s.api.get("/api/v1/overview", ov); {
	case unavailable(err):
		d.Building = true
	case err != nil:
		c.fail(w, r, s, err)
		return
	}
	d.Total, d.AgentsConnected, d.AgentsExpected = ov.GetInstances(), ov.GetAgentsConnected(), ov.GetAgentsExpected()
	for v, n := range ov.GetAgentVersions() {
		if v != c.version {
			d.AgentsBehind += n
		}
	}
	d.Failures, d.FailedCount = ov.GetFailures(), ov.GetStates()[string(vocab.StateFailed)]
	d.MoreFailures = d.FailedCount > int64(len(d.Failures))
	d.Certificates, d.CertificatesCount = ov.GetCertificatesEnding(), ov.GetCertificatesEndingCount()
	d.CertificateWindow = window(ov.GetCertificateWarning().AsDuration())
	for _, st := range vocab.States {
		if st != vocab.StateDeleted {
			d.States = append(d.States, stateCount{State: string(st), N: ov.GetStates()[string(st)]})
		}
	}
	var err error
	if d.Rollouts, err = openRollouts(s); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Events, err = s.events("/api/v1/events", 15); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if err := s.api.get("/api/v1/status", d.Status); err != nil {
		if !unavailable(err) {
			c.fail(w, r, s, err)
			return
		}
		d.Status.Status = "degraded"
	}
	c.render(w, r, s, http.StatusOK, "overview", "Overview", d)
}

// unavailable says err is the API's 503: try again.
func unavailable(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable
}

// instanceFilter is the instances page's search: the API's filters of
// GET /api/v1/instances.
type instanceFilter struct {
	Q, State, Kind, Network, Template string
}

// query is f as the API's query parameters.
func (f instanceFilter) query() url.Values {
	v := url.Values{}
	for k, x := range map[string]string{"query": f.Q, "state": f.State, "kind": f.Kind, "networkId": f.Network, "templateId": f.Template} {
		if x != "" {
			v.Set(k, x)
		}
	}
	return v
}

// instanceRow is one line of the instances page.
type instanceRow struct {
	In                *inventoryv1.Instance
	Network, Template string
	// TemplateVersion is the template's version now.
	TemplateVersion int64
}

// instancesData is the instances page's.
type instancesData struct {
	Filter              instanceFilter
	Rows                []instanceRow
	Total, Matched      int
	States, Kinds       []string
	Networks, Templates []option
	Page, Pages         int
	PrevURL, NextURL    string
}

// instancesPerPage is how many rows the instances page shows at once;
// maxInstancePage is the last page it reaches (the API skips at most a
// million instances).
const (
	instancesPerPage = 100
	maxInstancePage  = 10_000
)

// instances serves GET /instances: search, filters, live states, bulk actions.
func (c *Console) instances(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := instancesData{Filter: instanceFilter{Q: strings.TrimSpace(q.Get("q")), State: q.Get("state"), Kind: q.Get("kind"),
		Network: q.Get("network"), Template: q.Get("template")}}
	// One page of the filtered list, by name, from the API; and how many
	// instances there are in all when a filter leaves some out (below).
	d.Page, _ = strconv.Atoi(q.Get("page"))
	d.Page = min(max(d.Page, 1), maxInstancePage)
	ins, err := s.instancePage(d.Filter, d.Page)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Matched, d.Total = int(ins.GetTotalSize()), int(ins.GetTotalSize())
	d.Pages = max(1, (d.Matched+instancesPerPage-1)/instancesPerPage)
	if d.Page > d.Pages { // past the last page: show the last
		d.Page = d.Pages
		if ins, err = s.instancePage(d.Filter, d.Page); err != nil {
			c.fail(w, r, s, err)
			return
		}
	}
	if len(d.Filter.query()) > 0 {
		// How many in all, from the fleet overview the gateway keeps: a
		// count of the whole table would cost more than the filtered page
		// at scale. The overview trails a change by its event's delivery,
		// and while it is being built the page shows the matches alone.
		ov := &systemv1.Overview{}
		switch err := s.api.get("/api/v1/overview", ov); {
		case unavailable(err):
		case err != nil:
			c.fail(w, r, s, err)
			return
		default:
			d.Total = max(int(ov.GetInstances()), d.Matched)
		}
	}
	nets, err := listAll(s.api, "/api/v1/networks", (*inventoryv1.ListNetworksResponse).GetNetworks)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	tpls, err := listAll(s.api, "/api/v1/templates", (*inventoryv1.ListTemplatesResponse).GetTemplates)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	netName, tplOf := map[string]string{}, map[string]*inventoryv1.Template{}
	for _, n := range nets {
		netName[n.GetId()] = n.GetName()
		d.Networks = append(d.Networks, option{Value: n.GetId(), Label: n.GetName()})
	}
	for _, t := range tpls {
		tplOf[t.GetId()] = t
		d.Templates = append(d.Templates, option{Value: t.GetId(), Label: t.GetName()})
	}
	for _, st := range vocab.States {
		if st != vocab.StateDeleted {
			d.States = append(d.States, string(st))
		}
	}
	for _, k := range vocab.InstanceKinds {
		d.Kinds = append(d.Kinds, string(k))
	}
	for _, in := range ins.GetInstances() {
		t := tplOf[in.GetTemplateId()]
		d.Rows = append(d.Rows, instanceRow{In: in, Network: netName[in.GetNetworkId()], Template: t.GetName(), TemplateVersion: t.GetVersion()})
	}
	pageURL := func(p int) string {
		v := url.Values{}
		for k, x := range q {
			v[k] = x
		}
		v.Set("page", strconv.Itoa(p))
		return "/instances?" + v.Encode()
	}
	if d.Page > 1 {
		d.PrevURL = pageURL(d.Page - 1)
	}
	if d.Page < d.Pages {
		d.NextURL = pageURL(d.Page + 1)
	}
	c.render(w, r, s, http.StatusOK, "instances", "Instances", d)
}

// consequence is what an action does to an instance, in words.
type consequence struct {
	Action   string
	Button   string
	Does     string
	Destroys []string
	Keeps    []string
	// Danger actions destroy something; TypeName asks for the instance's
	// name before a delete.
	Danger, TypeName bool
	// Forceable: the delete failed before (the cloud did not destroy
	// something), and may be forced.
	Forceable bool
}

// consequences names what action does to in: what it destroys and keeps.
func consequences(in *inventoryv1.Instance, action vocab.Action, secrets []string) consequence {
	disk := "its data disk"
	if id := in.GetDataDisk().GetId(); id != "" {
		disk = fmt.Sprintf("its data disk %s (%d GiB)", id, in.GetDataDisk().GetSizeGb())
	}
	vm := "its VM"
	if in.GetVmId() != "" {
		vm = "its VM " + in.GetVmId()
	}
	c := consequence{Action: string(action)}
	switch action {
	case vocab.ActionProvision:
		c.Button, c.Does = "Provision", "launches a VM, attaches "+disk+" (allocated if new), and installs and starts the node software."
	case vocab.ActionDeprovision:
		c.Button, c.Does, c.Danger = "Deprovision", "stops the instance.", true
		c.Destroys = []string{vm + " and everything on its system disk"}
		c.Keeps = []string{disk + " (billed as storage)", "its settings, secrets and history"}
	case vocab.ActionReprovision:
		c.Button, c.Does, c.Danger = "Reprovision", "replaces the VM with a new one on the same data disk.", true
		c.Destroys = []string{vm + " and everything on its system disk"}
		c.Keeps = []string{disk, "its settings, secrets and history"}
	case vocab.ActionDelete:
		c.Button, c.Does, c.Danger, c.TypeName = "Delete", "removes the instance for good.", true, true
		if in.GetVmId() != "" {
			c.Destroys = append(c.Destroys, vm)
		}
		c.Destroys = append(c.Destroys, disk+" and all the data on it")
		if len(secrets) > 0 {
			c.Destroys = append(c.Destroys, "its secrets: "+strings.Join(secrets, ", "))
		}
		c.Keeps = []string{"its history (the timeline of its events)"}
		c.Forceable = vocab.State(in.GetState()) == vocab.StateFailed && vocab.Desired(in.GetDesiredState()) == vocab.DesiredDeleted
	}
	return c
}

// instanceData is the instance page's.
type instanceData struct {
	In       *inventoryv1.Instance
	Network  *inventoryv1.Network
	Template *inventoryv1.Template
	Secrets  []*secretsv1.Secret
	Events   []apiEvent
	Logs     []*inventoryv1.InstanceLogLine
	Actions  []consequence
}

// instance serves GET /instances/{id}: the instance's dashboard.
func (c *Console) instance(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	d := instanceData{In: &inventoryv1.Instance{}, Network: &inventoryv1.Network{}, Template: &inventoryv1.Template{}}
	if err := s.api.get("/api/v1/instances/"+id, d.In); err != nil {
		c.fail(w, r, s, err)
		return
	}
	// The network and template may be unreadable; the page shows their ids.
	_ = s.api.get("/api/v1/networks/"+url.PathEscape(d.In.GetNetworkId()), d.Network)
	_ = s.api.get("/api/v1/templates/"+url.PathEscape(d.In.GetTemplateId()), d.Template)
	sec := &secretsv1.ListSecretsResponse{}
	if err := s.api.get("/api/v1/instances/"+id+"/secrets", sec); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Secrets = sec.GetSecrets()
	var err error
	if d.Events, err = s.events("/api/v1/events?id="+id, 100); err != nil {
		c.fail(w, r, s, err)
		return
	}
	logs := &inventoryv1.ListInstanceLogsResponse{}
	if err := s.api.get("/api/v1/instances/"+id+"/logs?order=desc&pageSize=100", logs); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Logs = logs.GetLines()
	slices.Reverse(d.Logs)
	for _, a := range vocab.Actions {
		d.Actions = append(d.Actions, consequences(d.In, a, nil))
	}
	c.render(w, r, s, http.StatusOK, "instance", d.In.GetName(), d)
}

// confirmData is the confirmation page's.
type confirmData struct {
	In    *inventoryv1.Instance
	C     consequence
	Error string
}

// secretNames lists an instance's secrets' names.
func (s *session) secretNames(id string) ([]string, error) {
	sec := &secretsv1.ListSecretsResponse{}
	if err := s.api.get("/api/v1/instances/"+url.PathEscape(id)+"/secrets", sec); err != nil {
		return nil, err
	}
	var names []string
	for _, x := range sec.GetSecrets() {
		names = append(names, x.GetName())
	}
	return names, nil
}

// confirmAction serves GET /instances/{id}/{action}: what the action will
// destroy, and the button that does it.
func (c *Console) confirmAction(w http.ResponseWriter, r *http.Request, s *session) {
	action := vocab.Action(r.PathValue("action"))
	if !action.Valid() {
		c.render(w, r, s, http.StatusNotFound, "error", "Not found", errorData{Message: "There is no page at " + r.URL.Path + "."})
		return
	}
	in := &inventoryv1.Instance{}
	if err := s.api.get("/api/v1/instances/"+url.PathEscape(r.PathValue("id")), in); err != nil {
		c.fail(w, r, s, err)
		return
	}
	names, err := s.secretNames(in.GetId())
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "confirm", fmt.Sprintf("%s %s?", consequences(in, action, nil).Button, in.GetName()),
		confirmData{In: in, C: consequences(in, action, names)})
}

// apply asks the API for a lifecycle action on in; force makes a delete
// forced.
func (s *session) apply(in *inventoryv1.Instance, action vocab.Action, force bool) error {
	path := "/api/v1/instances/" + url.PathEscape(in.GetId())
	if action == vocab.ActionDelete {
		q := url.Values{"version": {strconv.FormatInt(in.GetVersion(), 10)}}
		if force {
			q.Set("force", "true")
		}
		return s.api.do(http.MethodDelete, path+"?"+q.Encode(), nil, nil)
	}
	return s.api.do(http.MethodPost, path+":"+string(action), struct{}{}, nil)
}

// instanceAction serves POST /instances/{id}/{action}: provision,
// deprovision, reprovision or delete (the confirmation names the instance).
func (c *Console) instanceAction(w http.ResponseWriter, r *http.Request, s *session) {
	action := vocab.Action(r.PathValue("action"))
	if !action.Valid() {
		c.render(w, r, s, http.StatusNotFound, "error", "Not found", errorData{Message: "There is no such action."})
		return
	}
	in := &inventoryv1.Instance{}
	if err := s.api.get("/api/v1/instances/"+url.PathEscape(r.PathValue("id")), in); err != nil {
		c.fail(w, r, s, err)
		return
	}
	page := "/instances/" + url.PathEscape(in.GetId())
	if action == vocab.ActionDelete && r.PostFormValue("confirmName") != in.GetName() {
		names, _ := s.secretNames(in.GetId())
		c.render(w, r, s, http.StatusBadRequest, "confirm", "Delete "+in.GetName()+"?", confirmData{In: in, C: consequences(in, action, names),
			Error: "Type the instance's name, " + in.GetName() + ", to delete it."})
		return
	}
	if v := r.PostFormValue("version"); v != "" && action == vocab.ActionDelete {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			in.Version = n
		}
	}
	force := action == vocab.ActionDelete && r.PostFormValue("force") == "true"
	if err := s.apply(in, action, force); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
			redirect(w, r, page, fmt.Sprintf("%s %s: %s", consequences(in, action, nil).Button, in.GetName(), ae.Message))
			return
		}
		c.fail(w, r, s, err)
		return
	}
	if action == vocab.ActionDelete {
		if force {
			redirect(w, r, "/instances", fmt.Sprintf("%s is being deleted, forced: what the cloud does not destroy is named on its deleted event.", in.GetName()))
			return
		}
		redirect(w, r, "/instances", fmt.Sprintf("%s is being deleted.", in.GetName()))
		return
	}
	redirect(w, r, page, fmt.Sprintf("%s: %s requested.", in.GetName(), action))
}

// upgradeAgent serves POST /instances/{id}/upgrade-agent: the instance's
// agent replaces itself with the manager's version.
func (c *Console) upgradeAgent(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	in := &inventoryv1.Instance{}
	err := s.api.do(http.MethodPost, "/api/v1/instances/"+id+":upgrade-agent", struct{}{}, in)
	c.done(w, r, s, err, "/instances/"+id,
		fmt.Sprintf("%s: the agent upgrades from version %s to %s; the node software restarts.", in.GetName(), in.GetAgent().GetVersion(), c.version),
		"The agent was not upgraded")
}

// refreshConfiguration serves POST /instances/{id}/refresh-configuration:
// the running instance's agent writes its template's files and
// environment again, secrets read anew, and restarts the node software.
func (c *Console) refreshConfiguration(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	in := &inventoryv1.Instance{}
	err := s.api.do(http.MethodPost, "/api/v1/instances/"+id+":refresh-configuration", struct{}{}, in)
	c.done(w, r, s, err, "/instances/"+id,
		in.GetName()+": the agent writes the template's files and environment again and restarts the node software; the timeline shows how it went.",
		"The configuration was not refreshed")
}

// bulkData is the bulk confirmation page's.
type bulkData struct {
	Action    consequence
	Instances []*inventoryv1.Instance
	Effects   []consequence
}

// bulk serves POST /instances/bulk: first a confirmation naming what each
// instance loses, then (confirm=yes) the action on each, reported in one
// message. The agents' actions (upgrade-agent, refresh-configuration) are
// agentAction's.
func (c *Console) bulk(w http.ResponseWriter, r *http.Request, s *session) {
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, s, err)
		return
	}
	action := vocab.Action(r.PostFormValue("action"))
	ids := r.PostForm["id"]
	_, agents := rolloutActions[string(action)]
	if (!action.Valid() && !agents) || len(ids) == 0 {
		redirect(w, r, "/instances", "Choose an action and at least one instance.")
		return
	}
	var ins []*inventoryv1.Instance
	for _, id := range ids {
		in := &inventoryv1.Instance{}
		if err := s.api.get("/api/v1/instances/"+url.PathEscape(id), in); err != nil {
			c.fail(w, r, s, err)
			return
		}
		ins = append(ins, in)
	}
	if agents {
		c.agentAction(w, r, s, string(action), ins)
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		d := bulkData{Action: consequences(&inventoryv1.Instance{}, action, nil), Instances: ins}
		for _, in := range ins {
			d.Effects = append(d.Effects, consequences(in, action, nil))
		}
		c.render(w, r, s, http.StatusOK, "bulk", fmt.Sprintf("%s %d instances?", d.Action.Button, len(ins)), d)
		return
	}
	var done, failed []string
	for _, in := range ins {
		if err := s.apply(in, action, false); err != nil {
			failed = append(failed, in.GetName()+" ("+err.Error()+")")
			continue
		}
		done = append(done, in.GetName())
	}
	msg := fmt.Sprintf("%s requested for %d instances", action, len(done))
	if len(done) > 0 {
		msg += ": " + strings.Join(done, ", ")
	}
	msg += "."
	if len(failed) > 0 {
		msg += " Refused: " + strings.Join(failed, "; ") + "."
	}
	redirect(w, r, "/instances", msg)
}

// downloadLogs serves GET /instances/{id}/logs.txt: every line the log
// stream keeps for the instance, oldest first, as text.
func (c *Console) downloadLogs(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	in := &inventoryv1.Instance{}
	if err := s.api.get("/api/v1/instances/"+id, in); err != nil {
		c.fail(w, r, s, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-logs.txt"`, in.GetName()))
	token := ""
	for range 100000 {
		page := &inventoryv1.ListInstanceLogsResponse{}
		if err := s.api.get("/api/v1/instances/"+id+"/logs?pageSize=5000&pageToken="+url.QueryEscape(token), page); err != nil {
			c.log.Warn("console: log download cut short", "instance", in.GetId(), "err", err)
			return
		}
		for _, l := range page.GetLines() {
			if _, err := fmt.Fprintf(w, "%s %-5s %s\n", l.GetTime().AsTime().UTC().Format(time.RFC3339Nano), vocab.LogSource(l.GetSource(), l.GetStderr()), l.GetText()); err != nil {
				return
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return
		}
	}
}

// addSecret serves POST /instances/{id}/secrets: stores a secret for the
// instance's agent. The value goes to the API and is never shown.
func (c *Console) addSecret(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	page := "/instances/" + url.PathEscape(id) + "#secrets"
	name := strings.TrimSpace(r.PostFormValue("name"))
	err := s.api.do(http.MethodPost, "/api/v1/instances/"+url.PathEscape(id)+"/secrets",
		&secretsv1.CreateSecretRequest{InstanceId: id, Name: name, Value: r.PostFormValue("value"), SecretsManagerId: strings.TrimSpace(r.PostFormValue("secretsManagerId"))}, nil)
	c.done(w, r, s, err, page, "The secret "+name+" is stored.", "The secret was not stored")
}

// networks serves GET /networks.
func (c *Console) networks(w http.ResponseWriter, r *http.Request, s *session) {
	listPage(c, w, r, s, "/api/v1/networks", (*inventoryv1.ListNetworksResponse).GetNetworks, "networks", "Networks")
}

// templates serves GET /templates.
func (c *Console) templates(w http.ResponseWriter, r *http.Request, s *session) {
	listPage(c, w, r, s, "/api/v1/templates", (*inventoryv1.ListTemplatesResponse).GetTemplates, "templates", "Templates")
}

// listPage renders the page name with every item of the list endpoint path.
func listPage[R any, P page[R], T any](c *Console, w http.ResponseWriter, r *http.Request, s *session, path string, items func(P) []T, name, title string) {
	all, err := listAll(s.api, path, items)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, name, title, all)
}

// deleteData is a confirmation that removes or resets a record: "Delete
// the network lab?", what it does, and the button.
type deleteData struct {
	Verb, Noun, Name, Does      string
	ID, Version, Action, Cancel string
}

// confirmDelete serves GET {list path}/{id}/delete: what deleting (or
// revoking) the record does, named, and the button.
func (c *Console) confirmDelete(w http.ResponseWriter, r *http.Request, s *session, res resource) {
	rec, err := res.get(s, r.PathValue("id"))
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	f := &form{}
	_ = f.fill(rec)
	d := deleteData{Verb: res.remove.verb, Noun: res.noun, Name: res.nameOf(rec), Does: res.remove.does, ID: r.PathValue("id"), Version: f.Version,
		Action: res.listPath + "/" + url.PathEscape(r.PathValue("id")) + "/delete", Cancel: res.listPath}
	c.render(w, r, s, http.StatusOK, "delete", d.Verb+" "+d.Name+"?", d)
}

// deleteResource serves POST {list path}/{id}/delete.
func (c *Console) deleteResource(w http.ResponseWriter, r *http.Request, s *session, res resource) {
	path := res.apiPath + "/" + url.PathEscape(r.PathValue("id"))
	if v := r.PostFormValue("version"); v != "" {
		path += "?version=" + url.QueryEscape(v)
	}
	err := s.api.do(http.MethodDelete, path, nil, nil)
	c.done(w, r, s, err, res.listPath, fmt.Sprintf("The %s %s is %s.", res.noun, r.PostFormValue("name"), res.remove.done),
		fmt.Sprintf("The %s %s was not %s", res.noun, r.PostFormValue("name"), res.remove.done))
}

// done ends a change a form asked for: on success the browser goes to
// page with ok; an API refusal goes there with refused and the API's
// reason; an ended session or a failure is c.fail's.
func (c *Console) done(w http.ResponseWriter, r *http.Request, s *session, err error, page, ok, refused string) {
	var ae *apiError
	switch {
	case err == nil:
		redirect(w, r, page, ok)
	case errors.As(err, &ae) && ae.Status != http.StatusUnauthorized && ae.Reason != reasonPasswordChangeRequired:
		redirect(w, r, page, refused+": "+ae.Message)
	default:
		c.fail(w, r, s, err)
	}
}

// cluster serves GET /cluster: the managers, brokers, streams and databases.
func (c *Console) cluster(w http.ResponseWriter, r *http.Request, s *session) {
	cl := &systemv1.Cluster{}
	if err := s.api.get("/api/v1/cluster", cl); err != nil {
		c.fail(w, r, s, err)
		return
	}
	hosts := map[string]bool{}
	for _, m := range cl.GetManagers() {
		hosts[m.GetHost()] = true
	}
	c.render(w, r, s, http.StatusOK, "cluster", "Cluster", struct {
		C     *systemv1.Cluster
		Hosts int
	}{cl, len(hosts)})
}

// caCertificate serves GET /ca.pem: the fleet CA certificate as a file.
func (c *Console) caCertificate(w http.ResponseWriter, r *http.Request, s *session) {
	ca := &cav1.CACertificate{}
	if err := s.api.get("/api/v1/ca", ca); err != nil {
		c.fail(w, r, s, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", `attachment; filename="flotilla-ca.pem"`)
	_, _ = w.Write([]byte(ca.GetCertificatePem()))
}

// window says a duration in days when it is whole days ("14 days"), else
// as Go does ("36h0m0s"); "14 days" for none (an older gateway's answer).
func window(d time.Duration) string {
	switch {
	case d <= 0:
		return "14 days"
	case d == 24*time.Hour:
		return "1 day"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}
