package vcenter

import (
	"errors"
	"strings"
	"testing"
)

// TestBackingLifecycle: a volume backing as the VMDK driver makes it
// (name, instance UUID, extraConfig, managedBy, folder, one disk of the
// volume's size with the volume id as its UUID), found by the volume id,
// extended, snapshotted as a template whose inventory path finds it
// again, cloned full and linked, and deleted (twice: a missing backing is
// fine).
func TestBackingLifecycle(t *testing.T) {
	e := newVMEnv(t)
	ctx := t.Context()
	const id = "6f7a2b0c-1d2e-4f30-8a4b-5c6d7e8f9a01"
	folder, err := e.s.EnsureFolderPath(ctx, e.cluster.Datacenter, "OpenStack", "Project (p1)", "Volumes")
	if err != nil {
		t.Fatal(err)
	}
	before := e.s.Calls()
	ref, err := e.s.CreateBacking(ctx, BackingSpec{
		Name: "volume-" + id, VolumeID: id, SizeGB: 2, DiskType: BackingDiskThin,
		Folder: folder, ResourcePool: e.cluster.ResourcePool, Host: e.cluster.Hosts[0].Ref, Datastore: e.ds.Name,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := delta(before, e.s.Calls()); d["CreateVM_Task"] != 1 || len(d) > 2 {
		t.Errorf("CreateBacking calls: %v", d)
	}
	before = e.s.Calls()
	b, err := e.s.FindBacking(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FindBacking calls: %v", delta(before, e.s.Calls()))
	if b.Ref != ref || b.Name != "volume-"+id || b.InstanceUUID != id || b.VolumeID != id || b.Folder != folder ||
		b.ManagedByKey != BackingExtensionKey || b.ManagedByType != BackingExtensionType || b.Template {
		t.Errorf("backing %+v", b)
	}
	if b.DiskCapacityKB != 2<<20 || b.DiskUUID != id || !strings.HasPrefix(b.DiskPath, "["+e.ds.Name+"] ") {
		t.Errorf("backing disk %q %d KiB uuid %q", b.DiskPath, b.DiskCapacityKB, b.DiskUUID)
	}
	before = e.s.Calls()
	if r, err := e.s.FindBackingRef(ctx, id); err != nil || r != ref {
		t.Errorf("FindBackingRef = %v, %v; want %v", r, err, ref)
	}
	if d := delta(before, e.s.Calls()); len(d) != 1 || d["FindAllByUuid"] != 1 {
		t.Errorf("FindBackingRef calls: %v, want FindAllByUuid only", d)
	}
	vm, err := e.s.GetVM(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if vm.NumCPUs != 1 || vm.MemoryMB != 128 || vm.GuestID != "otherGuest" || vm.PowerState != PowerStateOff || len(vm.Controllers) != 1 {
		t.Errorf("backing hardware %+v", vm)
	}

	if err := e.s.ExtendBacking(ctx, b, 3); err != nil {
		t.Fatal(err)
	}
	if b, err = e.s.GetBacking(ctx, ref); err != nil || b.DiskCapacityKB != 3<<20 {
		t.Fatalf("after extend: %v, %d KiB", err, b.DiskCapacityKB)
	}

	snapFolder, err := e.s.EnsureFolderPath(ctx, e.cluster.Datacenter, "OpenStack", "Project (p1)", "Volumes", "Snapshots")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := e.s.CloneBacking(ctx, ref, CloneSpec{Name: "snapshot-s1", Folder: snapFolder, Template: true})
	if err != nil {
		t.Fatal(err)
	}
	path, err := e.s.InventoryPath(ctx, tmpl)
	if want := "/" + e.cluster.Datacenter + "/vm/OpenStack/Project (p1)/Volumes/Snapshots/snapshot-s1"; err != nil || path != want {
		t.Fatalf("InventoryPath = %q, %v; want %q", path, err, want)
	}
	if known := VMInventoryPath(e.cluster.Datacenter, []string{"OpenStack", "Project (p1)", "Volumes", "Snapshots"}, "snapshot-s1"); known != path {
		t.Errorf("VMInventoryPath = %q, vCenter says %q", known, path)
	}
	if found, err := e.s.FindByInventoryPath(ctx, path); err != nil || found != tmpl {
		t.Fatalf("FindByInventoryPath(%q) = %v, %v; want %v", path, found, err, tmpl)
	}
	if tb, err := e.s.GetBacking(ctx, tmpl); err != nil || !tb.Template {
		t.Errorf("snapshot template %+v, %v", tb, err)
	}

	const cloneID = "6f7a2b0c-1d2e-4f30-8a4b-5c6d7e8f9a02"
	clone, err := e.s.CloneBacking(ctx, tmpl, CloneSpec{Name: "volume-" + cloneID, VolumeID: cloneID, Folder: folder,
		ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Ref, DiskType: BackingDiskThin})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := e.s.FindBacking(ctx, cloneID)
	if err != nil || cb.Ref != clone || cb.VolumeID != cloneID || cb.Template || cb.DiskCapacityKB != 3<<20 {
		t.Errorf("clone %+v, %v", cb, err)
	}

	snap, err := e.s.CreateBackingSnapshot(ctx, ref, "temp-snapshot-x", "")
	if err != nil {
		t.Fatal(err)
	}
	if found, err := e.s.FindBackingSnapshot(ctx, ref, "temp-snapshot-x"); err != nil || found != snap {
		t.Errorf("FindBackingSnapshot = %v, %v; want %v", found, err, snap)
	}
	const linkedID = "6f7a2b0c-1d2e-4f30-8a4b-5c6d7e8f9a03"
	if _, err := e.s.CloneBacking(ctx, ref, CloneSpec{Name: "volume-" + linkedID, VolumeID: linkedID, Folder: folder, Snapshot: snap, Linked: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.s.RemoveBackingSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.FindBackingSnapshot(ctx, ref, "temp-snapshot-x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("snapshot after removal: %v", err)
	}

	for _, r := range []Ref{tmpl, clone, ref, ref} {
		if err := e.s.DeleteBacking(ctx, r); err != nil {
			t.Fatalf("DeleteBacking(%v): %v", r, err)
		}
	}
	if _, err := e.s.FindBacking(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindBacking after delete: %v", err)
	}
	if _, err := e.s.FindBackingRef(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindBackingRef after delete: %v", err)
	}
	if _, err := e.s.FindBackingRef(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("FindBackingRef of no volume: %v", err)
	}
	if _, err := e.s.FindByInventoryPath(ctx, path); !errors.Is(err, ErrNotFound) {
		t.Errorf("template after delete: %v", err)
	}
}

// TestCreateBackingInvalid: bad specs fail before vCenter is called.
func TestCreateBackingInvalid(t *testing.T) {
	e := newVMEnv(t)
	for _, spec := range []BackingSpec{
		{Name: "volume-x", VolumeID: "x", Folder: e.folder, ResourcePool: e.cluster.ResourcePool},
		{Name: "volume-x", VolumeID: "x", Folder: e.folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Name, DiskType: "fat"},
		{Name: "volume-x", VolumeID: "x", Folder: e.folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Name, AdapterType: "sata"},
	} {
		if _, err := e.s.CreateBacking(t.Context(), spec); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("CreateBacking(%+v): %v, want ErrInvalidArgument", spec, err)
		}
	}
	for i, a := range []string{BackingAdapterIDE, BackingAdapterParaVirtual, BackingAdapterBusLogic, BackingAdapterLsiLogicSAS} {
		id := "6f7a2b0c-1d2e-4f30-8a4b-5c6d7e8f9b0" + string(rune('0'+i))
		if _, err := e.s.CreateBacking(t.Context(), BackingSpec{Name: "volume-" + a, VolumeID: id, SizeGB: 1, AdapterType: a, DiskType: BackingDiskEagerZeroedThick,
			Folder: e.folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Name}); err != nil {
			t.Errorf("adapter %s: %v", a, err)
		}
	}
}

// TestVMInventoryPath: the path of an entity in a VM folder, as vCenter
// reports it (InventoryPath), folder names with "/" and "%" included.
func TestVMInventoryPath(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	tests := []struct {
		folders []string
		name    string
		want    string
	}{
		{[]string{"OpenStack", "Project (p1)", "Volumes", "Snapshots"}, "snapshot-s1",
			"/" + e.cluster.Datacenter + "/vm/OpenStack/Project (p1)/Volumes/Snapshots/snapshot-s1"},
		{[]string{"OpenStack", "Project (a/b)", "50% off"}, "snapshot-y",
			"/" + e.cluster.Datacenter + "/vm/OpenStack/Project (a%2fb)/50%25 off/snapshot-y"},
	}
	for i, tc := range tests {
		got := VMInventoryPath(e.cluster.Datacenter, tc.folders, tc.name)
		if got != tc.want {
			t.Errorf("VMInventoryPath(%q, %q) = %q, want %q", tc.folders, tc.name, got, tc.want)
		}
		folder, err := e.s.EnsureFolderPath(ctx, e.cluster.Datacenter, tc.folders...)
		if err != nil {
			t.Fatal(err)
		}
		id := "6f7a2b0c-1d2e-4f30-8a4b-5c6d7e8f9c0" + string(rune('0'+i))
		ref, err := e.s.CreateBacking(ctx, BackingSpec{Name: tc.name, VolumeID: id, SizeGB: 1,
			Folder: folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Name})
		if err != nil {
			t.Fatal(err)
		}
		if path, err := e.s.InventoryPath(ctx, ref); err != nil || path != got {
			t.Errorf("vCenter's path = %q, %v; VMInventoryPath %q", path, err, got)
		}
		if found, err := e.s.FindByInventoryPath(ctx, got); err != nil || found != ref {
			t.Errorf("FindByInventoryPath(%q) = %v, %v; want %v", got, found, err, ref)
		}
	}
}
