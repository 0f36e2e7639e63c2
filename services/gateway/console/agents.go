package console

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// The instances list's bulk actions that start a rollout (not
// vocab.Actions, which are asked of every instance at once): the agents'
// commands, and a reprovision one group at a time.
const (
	actionUpgradeAgent         = "upgrade-agent"
	actionRefreshConfiguration = "refresh-configuration"
	actionRollingReprovision   = "rollout-reprovision"
)

// rolloutActions are the bulk actions that start a rollout, and the
// rollout's action of each.
var rolloutActions = map[string]vocab.RolloutAction{
	actionUpgradeAgent:         vocab.RolloutUpgradeAgent,
	actionRefreshConfiguration: vocab.RolloutRefreshConfiguration,
	actionRollingReprovision:   vocab.RolloutReprovision,
}

// agentRow is one instance of an agent action's confirmation: Change is
// what its agent is asked, Why why it is not asked (empty when it is).
type agentRow struct {
	In          *inventoryv1.Instance
	Change, Why string
}

// agentBehind says whether in's agent may be upgraded to version.
func agentBehind(in *inventoryv1.Instance, version string) bool {
	a := in.GetAgent()
	return vocab.AgentUpgradable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), version)
}

// agentActionData is an agent action's confirmation: the action (the bulk
// form's), what it is called and does, the instances chosen, how many of
// their agents are asked, and how many at once by default.
type agentActionData struct {
	Action, Heading, Explain, Button, Empty string
	Rows                                    []agentRow
	Asked, Parallel                         int
}

// upgradeRows says of each instance whether its agent is upgraded to
// version, or why not, as the provisioner decides (vocab.AgentUpgradable).
func upgradeRows(ins []*inventoryv1.Instance, version string) agentActionData {
	d := agentActionData{Action: actionUpgradeAgent, Parallel: 10,
		Explain: "Each agent takes the manager's agent, version " + version + ": it checks the download's SHA-256 and the new binary's version, stops the node software, " +
			"and starts again as the new agent, which starts the node software again (a few seconds without it). The managers roll it out a group at a time: " +
			"each group's agents are waited for until they are connected at " + version + " before the next group is asked, and an upgrade that fails stops the rollout " +
			"(the agent runs on at its version, and says why).",
		Empty: "Every connected agent is at version " + version + "."}
	for _, in := range ins {
		a := in.GetAgent()
		row := agentRow{In: in}
		switch state := vocab.State(in.GetState()); {
		case agentBehind(in, version):
			row.Change = a.GetVersion() + " → " + version
		case (state != vocab.StateRunning && state != vocab.StateFailed) || in.GetVmId() == "":
			row.Why = "the instance is " + string(state) + ": an agent is upgraded on a VM that runs"
		case vocab.AgentStatus(a.GetStatus()) != vocab.AgentConnected || a.GetVmId() != in.GetVmId():
			row.Why = "its agent is not connected"
		default:
			row.Why = "at " + version + " already"
		}
		d.add(row)
	}
	d.Heading = "Upgrade " + counted(d.Asked, "agent") + " to " + version + "?"
	d.Button = "Upgrade " + counted(d.Asked, "agent")
	return d
}

// refreshRows says of each instance whether its configuration is
// refreshed, or why not, as the provisioner decides.
func refreshRows(ins []*inventoryv1.Instance) agentActionData {
	d := agentActionData{Action: actionRefreshConfiguration, Parallel: 1,
		Explain: "Each agent writes its template's file and env actions again, their secrets read anew, and restarts the node software on the same VM (a second or so without it). " +
			"The managers roll it out a group at a time, each group waited for before the next is asked; an agent refuses, changing nothing, when the template's scripts " +
			"or packages are not those its VM's setup ran, and that stops the rollout.",
		Empty: "None of these instances is running."}
	for _, in := range ins {
		a := in.GetAgent()
		row := agentRow{In: in}
		switch {
		case vocab.State(in.GetState()) != vocab.StateRunning:
			row.Why = "the instance is " + in.GetState() + ": a running instance's configuration is refreshed"
		case vocab.AgentStatus(a.GetStatus()) != vocab.AgentConnected || a.GetVmId() != in.GetVmId():
			row.Why = "its agent is not connected"
		default:
			row.Change = "files and environment written, the node software restarted"
		}
		d.add(row)
	}
	d.Heading = "Refresh the configuration of " + counted(d.Asked, "instance") + "?"
	d.Button = "Refresh " + counted(d.Asked, "configuration")
	return d
}

// reprovisionRows says of each instance whether a rollout reprovisions
// it (running: a new VM of its template's version now, versions by
// template id), or why not.
func reprovisionRows(ins []*inventoryv1.Instance, versions map[string]int64) agentActionData {
	d := agentActionData{Action: actionRollingReprovision, Parallel: 1,
		Explain: "Each instance gets a new VM made from its template as it is now, and its data disk moves to it (the old VM is destroyed): its node software " +
			"stops until the new VM runs it. The managers roll it out a group at a time, each group waited for until it runs again before the next is asked; " +
			"an instance that fails stops the rollout.",
		Empty: "Every running instance runs its template's version."}
	for _, in := range ins {
		row := agentRow{In: in}
		if state := vocab.State(in.GetState()); state != vocab.StateRunning {
			row.Why = "the instance is " + string(state) + ": a rollout reprovisions running instances"
		} else if behind := vocab.TemplateBehind(in.GetTemplateVersion(), versions[in.GetTemplateId()]); behind != "" {
			row.Change = "a new VM, its template " + behind
		} else {
			row.Change = fmt.Sprintf("a new VM, its template v%d as now", in.GetTemplateVersion())
		}
		d.add(row)
	}
	d.Heading = "Reprovision " + counted(d.Asked, "instance") + ", a group at a time?"
	d.Button = "Reprovision " + counted(d.Asked, "instance")
	return d
}

