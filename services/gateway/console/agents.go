package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// The instances list's bulk actions that command the selected instances'
// agents (not vocab.Actions: the instances' states do not change).
const (
	actionUpgradeAgent         = "upgrade-agent"
	actionRefreshConfiguration = "refresh-configuration"
)

// agentRow is one instance of an agent action's confirmation: Change is
// what its agent is asked, Why why it is not asked (empty when it is);
// Current, that it is not for it is at the manager's version already.
type agentRow struct {
	In          *inventoryv1.Instance
	Change, Why string
	Current     bool
}

// agentBehind says whether in's agent may be upgraded to version.
func agentBehind(in *inventoryv1.Instance, version string) bool {
	a := in.GetAgent()
	return vocab.AgentUpgradable(vocab.State(in.GetState()), in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), version)
}

// agentActionData is an agent action's confirmation: the action (the bulk
// form's), what it is called and does, the instances chosen, and how many
// of their agents are asked.
type agentActionData struct {
	Action, Heading, Explain, Button, Empty string
	Rows                                    []agentRow
	Asked                                   int
}

// upgradeRows says of each instance whether its agent is upgraded to
// version, or why not, as the provisioner decides (vocab.AgentUpgradable).
func upgradeRows(ins []*inventoryv1.Instance, version string) agentActionData {
	d := agentActionData{Action: actionUpgradeAgent,
		Explain: "Each agent takes the manager's agent, version " + version + ": it checks the download's SHA-256 and the new binary's version, stops the node software, " +
			"and starts again as the new agent, which starts the node software again (a few seconds without it). An agent whose upgrade fails runs on at its version, " +
			"and its instance's events say why. The instances list shows each agent's version as it comes back.",
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
			row.Why, row.Current = "at "+version+" already", true
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
	d := agentActionData{Action: actionRefreshConfiguration,
		Explain: "Each agent writes its template's file and env actions again, their secrets read anew, and restarts the node software on the same VM (a second or so without it). " +
			"An agent refuses, changing nothing, when the template's scripts or packages are not those its VM's setup ran; each instance's timeline says how it went.",
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

// agentAction is a bulk action on the agents of ins (upgrade-agent,
// refresh-configuration): first the confirmation, which says of each
// instance whether its agent is asked and what, or why not; then
// (confirmed) the ask of each, reported in one message.
func (c *Console) agentAction(w http.ResponseWriter, r *http.Request, s *session, action string, ins []*inventoryv1.Instance) {
	d, verb, done := refreshRows(ins), "Refreshing the configuration of", "refreshed"
	if action == actionUpgradeAgent {
		d, verb, done = upgradeRows(ins, c.version), "Upgrading to "+c.version+" the agents of", "upgraded"
	}
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, s, http.StatusOK, "agentaction", d.Heading, d)
		return
	}
	var asked, current, refused []string
	for _, row := range d.Rows {
		in := row.In
		if row.Why != "" {
			// Not to be asked as read a moment ago: the provisioner says
			// so again if asked, so it is reported without asking.
			if row.Current {
				current = append(current, in.GetName())
			} else {
				refused = append(refused, in.GetName()+" ("+row.Why+")")
			}
			continue
		}
		from := in.GetAgent().GetVersion()
		err := s.api.do(http.MethodPost, "/api/v1/instances/"+url.PathEscape(in.GetId())+":"+action, struct{}{}, in)
		var ae *apiError
		switch {
		case err == nil && action == actionUpgradeAgent && in.GetAgent().GetVersion() == c.version:
			current = append(current, in.GetName())
		case err == nil && action == actionUpgradeAgent:
			asked = append(asked, in.GetName()+" (from "+from+")")
		case err == nil:
			asked = append(asked, in.GetName())
		case errors.As(err, &ae) && ae.Status != http.StatusUnauthorized:
			refused = append(refused, in.GetName()+" ("+ae.Message+")")
		default:
			c.fail(w, r, s, err)
			return
		}
	}
	msg := fmt.Sprintf("%s %s", verb, counted(len(asked), "instance"))
	if len(asked) > 0 {
		msg += " (the node software restarts): " + strings.Join(asked, ", ")
	}
	msg += "."
	if len(current) > 0 {
		msg += fmt.Sprintf(" At %s already: %s.", c.version, strings.Join(current, ", "))
	}
	if len(refused) > 0 {
		msg += " Not " + done + ": " + strings.Join(refused, "; ") + "."
	}
	redirect(w, r, "/instances", msg)
}

// counted says n of noun: "1 agent", "2 agents".
func counted(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
