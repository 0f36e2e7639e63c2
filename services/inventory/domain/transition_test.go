package domain

import (
	"slices"
	"testing"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
)

func TestTransitions(t *testing.T) {
	t.Parallel()
	const (
		noop     vocab.State = "no-op"
		conflict vocab.State = "409"
	)
	cases := []struct {
		state   vocab.State
		desired vocab.Desired
		action  vocab.Action
		want    vocab.State // next state, noop or conflict
	}{
		{vocab.StateCreated, vocab.DesiredDeprovisioned, vocab.ActionProvision, vocab.StateProvisioning},
		{vocab.StateDeprovisioned, vocab.DesiredDeprovisioned, vocab.ActionProvision, vocab.StateProvisioning},
		{vocab.StateFailed, vocab.DesiredProvisioned, vocab.ActionProvision, vocab.StateProvisioning},
		{vocab.StateRunning, vocab.DesiredProvisioned, vocab.ActionProvision, noop},
		{vocab.StateProvisioning, vocab.DesiredProvisioned, vocab.ActionProvision, noop},
		{vocab.StateDeprovisioning, vocab.DesiredDeprovisioned, vocab.ActionProvision, conflict},
		{vocab.StateDeleting, vocab.DesiredDeleted, vocab.ActionProvision, conflict},
		{vocab.StateRunning, vocab.DesiredProvisioned, vocab.ActionDeprovision, vocab.StateDeprovisioning},
		{vocab.StateFailed, vocab.DesiredProvisioned, vocab.ActionDeprovision, vocab.StateDeprovisioning},
		{vocab.StateProvisioning, vocab.DesiredProvisioned, vocab.ActionDeprovision, conflict},
		{vocab.StateDeprovisioned, vocab.DesiredDeprovisioned, vocab.ActionDeprovision, noop},
		{vocab.StateDeprovisioning, vocab.DesiredDeprovisioned, vocab.ActionDeprovision, noop},
		{vocab.StateDeprovisioning, vocab.DesiredProvisioned, vocab.ActionDeprovision, conflict}, // a reprovision in progress
		{vocab.StateRunning, vocab.DesiredProvisioned, vocab.ActionReprovision, vocab.StateDeprovisioning},
		{vocab.StateProvisioning, vocab.DesiredProvisioned, vocab.ActionReprovision, conflict},
		{vocab.StateCreated, vocab.DesiredDeprovisioned, vocab.ActionDelete, vocab.StateDeleted},
		{vocab.StateDeprovisioned, vocab.DesiredDeprovisioned, vocab.ActionDelete, vocab.StateDeleting},
		{vocab.StateFailed, vocab.DesiredProvisioned, vocab.ActionDelete, vocab.StateDeleting},
		{vocab.StateRunning, vocab.DesiredProvisioned, vocab.ActionDelete, conflict},
		{vocab.StateProvisioning, vocab.DesiredProvisioned, vocab.ActionDelete, conflict},
		{vocab.StateDeleting, vocab.DesiredDeleted, vocab.ActionDelete, noop},
	}
	for _, c := range cases {
		next, err := Transition(&inventoryv1.Instance{Name: "i", State: string(c.state), DesiredState: string(c.desired)}, c.action)
		var got vocab.State
		switch {
		case apierr.Is(err, apierr.KindConflict):
			got = conflict
		case err != nil:
			got = vocab.State(err.Error())
		case next == nil:
			got = noop
		case next.Remove:
			got = vocab.StateDeleted
		default:
			got = next.State
		}
		if got != c.want {
			t.Errorf("%s (desired %s) + %s = %s, want %s", c.state, c.desired, c.action, got, c.want)
		}
	}
	if _, err := Transition(&inventoryv1.Instance{State: string(vocab.StateRunning)}, "explode"); !apierr.Is(err, apierr.KindInvalid) {
		t.Errorf("unknown action: %v", err)
	}
}