func (d *agentActionData) add(row agentRow) {
	if row.Why == "" {
		d.Asked++
	}
	d.Rows = append(d.Rows, row)
}

// upgradeAgentsPage serves GET /instances/upgrade-agents: every instance
// whose agent is behind the manager, to confirm their upgrade (the
// overview's link).
func (c *Console) upgradeAgentsPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.agentActionPage(w, r, s, func(in *inventoryv1.Instance) bool { return agentBehind(in, c.version) },
		func(ins []*inventoryv1.Instance) agentActionData { return upgradeRows(ins, c.version) })
}

// refreshTemplatesPage serves GET /instances/refresh-configuration?template=ID…:
// every instance of those templates, to confirm the refresh of the running
// ones' configuration (the fleet secrets page's link, once a secret they
// read changed).
func (c *Console) refreshTemplatesPage(w http.ResponseWriter, r *http.Request, s *session) {
	tpls := r.URL.Query()["template"]
	c.agentActionPage(w, r, s, func(in *inventoryv1.Instance) bool { return slices.Contains(tpls, in.GetTemplateId()) }, refreshRows)
}

// reprovisionTemplatesPage serves GET /instances/reprovision?template=ID…:
// every running instance of those templates made from an older version of
// its template, to confirm a rollout that reprovisions them (the templates
// page's link).
func (c *Console) reprovisionTemplatesPage(w http.ResponseWriter, r *http.Request, s *session) {
	tpls := r.URL.Query()["template"]
	versions, err := templateVersions(s)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.agentActionPage(w, r, s, func(in *inventoryv1.Instance) bool {
		return slices.Contains(tpls, in.GetTemplateId()) && vocab.State(in.GetState()) == vocab.StateRunning &&
			vocab.TemplateBehind(in.GetTemplateVersion(), versions[in.GetTemplateId()]) != ""
	}, func(ins []*inventoryv1.Instance) agentActionData { return reprovisionRows(ins, versions) })
}

// templateVersions is each template's version now, by id.
func templateVersions(s *session) (map[string]int64, error) {
	tpls, err := listAll(s.api, "/api/v1/templates", (*inventoryv1.ListTemplatesResponse).GetTemplates)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(tpls))
	for _, t := range tpls {
		out[t.GetId()] = t.GetVersion()
	}
	return out, nil
}

// agentActionPage is the confirmation of an agent action (rows) on every
// instance keep lets through.
func (c *Console) agentActionPage(w http.ResponseWriter, r *http.Request, s *session, keep func(*inventoryv1.Instance) bool,
	rows func([]*inventoryv1.Instance) agentActionData) {
	all, err := listAll(s.api, "/api/v1/instances", (*inventoryv1.ListInstancesResponse).GetInstances)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := rows(slices.DeleteFunc(all, func(in *inventoryv1.Instance) bool { return !keep(in) }))
	c.render(w, r, s, http.StatusOK, "agentaction", d.Heading, d)
}

// agentAction is a bulk action that starts a rollout of ins
// (upgrade-agent, refresh-configuration, rollout-reprovision): first the confirmation, which says of each
// instance whether its agent is asked and what, or why not, and how many
// at once; then (confirmed) a rollout of the action to those asked, whose
// page it goes on to.
func (c *Console) agentAction(w http.ResponseWriter, r *http.Request, s *session, action string, ins []*inventoryv1.Instance) {
	var d agentActionData
	switch action {
	case actionUpgradeAgent:
		d = upgradeRows(ins, c.version)
	case actionRollingReprovision:
		versions, err := templateVersions(s)
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		d = reprovisionRows(ins, versions)
	default:
		d = refreshRows(ins)
	}
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, s, http.StatusOK, "agentaction", d.Heading, d)
		return
	}
	req := &inventoryv1.CreateRolloutRequest{Action: string(rolloutActions[action])}
	if p := strings.TrimSpace(r.PostFormValue("parallel")); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil {
			redirect(w, r, "/instances", fmt.Sprintf("At once: %q is not a number of instances.", p))
			return
		}
		req.Parallel = int32(min(max(n, -1), 1000))
	}
	var notAsked []string
	for _, row := range d.Rows {
		if row.Why != "" {
			// Not to be asked as read a moment ago: the provisioner would
			// refuse it, so it is left out of the rollout and said here.
			notAsked = append(notAsked, row.In.GetName()+" ("+row.Why+")")
			continue
		}
		req.InstanceIds = append(req.InstanceIds, row.In.GetId())
	}
	if len(req.InstanceIds) == 0 {
		redirect(w, r, "/instances", "No instance to ask: "+strings.Join(notAsked, "; ")+".")
		return
	}
	ro := &inventoryv1.Rollout{}
	if err := s.api.do(http.MethodPost, "/api/v1/rollouts", req, ro); err != nil {
		c.done(w, r, s, err, "/instances", "", "No rollout started")
		return
	}
	msg := fmt.Sprintf("Rollout %s started: %s, %d at a time.", ro.GetName(), counted(len(ro.GetInstances()), "instance"), ro.GetParallel())
	if len(notAsked) > 0 {
		msg += " Not asked: " + strings.Join(notAsked, "; ") + "."
	}
	redirect(w, r, "/rollouts/"+url.PathEscape(ro.GetId()), msg)
}

// counted says n of noun: "1 agent", "2 agents".
func counted(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
