package compute

import (
	"context"
	"fmt"
	"testing"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// findOnly is a Hypervisor that only finds VMs by instance uuid.
type findOnly struct {
	Hypervisor
	vms   map[string]vcenter.Ref
	finds int
}

func (f *findOnly) FindVMByInstanceUUID(_ context.Context, uuid string) (vcenter.VM, error) {
	f.finds++
	ref, ok := f.vms[uuid]
	if !ok {
		return vcenter.VM{}, fmt.Errorf("find %s: %w", uuid, vcenter.ErrNotFound)
	}
	return vcenter.VM{Ref: ref, InstanceUUID: uuid}, nil
}

func TestWithVM(t *testing.T) {
	t.Parallel()
	vm := func(v string) vcenter.Ref { return vcenter.Ref{Type: "VirtualMachine", Value: v} }
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", "u1")
	gone := func(ref vcenter.Ref) error {
		if ref == vm("vm-old") {
			return fmt.Errorf("power off: %w", vcenter.ErrNotFound)
		}
		return nil
	}
	tests := []struct {
		name      string
		indexed   map[string]vcenter.Ref // watcher's view
		inVCenter map[string]vcenter.Ref
		wantRef   vcenter.Ref
		wantFinds int
		wantErr   string
	}{
		{"indexed: no lookup", map[string]vcenter.Ref{"u1": vm("vm-1")}, map[string]vcenter.Ref{"u1": vm("vm-1")}, vm("vm-1"), 0, ""},
		{"not indexed: looked up", nil, map[string]vcenter.Ref{"u1": vm("vm-1")}, vm("vm-1"), 1, ""},
		{"stale index: looked up again", map[string]vcenter.Ref{"u1": vm("vm-old")}, map[string]vcenter.Ref{"u1": vm("vm-2")}, vm("vm-2"), 1, ""},
		{"gone everywhere: InstanceNotFound", map[string]vcenter.Ref{"u1": vm("vm-old")}, nil, vcenter.Ref{}, 1, "InstanceNotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hv := &findOnly{vms: tt.inVCenter}
			l := &lifecycle{hv: hv}
			for uuid, ref := range tt.indexed {
				l.vms.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{InstanceUUID: uuid, Ref: ref}})
			}
			var got vcenter.Ref
			err := l.withVM(context.Background(), inst, func(ref vcenter.Ref) error {
				if err := gone(ref); err != nil {
					return err
				}
				got = ref
				return nil
			})
			if tt.wantErr != "" {
				if !isRemote(err, tt.wantErr) {
					t.Fatalf("err %v, want %s", err, tt.wantErr)
				}
			} else if err != nil || got != tt.wantRef {
				t.Fatalf("ran on %v (%v), want %v", got, err, tt.wantRef)
			}
			if hv.finds != tt.wantFinds {
				t.Errorf("%d vCenter lookups, want %d", hv.finds, tt.wantFinds)
			}
			if ref, ok := l.vms.get("u1"); ok && ref == vm("vm-old") {
				t.Error("the stale reference stayed in the index")
			}
		})
	}
	// A removal of an older VM of the same instance keeps the newer one.
	var x vmIndex
	x.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-3")}})
	x.apply(vcenter.VMEvent{Kind: vcenter.Removed, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-0")}})
	if ref, ok := x.get("u2"); !ok || ref != vm("vm-3") {
		t.Errorf("index after removing an older VM: %v %v", ref, ok)
	}
	x.apply(vcenter.VMEvent{Kind: vcenter.Removed, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-3")}})
	if _, ok := x.get("u2"); ok {
		t.Error("a removed VM stayed in the index")
	}
}
