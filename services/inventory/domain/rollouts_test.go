package domain_test

import (
	"fmt"
	"strings"
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/services/inventory/domain"
)

func rollout(state string, instances ...string) *inventoryv1.Rollout {
	r := &inventoryv1.Rollout{Name: "r", Action: "refresh-configuration", Parallel: 1, TimeoutSeconds: 600, State: state}
	for _, id := range instances {
		r.Instances = append(r.Instances, &inventoryv1.RolloutInstance{InstanceId: id, State: "pending"})
	}
	return r
}

const (
	id1 = "0192f0a0-0000-7000-8000-000000000001"
	id2 = "0192f0a0-0000-7000-8000-000000000002"
)

// The provisioner's record moves a running rollout to stopped or done and
// keeps its instances; an operator's pause or cancel is not undone by it.
func TestARolloutRecordKeepsItsInstancesAndTheOperatorsState(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cur, next *inventoryv1.Rollout
		want      string
	}{
		{rollout("running", id1, id2), rollout("done", id1, id2), ""},
		{rollout("running", id1, id2), rollout("stopped", id1, id2), ""},
		{rollout("paused", id1), rollout("paused", id1), ""},
		{rollout("paused", id1), rollout("done", id1), "state: a rollout paused is not recorded done"},
		{rollout("paused", id1), rollout("stopped", id1), ""},
		{rollout("cancelled", id1), rollout("running", id1), "state: a rollout cancelled is not recorded running"},
		{rollout("running", id1, id2), rollout("running", id2, id1), "instances[0].instanceId: is " + id2},
		{rollout("running", id1, id2), rollout("running", id1), "instances: has 1 instances, not the rollout's 2"},
		{rollout("running", id1), rollout("running", id1, id1), "instances[1].instanceId: instance " + id1 + " is named twice"},
	} {
		err := domain.RolloutRecordable(c.cur, c.next)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s → %s: %v, want %q", c.cur.GetState(), c.next.GetState(), err, c.want)
		}
	}
}

func TestRolloutControls(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		state, verb, want, err string
	}{
		{"running", "pause", "paused", ""},
		{"paused", "resume", "running", ""},
		{"stopped", "resume", "running", ""},
		{"stopped", "cancel", "cancelled", ""},
		{"paused", "pause", "", "is paused: it cannot be paused"},
		{"running", "resume", "", "is running: it cannot be resumed"},
		{"done", "cancel", "", "is done: it cannot be cancelled"},
	} {
		to, err := domain.RolloutControl(rollout(c.state, id1), c.verb)
		if string(to) != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s %s: %q, %v", c.verb, c.state, to, err)
		}
	}
}

func TestValidateRolloutNamesTheField(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		edit func(*inventoryv1.Rollout)
		want string
	}{
		{func(r *inventoryv1.Rollout) { r.Action = "reboot" }, `action: "reboot" is not a rollout action`},
		{func(r *inventoryv1.Rollout) { r.Action = "upgrade-agent" }, "agentVersion: is required for upgrade-agent"},
		{func(r *inventoryv1.Rollout) { r.Parallel = 0 }, "parallel: 0 is not a group size"},
		{func(r *inventoryv1.Rollout) { r.TimeoutSeconds = 86401 }, "timeoutSeconds: 86401 is not a timeout"},
		{func(r *inventoryv1.Rollout) { r.Instances = nil }, "instances: 0 instances"},
		{func(r *inventoryv1.Rollout) {
			for i := range 500 {
				r.Instances = append(r.Instances, &inventoryv1.RolloutInstance{InstanceId: fmt.Sprintf("0192f0a0-0000-7000-8000-%012d", i+10), State: "pending"})
			}
		}, "instances: 501 instances: a rollout has 1 to 500"},
		{func(r *inventoryv1.Rollout) { r.Instances[0].InstanceId = "x" }, "instances[0].instanceId"},
		{func(r *inventoryv1.Rollout) { r.Instances[0].State = "lost" }, `instances[0].state: "lost" is not`},
	} {
		r := rollout("running", id1)
		c.edit(r)
		if err := domain.ValidateRollout(r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want %q", err, c.want)
		}
	}
}
