package compute

import (
	"context"
	"encoding/json"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// ccHV is one compute host's vCenter for the cross-cell tests: one
// cluster domain-c9 and at most one VM, the calls recorded.
type ccHV struct {
	Hypervisor
	mu    sync.Mutex
	vm    vcenter.VM
	calls []string
}

func (h *ccHV) call(c string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, c)
}

func (h *ccHV) InstanceUUID() string { return "vc-uuid" }
func (h *ccHV) Clusters(context.Context, ...string) ([]vcenter.Cluster, error) {
	return []vcenter.Cluster{{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c9"}, Name: "c1", Datacenter: "DC0",
		ResourcePool: vcenter.Ref{Type: "ResourcePool", Value: "resgroup-9"},
		Datastores:   []vcenter.Datastore{{Name: "ds1", Accessible: true, Type: "VMFS", FreeBytes: 1 << 40}}}}, nil
}
func (h *ccHV) EnsureExtension(context.Context, string, string, string) error { return nil }
func (h *ccHV) EnsureFolderPath(context.Context, string, ...string) (vcenter.Ref, error) {
	return vcenter.Ref{Type: "Folder", Value: "group-v9"}, nil
}
func (h *ccHV) CopyToInstance(_ context.Context, _ string, cached, dir vcenter.DatastorePath, _ int64) (vcenter.DatastorePath, error) {
	h.call("CopyToInstance " + cached.String())
	return dir.Join(srUUID + ".vmdk"), nil
}
func (h *ccHV) CreateVM(_ context.Context, spec vcenter.VMSpec) (vcenter.VM, error) {
	h.call("CreateVM")
	h.mu.Lock()
	defer h.mu.Unlock()
	h.vm = vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-new"}, InstanceUUID: spec.InstanceUUID,
		PowerState: vcenter.PowerStateOff, NumCPUs: spec.NumCPUs, MemoryMB: spec.MemoryMB,
		Disks: []vcenter.Disk{{Key: 2000, FileName: "[ds1] " + srUUID + "/" + srUUID + ".vmdk"}}}
	return h.vm, nil
}
func (h *ccHV) FindVMByInstanceUUID(context.Context, string) (vcenter.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.vm.Ref.IsZero() {
		return vcenter.VM{}, vcenter.ErrNotFound
	}
	return h.vm, nil
}
func (h *ccHV) PowerOn(context.Context, vcenter.Ref) error {
	h.call("PowerOn")
	h.mu.Lock()
	h.vm.PowerState = vcenter.PowerStateOn
	h.mu.Unlock()
	return nil
}
func (h *ccHV) PowerOff(context.Context, vcenter.Ref) error {
	h.call("PowerOff")
	h.mu.Lock()
	h.vm.PowerState = vcenter.PowerStateOff
	h.mu.Unlock()
	return nil
}
func (h *ccHV) Destroy(context.Context, vcenter.Ref) error {
	h.call("Destroy")
	h.mu.Lock()
	h.vm = vcenter.VM{}
	h.mu.Unlock()
	return nil
}
func (h *ccHV) DeleteDatastoreFile(context.Context, string, vcenter.DatastorePath) error { return nil }
func (h *ccHV) ExportRootDisk(_ context.Context, _ vcenter.Ref, name string, fn func(vcenter.ExportInfo, io.Reader) error) error {
	h.call("ExportRootDisk " + name)
	return fn(vcenter.ExportInfo{AdapterType: "lsiLogic", GuestID: "otherGuest"}, strings.NewReader("KDMV"))
}

// ccImages is glance for the cross-cell tests: snapImages that can also
// download.
type ccImages struct{ snapImages }

func (g *ccImages) Download(context.Context, string, string) (io.ReadCloser, int64, error) {
	return io.NopCloser(strings.NewReader("KDMV")), 4, nil
}

