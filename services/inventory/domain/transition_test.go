package domain

import (
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/libs/apierr"
)

func TestTransitions(t *testing.T) {
	t.Parallel()
	const (
		noop     = "no-op"
		conflict = "409"
	)
	cases := []struct {
		state, desired, action string
		want                   string // next state, noop or conflict
	}{
		{StateCreated, DesiredDeprovisioned, "provision", StateProvisioning},
		{StateDeprovisioned, DesiredDeprovisioned, "provision", StateProvisioning},
		{StateFailed, DesiredProvisioned, "provision", StateProvisioning},
		{StateRunning, DesiredProvisioned, "provision", noop},
		{StateProvisioning, DesiredProvisioned, "provision", noop},
		{StateDeprovisioning, DesiredDeprovisioned, "provision", conflict},
		{StateDeleting, DesiredDeleted, "provision", conflict},
		{StateRunning, DesiredProvisioned, "deprovision", StateDeprovisioning},
		{StateFailed, DesiredProvisioned, "deprovision", StateDeprovisioning},
		{StateProvisioning, DesiredProvisioned, "deprovision", conflict},
		{StateDeprovisioned, DesiredDeprovisioned, "deprovision", noop},
		{StateDeprovisioning, DesiredDeprovisioned, "deprovision", noop},
		{StateDeprovisioning, DesiredProvisioned, "deprovision", conflict}, // a reprovision in progress
		{StateRunning, DesiredProvisioned, "reprovision", StateDeprovisioning},
		{StateProvisioning, DesiredProvisioned, "reprovision", conflict},
		{StateCreated, DesiredDeprovisioned, "delete", StateDeleted},
		{StateDeprovisioned, DesiredDeprovisioned, "delete", StateDeleting},
		{StateFailed, DesiredProvisioned, "delete", StateDeleting},
		{StateRunning, DesiredProvisioned, "delete", conflict},
		{StateProvisioning, DesiredProvisioned, "delete", conflict},
		{StateDeleting, DesiredDeleted, "delete", noop},
	}
	for _, c := range cases {
		next, err := Transition(&inventoryv1.Instance{Name: "i", State: c.state, DesiredState: c.desired}, c.action)
		got := ""
		switch {
		case apierr.Is(err, apierr.KindConflict):
			got = conflict
		case err != nil:
			got = err.Error()
		case next == nil:
			got = noop
		case next.Remove:
			got = StateDeleted
		default:
			got = next.State
		}
		if got != c.want {
			t.Errorf("%s (desired %s) + %s = %s, want %s", c.state, c.desired, c.action, got, c.want)
		}
	}
	if _, err := Transition(&inventoryv1.Instance{State: StateRunning}, "explode"); !apierr.Is(err, apierr.KindInvalid) {
		t.Errorf("unknown action: %v", err)
	}
}
