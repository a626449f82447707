package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// TestSuspendResumeRoundTrips drives suspend and resume against a vCenter
// simulator and checks the exact vCenter calls (task polls apart) and
// what nova sees: with the watcher's moref, suspend is its task alone
// (vCenter's fault tells a powered-off VM, nova's InstanceSuspendFailure);
// resume reads the power state once (a powered-off VM must not start)
// and powers on.
func TestSuspendResumeRoundTrips(t *testing.T) {
	t.Parallel()
	r := newSimRig(t)
	suspendOp, resumeOp := r.l.suspendVM, r.l.resumeVM
	const (
		find = "FindAllByUuid"
		read = "RetrievePropertiesEx"
	)
	for _, tc := range []struct {
		name, power string
		indexed     bool
		stale       bool // the index names a VM that is gone
		op          func(context.Context, *ovo.Object) error
		wantCalls   []string
		wantPolls   bool
		wantErr     string
		wantPower   string
	}{
		{name: "suspend", power: vcenter.PowerStateOn, indexed: true, op: suspendOp,
			wantCalls: []string{"SuspendVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateSuspended},
		{name: "suspend, powered off", power: vcenter.PowerStateOff, indexed: true, op: suspendOp,
			wantCalls: []string{"SuspendVM_Task"}, wantPolls: true, wantErr: "InstanceSuspendFailure", wantPower: vcenter.PowerStateOff},
		{name: "suspend, already suspended", power: vcenter.PowerStateSuspended, indexed: true, op: suspendOp,
			wantCalls: []string{"SuspendVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateSuspended},
		{name: "suspend, not in the index", power: vcenter.PowerStateOn, op: suspendOp,
			wantCalls: []string{find, read, "SuspendVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateSuspended},
		{name: "suspend, not in the index, powered off", power: vcenter.PowerStateOff, op: suspendOp,
			wantCalls: []string{find, read}, wantErr: "InstanceSuspendFailure", wantPower: vcenter.PowerStateOff},
		{name: "suspend, gone from the index's moref", power: vcenter.PowerStateOn, stale: true, op: suspendOp,
			wantCalls: []string{"SuspendVM_Task", find, read, "SuspendVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateSuspended},
		{name: "resume", power: vcenter.PowerStateSuspended, indexed: true, op: resumeOp,
			wantCalls: []string{read, "PowerOnVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateOn},
		{name: "resume, powered off", power: vcenter.PowerStateOff, indexed: true, op: resumeOp,
			wantCalls: []string{read}, wantErr: "InstanceResumeFailure", wantPower: vcenter.PowerStateOff},
		{name: "resume, not in the index", power: vcenter.PowerStateSuspended, op: resumeOp,
			wantCalls: []string{find, read, "PowerOnVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateOn},
		{name: "resume, gone from the index's moref", power: vcenter.PowerStateSuspended, stale: true, op: resumeOp,
			wantCalls: []string{read, find, read, "PowerOnVM_Task"}, wantPolls: true, wantPower: vcenter.PowerStateOn},
	} {
		uuid := newUUID()
		vm := r.createVM(t, uuid, tc.power, tc.indexed)
		if tc.stale {
			r.index(vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-gone"}, InstanceUUID: uuid, PowerState: tc.power, Host: vm.Host})
		}
		var err error
		calls, polls := r.measure(t, func() { err = tc.op(t.Context(), simInstance(uuid)) })
		if got := errClass(err); got != tc.wantErr {
			t.Errorf("%s: error %q, want %q", tc.name, got, tc.wantErr)
		}
		if !slices.Equal(calls, tc.wantCalls) || (polls > 0) != tc.wantPolls {
			t.Errorf("%s: calls %v and %d task polls, want %v (polls %v)", tc.name, calls, polls, tc.wantCalls, tc.wantPolls)
		}
		if got := r.powerOf(t, vm.Ref); got != tc.wantPower {
			t.Errorf("%s: the VM is %s, want %s", tc.name, got, tc.wantPower)
		}
	}
}

// TestActionRPCRoundTrips drives suspend, resume, rescue, unrescue, soft
// delete and restore through their RPC handlers (a fake conductor, a
// vCenter simulator) and checks each action's exact vCenter calls (task
// polls and the image cache apart) and the states nova is told: no
// handler reads the VM again after its power operation.
func TestActionRPCRoundTrips(t *testing.T) {
	t.Parallel()
	r := newSimRig(t)
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(`[{"obj_what_changed": []}, null]`),
		"object_class_action_versions": json.RawMessage(`null`),
	}, got: map[string][]json.RawMessage{}}
	r.l.cond = startFakeConductor(t, f)
	r.l.images, r.l.cache = srImages{}, &srCache{}
	ctx := t.Context()
	dc, ds := r.cluster.Datacenter, r.cluster.Datastores[0].Name
	cached := vcenter.DatastorePath{Datastore: ds, Path: "cache/img-rescue"}
	if err := r.s.MakeDirectory(ctx, dc, cached); err != nil {
		t.Fatal(err)
	}
	if err := r.s.CreateVirtualDisk(ctx, dc, cached.Join("img-rescue.vmdk"), 1024, vcenter.DiskKindThin); err != nil {
		t.Fatal(err)
	}
	vm := r.createVM(t, testInstanceUUID, vcenter.PowerStateOn, true)
	const read = "RetrievePropertiesEx"
	for _, tc := range []struct {
		method    string
		args      map[string]any
		call      func(context.Context, *rpc.Request) (any, error)
		wantCalls []string
		wantSave  string // vm_state/power_state of the last save
		wantPower string
	}{
		{"suspend_instance", nil, r.l.SuspendInstance, []string{"SuspendVM_Task"}, "suspended/7", vcenter.PowerStateSuspended},
		{"resume_instance", nil, r.l.ResumeInstance, []string{read, "PowerOnVM_Task"}, "active/1", vcenter.PowerStateOn},
		{"rescue_instance", map[string]any{"rescue_image_ref": "img-rescue"}, r.l.RescueInstance,
			[]string{read, "PowerOffVM_Task", "CopyVirtualDisk_Task", read, "ReconfigVM_Task", read, "ReconfigVM_Task", "PowerOnVM_Task"}, "rescued/1", vcenter.PowerStateOn},
		{"unrescue_instance", nil, r.l.UnrescueInstance, []string{read, "PowerOffVM_Task", read, "ReconfigVM_Task", "PowerOnVM_Task"}, "active/1", vcenter.PowerStateOn},
		{"soft_delete_instance", nil, r.l.SoftDeleteInstance, []string{read, "PowerOffVM_Task"}, "soft-delete/4", vcenter.PowerStateOff},
		{"restore_instance", nil, r.l.RestoreInstance, []string{read, "PowerOnVM_Task"}, "active/1", vcenter.PowerStateOn},
	} {
		got, _ := r.s.GetVM(ctx, vm.Ref)
		r.index(got) // what the watcher reports after the previous action
		var err error
		calls, _ := r.measure(t, func() { _, err = tc.call(ctx, request(t, tc.method, tc.args)) })
		if err != nil || !slices.Equal(calls, tc.wantCalls) {
			t.Errorf("%s: %v, calls\n %v\nwant %v", tc.method, err, calls, tc.wantCalls)
		}
		if save := lastSave(t, f); save != tc.wantSave {
			t.Errorf("%s: saved %s, want %s", tc.method, save, tc.wantSave)
		}
		if got := r.powerOf(t, vm.Ref); got != tc.wantPower {
			t.Errorf("%s: the VM is %s, want %s", tc.method, got, tc.wantPower)
		}
	}
}

// lastSave is vm_state/power_state of the last Instance.save conductor got.
func lastSave(t *testing.T, f *fakeConductor) string {
	t.Helper()
	last := ""
	for _, a := range sentObjects(t, f) {
		if a["objmethod"] != "save" {
			continue
		}
		data := a["objinst"].(map[string]any)["nova_object.data"].(map[string]any)
		last = fmt.Sprintf("%v/%v", data["vm_state"], data["power_state"])
	}
	return last
}
