package compute

import (
	"errors"
	"slices"
	"testing"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// TestShelveRoundTrips checks the exact vCenter calls (task polls apart)
// of the VM's part of shelve with offload and of shelve_offload alone,
// against a vCenter simulator: the VM is read once through the watcher's
// moref and powered off once; the offload reuses that read, and destroys
// the VM (its directory goes with it, so nothing else is deleted).
func TestShelveRoundTrips(t *testing.T) {
	t.Parallel()
	r := newSimRig(t)
	ctx := t.Context()
	const read = "RetrievePropertiesEx"
	destroy := []string{read, "UnregisterVM", "DeleteDatastoreFile_Task"}
	for _, tc := range []struct {
		name      string
		power     string
		shelve    bool // shelve then offload; else shelve_offload alone
		wantCalls []string
	}{
		{"shelve, offloaded", vcenter.PowerStateOn, true, append([]string{read, "PowerOffVM_Task"}, destroy...)},
		{"shelve of a stopped VM, offloaded", vcenter.PowerStateOff, true, append([]string{read}, destroy...)},
		{"shelve_offload", vcenter.PowerStateOn, false, append([]string{read, "PowerOffVM_Task"}, destroy...)},
		{"shelve_offload of a stopped VM", vcenter.PowerStateOff, false, append([]string{read}, destroy...)},
	} {
		uuid := newUUID()
		created := r.createVM(t, uuid, tc.power, true)
		inst := simInstance(uuid)
		var err error
		calls, _ := r.measure(t, func() {
			var off *vcenter.VM
			if tc.shelve {
				vm, perr := r.l.powerOffForShelve(ctx, inst)
				if err = perr; err != nil {
					return
				}
				off = &vm
			}
			vm, perr := r.l.offloadPowerOff(ctx, inst, off)
			if err = perr; err != nil {
				return
			}
			err = r.l.destroyOffloaded(ctx, inst, vm)
		})
		if err != nil || !slices.Equal(calls, tc.wantCalls) {
			t.Errorf("%s: %v, calls\n %v\nwant %v", tc.name, err, calls, tc.wantCalls)
		}
		if _, err := r.s.GetVM(ctx, created.Ref); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("%s: the VM is still there (%v)", tc.name, err)
		}
		// A second offload finds no VM: ErrNotFound, which the offload
		// takes as done (NOSTATE).
		if _, err := r.l.offloadPowerOff(ctx, inst, nil); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("%s: offload without a VM: %v, want ErrNotFound", tc.name, err)
		}
	}
}