// TestProvisioningAnInstanceThatFailedStoppingItsVMReplacesTheVM: a
// deprovision (delete, reprovision) the cloud refused at stopping-vm had
// released the VM's agent first, which left for good: provisioned again,
// the instance gets a new VM (the old one destroyed first), not the old VM
// to wait for an agent that does not come. Failed anywhere else, or
// without a VM, it keeps what it has.
func TestProvisioningAnInstanceThatFailedStoppingItsVMReplacesTheVM(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		detail, vm string
		replace    bool
	}{
		{"stopping-vm: UnauthorizedOperation: not allowed to terminate i-0ab", "i-0ab", true},
		{"waiting-for-agent: no agent connected within 3m0s", "i-0ab", false},
		{"running-setup: setupActions[0]: script exited with code 3", "i-0ab", false},
		{"stopping-vm: refused", "", false},
		{"allocating-disk: VolumeLimitExceeded", "", false},
	} {
		next, err := Transition(&inventoryv1.Instance{Name: "i", State: string(vocab.StateFailed), DesiredState: string(vocab.DesiredDeprovisioned),
			StateDetail: c.detail, VmId: c.vm}, vocab.ActionProvision)
		if err != nil || next.State != vocab.StateProvisioning || next.Reprovision != c.replace {
			t.Errorf("provision of an instance failed at %q (VM %q): %+v %v, want the VM replaced: %v", c.detail, c.vm, next, err, c.replace)
		}
	}
}

// TestActionsChangeTheStatesTheySayTheyDo: vocab.Action.From (which the
// console shows the actions by) lists exactly the states in which
// Transition changes an instance, whatever was asked before.
func TestActionsChangeTheStatesTheySayTheyDo(t *testing.T) {
	t.Parallel()
	for _, a := range vocab.Actions {
		for _, s := range vocab.States {
			if s == vocab.StateDeleted {
				continue // no row to act on
			}
			for _, d := range []vocab.Desired{vocab.DesiredProvisioned, vocab.DesiredDeprovisioned, vocab.DesiredDeleted} {
				next, err := Transition(&inventoryv1.Instance{State: string(s), DesiredState: string(d)}, a)
				if changes := err == nil && next != nil; changes != slices.Contains(a.From(), s) {
					t.Errorf("%s from %s (desired %s): changes it %v, From says %v", a, s, d, changes, a.From())
				}
			}
		}
	}
}

// TestAForcedDeleteIsADeleteThatGoesOn: a forced delete goes where a
// delete goes, made forced; it forces a delete under way where it stands,
// and is a no-op on one forced already. A running instance is still
// deprovisioned first.
func TestAForcedDeleteIsADeleteThatGoesOn(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in     *inventoryv1.Instance
		want   *Next // nil: no-op
		reason apierr.Reason
	}{
		{in: &inventoryv1.Instance{State: "failed", DesiredState: "deleted", StateDetail: "stopping-vm: connection refused"},
			want: &Next{Desired: vocab.DesiredDeleted, State: vocab.StateDeleting, Detail: vocab.StepQueued, Force: true}},
		{in: &inventoryv1.Instance{State: "deprovisioned", DesiredState: "deprovisioned"},
			want: &Next{Desired: vocab.DesiredDeleted, State: vocab.StateDeleting, Detail: vocab.StepQueued, Force: true}},
		{in: &inventoryv1.Instance{State: "deleting", DesiredState: "deleted", StateDetail: "deleting-disk"},
			want: &Next{Desired: vocab.DesiredDeleted, State: vocab.StateDeleting, Detail: vocab.StepDeletingDisk, Force: true}},
		{in: &inventoryv1.Instance{State: "deleting", DesiredState: "deleted", StateDetail: "deleting-disk", DeleteForced: true}},
		{in: &inventoryv1.Instance{State: "created", DesiredState: "deprovisioned"}, want: &Next{Remove: true}},
		{in: &inventoryv1.Instance{Name: "i", State: "running", DesiredState: "provisioned"}, reason: apierr.ReasonInvalidState},
		{in: &inventoryv1.Instance{Name: "i", State: "provisioning", DesiredState: "provisioned"}, reason: apierr.ReasonLifecycleBusy},
	} {
		next, err := ForceDelete(c.in)
		if c.reason != "" {
			if apierr.ReasonOf(err) != c.reason {
				t.Errorf("%s: %v, want %s", c.in.GetState(), err, c.reason)
			}
			continue
		}
		if err != nil || (next == nil) != (c.want == nil) || (next != nil && *next != *c.want) {
			t.Errorf("%s (%s, forced %v): %+v, %v; want %+v", c.in.GetState(), c.in.GetStateDetail(), c.in.GetDeleteForced(), next, err, c.want)
		}
	}
}
