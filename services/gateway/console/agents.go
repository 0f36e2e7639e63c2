package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// actionUpgradeAgent is the instances list's bulk action that upgrades the
// selected instances' agents (not a vocab.Action: the instance's state
// does not change).
const actionUpgradeAgent = "upgrade-agent"

// agentRow is one instance of the agents' upgrade page: Why says why its
// agent is not asked, empty when it is.
type agentRow struct {
	In  *inventoryv1.Instance
	Why string
}

// upgradeData is the agents' upgrade page's: the manager's version, the
// instances chosen, and how many of their agents are asked.
type upgradeData struct {
	Version string
	Rows    []agentRow
	Asked   int
}

// agentRows says of each instance whether its agent is upgraded to
// version, or why not, as the provisioner decides (vocab.AgentUpgradable).
func agentRows(ins []*inventoryv1.Instance, version string) upgradeData {
	d := upgradeData{Version: version}
	for _, in := range ins {
		a := in.GetAgent()
		row := agentRow{In: in}
		switch state := vocab.State(in.GetState()); {
		case vocab.AgentUpgradable(state, in.GetVmId(), vocab.AgentStatus(a.GetStatus()), a.GetVmId(), a.GetVersion(), version):
			d.Asked++
		case (state != vocab.StateRunning && state != vocab.StateFailed) || in.GetVmId() == "":
			row.Why = "the instance is " + string(state) + ": an agent is upgraded on a VM that runs"
		case vocab.AgentStatus(a.GetStatus()) != vocab.AgentConnected || a.GetVmId() != in.GetVmId():
			row.Why = "its agent is not connected"
		default:
			row.Why = "at " + version + " already"
		}
		d.Rows = append(d.Rows, row)
	}
	return d
}

// upgradeAgentsPage serves GET /instances/upgrade-agents: every instance
// whose agent is behind the manager, to confirm their upgrade (the
// overview's link).
func (c *Console) upgradeAgentsPage(w http.ResponseWriter, r *http.Request, s *session) {
	all, err := listAll(s.api, "/api/v1/instances", (*inventoryv1.ListInstancesResponse).GetInstances)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := agentRows(all, c.version)
	rows := d.Rows[:0]
	for _, row := range d.Rows {
		if row.Why == "" {
			rows = append(rows, row)
		}
	}
	d.Rows = rows
	c.render(w, r, s, http.StatusOK, "upgradeagents", "Upgrade "+counted(d.Asked, "agent")+"?", d)
}

// upgradeAgents is the bulk action upgrade-agent on ins: first the
// confirmation, which says of each instance whether its agent is asked,
// then (confirmed) the ask of each agent behind, reported in one message.
// An agent checks its download and the new binary's version before it
// replaces itself, and one that fails runs on at its version; the
// instances list shows each agent's version as it comes back.
func (c *Console) upgradeAgents(w http.ResponseWriter, r *http.Request, s *session, ins []*inventoryv1.Instance) {
	d := agentRows(ins, c.version)
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, s, http.StatusOK, "upgradeagents", "Upgrade "+counted(d.Asked, "agent")+"?", d)
		return
	}
	var asked, current, refused []string
	for _, row := range d.Rows {
		in := row.In
		if row.Why != "" {
			// Not behind as read a moment ago: the provisioner says so
			// again if asked, so it is reported without asking.
			if strings.HasPrefix(row.Why, "at ") {
				current = append(current, in.GetName())
			} else {
				refused = append(refused, in.GetName()+" ("+row.Why+")")
			}
			continue
		}
		from := in.GetAgent().GetVersion()
		err := s.api.do(http.MethodPost, "/api/v1/instances/"+url.PathEscape(in.GetId())+":upgrade-agent", struct{}{}, in)
		var ae *apiError
		switch {
		case err == nil && in.GetAgent().GetVersion() == c.version:
			current = append(current, in.GetName())
		case err == nil:
			asked = append(asked, in.GetName()+" (from "+from+")")
		case errors.As(err, &ae) && ae.Status != http.StatusUnauthorized:
			refused = append(refused, in.GetName()+" ("+ae.Message+")")
		default:
			c.fail(w, r, s, err)
			return
		}
	}
	msg := fmt.Sprintf("Upgrading %s to %s", counted(len(asked), "agent"), c.version)
	if len(asked) > 0 {
		msg += " (the node software restarts): " + strings.Join(asked, ", ")
	}
	msg += "."
	if len(current) > 0 {
		msg += fmt.Sprintf(" At %s already: %s.", c.version, strings.Join(current, ", "))
	}
	if len(refused) > 0 {
		msg += " Not upgraded: " + strings.Join(refused, "; ") + "."
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
