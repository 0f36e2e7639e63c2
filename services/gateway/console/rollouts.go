package console

import (
	"net/http"
	"net/url"
	"slices"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// rolloutRow is a rollout as the pages show it: how far it is.
type rolloutRow struct {
	R        *inventoryv1.Rollout
	Progress string
}

// rolloutProgress counts a rollout's instances by state, in the order
// the states first appear: "2 succeeded, 1 asked, 3 pending".
func rolloutProgress(r *inventoryv1.Rollout) string { return vocab.RolloutTally(r.GetInstances()) }

// rollouts serves GET /rollouts: every rollout, the newest first.
func (c *Console) rollouts(w http.ResponseWriter, r *http.Request, s *session) {
	all, err := listAll(s.api, "/api/v1/rollouts", (*inventoryv1.ListRolloutsResponse).GetRollouts)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	slices.Reverse(all)
	rows := make([]rolloutRow, len(all))
	for i, ro := range all {
		rows[i] = rolloutRow{R: ro, Progress: rolloutProgress(ro)}
	}
	c.render(w, r, s, http.StatusOK, "rollouts", "Rollouts", rows)
}

// openRollouts are the rollouts still open, those a failure stopped first
// (the first 20 of each state).
func openRollouts(s *session) ([]rolloutRow, error) {
	var out []rolloutRow
	for _, st := range []vocab.RolloutState{vocab.RolloutStopped, vocab.RolloutPaused, vocab.RolloutRunning} {
		list := &inventoryv1.ListRolloutsResponse{}
		if err := s.api.get("/api/v1/rollouts?pageSize=20&state="+string(st), list); err != nil {
			return nil, err
		}
		for _, ro := range list.GetRollouts() {
			out = append(out, rolloutRow{R: ro, Progress: rolloutProgress(ro)})
		}
	}
	return out, nil
}

// rollout serves GET /rollouts/{id}: one rollout, each instance's state,
// live; operators pause, resume and cancel it there.
func (c *Console) rollout(w http.ResponseWriter, r *http.Request, s *session) {
	ro := &inventoryv1.Rollout{}
	if err := s.api.get("/api/v1/rollouts/"+url.PathEscape(r.PathValue("id")), ro); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "rollout", "Rollout "+ro.GetName(), rolloutRow{R: ro, Progress: rolloutProgress(ro)})
}

// controlRollout serves POST /rollouts/{id}/{verb}: pause, resume or
// cancel.
func (c *Console) controlRollout(w http.ResponseWriter, r *http.Request, s *session) {
	verb, id := r.PathValue("verb"), url.PathEscape(r.PathValue("id"))
	done := map[string]string{"pause": "paused: no more instances are asked", "resume": "resumed",
		"cancel": "cancelled: the instances not asked yet are not"}[verb]
	if done == "" {
		c.render(w, r, s, http.StatusNotFound, "error", "Not found", errorData{Message: "A rollout is paused, resumed or cancelled, not " + verb + "."})
		return
	}
	ro := &inventoryv1.Rollout{}
	err := s.api.do(http.MethodPost, "/api/v1/rollouts/"+id+":"+verb, struct{}{}, ro)
	c.done(w, r, s, err, "/rollouts/"+id, "Rollout "+ro.GetName()+" "+done+".", "The rollout was not "+map[string]string{
		"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[verb])
}
