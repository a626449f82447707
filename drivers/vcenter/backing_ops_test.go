package vcenter

import (
	"errors"
	"testing"
)

// TestBackingRetypeUnmanageRevert: the calls retype, unmanage and revert
// use: a backing relocated (with a disk type), renamed, given a volume's
// identity again, released (no longer found by the volume id), and
// reverted to a VM snapshot.
func TestBackingRetypeUnmanageRevert(t *testing.T) {
	e := newVMEnv(t)
	ctx := t.Context()
	const id = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
	folder, err := e.s.EnsureFolderPath(ctx, e.cluster.Datacenter, "OpenStack", "Project (p1)", "Volumes")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := e.s.CreateBacking(ctx, BackingSpec{Name: "volume-" + id, VolumeID: id, SizeGB: 1, DiskType: BackingDiskThin,
		Folder: folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Name})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := e.s.GetBacking(ctx, ref); err != nil || b.DiskType != BackingDiskThin {
		t.Fatalf("new backing: %+v, %v", b, err)
	}
	if err := e.s.RelocateBacking(ctx, ref, e.ds.Ref, e.cluster.ResourcePool, Ref{}, BackingDiskThick); err != nil {
		t.Fatal(err)
	}
	if err := e.s.RelocateBacking(ctx, ref, e.ds.Ref, Ref{}, Ref{}, "fat"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("relocate with a bad disk type: %v", err)
	}
	if err := e.s.RenameBacking(ctx, ref, "tmp-name"); err != nil {
		t.Fatal(err)
	}
	clone, err := e.s.CloneBacking(ctx, ref, CloneSpec{Name: "volume-" + id, Folder: folder, ResourcePool: e.cluster.ResourcePool, Datastore: e.ds.Ref, DiskType: BackingDiskThick})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.DeleteBacking(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := e.s.SetBackingVolumeID(ctx, clone, id); err != nil {
		t.Fatal(err)
	}
	b, err := e.s.FindBacking(ctx, id)
	if err != nil || b.Ref != clone || b.Name != "volume-"+id || b.VolumeID != id || b.DiskUUID != id {
		t.Fatalf("backing after the retype's clone: %+v, %v", b, err)
	}

	snap, err := e.s.CreateBackingSnapshot(ctx, clone, "snapshot-s1", "")
	if err != nil {
		t.Fatal(err)
	}
	found, err := e.s.FindBackingSnapshot(ctx, clone, "snapshot-s1")
	if err != nil || found != snap {
		t.Fatalf("FindBackingSnapshot = %v, %v; want %v", found, err, snap)
	}
	if err := e.s.RevertBackingSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}

	if err := e.s.ReleaseBacking(ctx, clone, "0f0e0d0c-0b0a-4909-8807-060504030201"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.FindBacking(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindBacking after release: %v", err)
	}
	if b, err := e.s.GetBacking(ctx, clone); err != nil || b.VolumeID != "" || b.InstanceUUID != "0f0e0d0c-0b0a-4909-8807-060504030201" {
		t.Errorf("released backing %+v, %v", b, err)
	}
}