// TestCrossCellResizeFollowsConductor drives the cross-cell resize as
// conductor's cross_cell_migrate.py sends it — prep_snapshot_based_resize_at_dest,
// prep_snapshot_based_resize_at_source, finish_snapshot_based_resize_at_dest,
// then revert_snapshot_based_resize_at_dest and
// finish_revert_snapshot_based_resize_at_source; and again up to
// confirm_snapshot_based_resize_at_source — between a source host1 and a
// destination host2 with their own vCenters, and checks after each step
// the answer, the migration's and the instance's saves (with
// expected_task_state) and the VMs.
//
// Not parallel: fake conductors of concurrent tests would share the
// "conductor" queue.
func TestCrossCellResizeFollowsConductor(t *testing.T) {
	base, _, f, _ := rszFlowEnv(t)
	ctx := t.Context()
	g := &ccImages{}
	mk := func(host string, vm vcenter.VM) (*lifecycle, *ccHV) {
		hv := &ccHV{vm: vm}
		return &lifecycle{hv: hv, host: host, cond: base.cond, log: base.log, tasks: base.tasks, sched: base.sched,
			images: g, cache: &srCache{}}, hv
	}
	reset := func() {
		f.mu.Lock()
		f.got = map[string][]json.RawMessage{}
		f.mu.Unlock()
	}
	srcVM := srVM(vcenter.PowerStateOn)
	src, srcHV := mk("host1", srcVM)
	dst, dstHV := mk("host2", vcenter.VM{})

	newInstance := func() *ovo.Object {
		inst := srInstance()
		inst.SetString("host", "host1")
		inst.SetString("node", "domain-c9.vc-uuid")
		inst.SetString("project_id", "p1")
		inst.SetObject("flavor", rszFlavor(1, 1, 64, 1))
		inst.SetObject("new_flavor", rszFlavor(2, 2, 256, 2))
		inst.SetStringDict("system_metadata", map[string]string{"image_base_image_ref": "img-base", "old_vm_state": "active"})
		inst.ResetChanges()
		return inst
	}
	newMigration := func() *ovo.Object {
		mig := ovo.New("Migration", "1.7")
		mig.SetString("uuid", "6f0b3c1e-3333-4a2b-9c3d-5e6f7a8b9c0d")
		mig.SetInt("id", 9)
		mig.SetString("status", "pre-migrating")
		mig.SetString("migration_type", "resize")
		mig.SetBool("cross_cell_move", true)
		mig.SetString("source_compute", "host1")
		mig.SetString("source_node", "domain-c9.vc-uuid")
		mig.ResetChanges()
		return mig
	}
	// lastInstance is the data of the last Instance save.
	lastInstance := func() map[string]any {
		t.Helper()
		var out map[string]any
		for _, a := range sentObjects(t, f) {
			obj := a["objinst"].(map[string]any)
			if a["objmethod"] == "save" && obj["nova_object.name"] == "Instance" {
				out = obj["nova_object.data"].(map[string]any)
			}
		}
		return out
	}
	check := func(step string, want []string) {
		t.Helper()
		if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
			t.Errorf("%s saves\n got %q\nwant %q", step, got, want)
		}
		reset()
	}
	call := func(l *lifecycle, method string, args map[string]any) any {
		t.Helper()
		var h rpc.Handler
		switch method {
		case "prep_snapshot_based_resize_at_dest":
			h = l.PrepSnapshotBasedResizeAtDest
		case "prep_snapshot_based_resize_at_source":
			h = l.PrepSnapshotBasedResizeAtSource
		case "finish_snapshot_based_resize_at_dest":
			h = l.FinishSnapshotBasedResizeAtDest
		case "revert_snapshot_based_resize_at_dest":
			h = l.RevertSnapshotBasedResizeAtDest
		case "finish_revert_snapshot_based_resize_at_source":
			h = l.FinishRevertSnapshotBasedResizeAtSource
		case "confirm_snapshot_based_resize_at_source":
			h = l.ConfirmSnapshotBasedResizeAtSource
		}
		res, err := h(ctx, rszRequest(t, method, args))
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		return res
	}

	// 1. PrepResizeAtDestTask: the claim on the target cell's copy; the
	// MigrationContext comes back.
	reset()
	srcInst, tgtInst, mig := newInstance(), newInstance(), newMigration()
	res := call(dst, "prep_snapshot_based_resize_at_dest", map[string]any{"instance": tgtInst, "flavor": rszFlavor(2, 2, 256, 2),
		"nodename": "domain-c9.vc-uuid", "migration": mig, "limits": nil, "request_spec": nil})
	mc, err := decodeObject(res)
	if err != nil || mc.Name != "MigrationContext" || mc.StringOrEmpty("instance_uuid") != srUUID {
		t.Fatalf("prep at dest answered %v (%v)", res, err)
	}
	if id, _ := mc.Int("migration_id"); id != 9 {
		t.Errorf("MigrationContext migration_id %d", id)
	}
	check("prep at dest", []string{"migration pre-migrating",
		"instance active/<nil> host=host1 node=domain-c9.vc-uuid progress=<nil> exp=<nil>"})
	// What conductor then does with it.
	tgtInst.SetObject("migration_context", mc)
	mig.SetString("dest_compute", "host2")
	mig.SetString("dest_node", "domain-c9.vc-uuid")
	mig.ResetChanges()

	// 2. PrepResizeAtSourceTask: task_state resize_migrating, a snapshot
	// image, then the source compute.
	srcInst.SetString("task_state", "resize_migrating")
	srcInst.ResetChanges()
	call(src, "prep_snapshot_based_resize_at_source", map[string]any{"instance": srcInst, "migration": mig, "snapshot_id": "img-snap"})
	check("prep at source", []string{"migration migrating", "migration post-migrating",
		"instance active/resize_migrated host=host1 node=domain-c9.vc-uuid progress=<nil> exp=resize_migrating"})
	if want := []string{"PowerOff", "ExportRootDisk " + srUUID + "-snapshot"}; !slices.Equal(srcHV.calls, want) {
		t.Errorf("source VM calls %q, want %q", srcHV.calls, want)
	}
	if g.uploaded != "KDMV" || srcHV.vm.Ref.IsZero() || srcHV.vm.PowerState != vcenter.PowerStateOff {
		t.Errorf("snapshot uploaded %q; source VM %+v (want kept, powered off)", g.uploaded, srcHV.vm)
	}
	srcHV.calls = nil

	// 3. FinishResizeAtDestTask: the target instance (resize_migrated).
	tgtInst.SetString("task_state", "resize_migrated")
	tgtInst.ResetChanges()
	mig.SetString("status", "post-migrating")
	mig.ResetChanges()
	call(dst, "finish_snapshot_based_resize_at_dest", map[string]any{"instance": tgtInst, "migration": mig, "snapshot_id": "img-snap", "request_spec": nil})
	check("finish at dest", []string{
		"instance active/resize_finish host=host1 node=domain-c9.vc-uuid progress=<nil> exp=resize_migrated",
		"migration finished",
		"instance resized/<nil> host=host2 node=domain-c9.vc-uuid progress=<nil> exp=resize_finish"})
	if want := []string{"CopyToInstance [ds1] cache/img-snap/img-snap.vmdk", "CreateVM", "PowerOn"}; !slices.Equal(dstHV.calls, want) {
		t.Errorf("destination VM calls %q, want %q", dstHV.calls, want)
	}
	if dstHV.vm.NumCPUs != 2 || dstHV.vm.MemoryMB != 256 || tgtInst.StringOrEmpty("image_ref") != "img-boot" || !slices.Contains(g.deleted, "img-snap") {
		t.Errorf("destination VM %+v, image_ref %s, deleted images %v", dstHV.vm, tgtInst.StringOrEmpty("image_ref"), g.deleted)
	}
	dstHV.calls = nil

	// 4r. RevertResizeTask: revert at dest, then finish the revert at the
	// source. The target instance as finish at dest saved it.
	tgtInst.SetString("vm_state", "resized")
	tgtInst.SetString("host", "host2")
	tgtInst.SetObject("flavor", rszFlavor(2, 2, 256, 2))
	tgtInst.SetObject("old_flavor", rszFlavor(1, 1, 64, 1))
	tgtInst.SetString("task_state", "resize_reverting")
	tgtInst.ResetChanges()
	mig.SetString("status", "reverting")
	mig.ResetChanges()
	call(dst, "revert_snapshot_based_resize_at_dest", map[string]any{"instance": tgtInst, "migration": mig})
	if d := lastInstance(); d == nil || d["migration_context"] != nil {
		t.Errorf("revert at dest: migration context kept: %v", d)
	}
	check("revert at dest", []string{"instance resized/resize_reverting host=host2 node=domain-c9.vc-uuid progress=<nil> exp=<nil>"})
	if want := []string{"PowerOff", "Destroy"}; !slices.Equal(dstHV.calls, want) || !dstHV.vm.Ref.IsZero() {
		t.Errorf("destination VM calls %q, want %q", dstHV.calls, want)
	}
	srcInst.SetString("vm_state", "resized")
	srcInst.SetString("task_state", "resize_reverting")
	srcInst.SetObject("old_flavor", rszFlavor(1, 1, 64, 1))
	srcInst.SetObject("flavor", rszFlavor(2, 2, 256, 2))
	srcInst.SetString("host", "host2")
	srcInst.ResetChanges()
	call(src, "finish_revert_snapshot_based_resize_at_source", map[string]any{"instance": srcInst, "migration": mig})
	if d := lastInstance(); d == nil || d["old_flavor"] != nil || d["new_flavor"] != nil || d["instance_type_id"] != float64(1) {
		t.Errorf("finish revert at source: last save %v (want the old flavor back, the stashed ones dropped)", d)
	}
	check("finish revert at source", []string{
		"instance resized/resize_reverting host=host1 node=domain-c9.vc-uuid progress=<nil> exp=[resize_reverting]",
		"instance active/<nil> host=host1 node=domain-c9.vc-uuid progress=<nil> exp=[resize_reverting]",
		"instance active/<nil> host=host1 node=domain-c9.vc-uuid progress=<nil> exp=<nil>"})
	if want := []string{"PowerOn"}; !slices.Equal(srcHV.calls, want) || srcHV.vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("source VM calls %q, want %q", srcHV.calls, want)
	}
	// 4c. ConfirmResizeTask after another resize: the source VM destroyed.
	srcHV.calls = nil
	srcInst.SetString("vm_state", "resized")
	srcInst.SetNull("task_state")
	srcInst.SetString("host", "host2")
	srcInst.ResetChanges()
	mig.SetString("status", "confirming")
	mig.ResetChanges()
	call(src, "confirm_snapshot_based_resize_at_source", map[string]any{"instance": srcInst, "migration": mig})
	check("confirm at source", nil)
	if want := []string{"PowerOff", "Destroy"}; !slices.Equal(srcHV.calls, want) || !srcHV.vm.Ref.IsZero() {
		t.Errorf("source VM calls %q, want %q", srcHV.calls, want)
	}
}
