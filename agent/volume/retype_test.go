package volume

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// TestDriverRetype: the VMDK driver's retype without storage profiles: a
// volume in use is not retyped, one without a backing is (NOP), one whose
// disk type stays needs nothing, and thin to thick converts the backing's
// disk (relocated to the best datastore, or cloned on the same one) and
// keeps its identity (name, instance UUID, cinder.volume.id, disk UUID).
func TestDriverRetype(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	v := volumeSpec{ID: "5d0c7f3e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	thick := map[string]string{"vmware:vmdk_type": "thick"}
	if ok, err := d.retype(ctx, v, true, thick); ok || err != nil {
		t.Errorf("retype in use = %v, %v; want false", ok, err)
	}
	if ok, err := d.retype(ctx, v, false, thick); !ok || err != nil {
		t.Errorf("retype without backing = %v, %v; want true", ok, err)
	}
	if _, err := d.createBacking(ctx, v, vcenter.Ref{}); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.retype(ctx, v, false, map[string]string{}); !ok || err != nil {
		t.Errorf("retype thin to thin = %v, %v; want true", ok, err)
	}
	for _, want := range []string{vcenter.BackingDiskThick, vcenter.BackingDiskEagerZeroedThick} {
		if ok, err := d.retype(ctx, v, false, map[string]string{"vmware:vmdk_type": want}); !ok || err != nil {
			t.Fatalf("retype to %s = %v, %v", want, ok, err)
		}
		b, err := s.FindBacking(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		// govmomi's simulator ignores a clone's or relocation's disk
		// locator, so the disk type itself cannot be checked here
		if b.Name != v.name() || b.VolumeID != v.ID || b.InstanceUUID != v.ID || b.DiskUUID != v.ID {
			t.Errorf("backing after retype to %s: %+v", want, b)
		}
		t.Logf("retype to %s: backing %s, disk %s (%s)", want, b.Ref.Value, b.DiskPath, b.DiskType)
		v.DiskType = want
	}
	if ok, err := d.retype(ctx, v, false, map[string]string{"vmware:vmdk_type": "fat"}); ok || err == nil {
		t.Errorf("retype to a bad disk type = %v, %v; want an error", ok, err)
	}
}

// TestDriverUnmanage: unmanage leaves the backing, no longer found by the
// volume id nor naming it.
func TestDriverUnmanage(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	v := volumeSpec{ID: "6e1d8a4f-2b3c-4d5e-9f0a-1b2c3d4e5f6a", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	if err := d.unmanage(ctx, v.ID); err != nil {
		t.Errorf("unmanage without backing: %v", err)
	}
	ref, err := d.createBacking(ctx, v, vcenter.Ref{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.unmanage(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	b, err := s.GetBacking(ctx, ref)
	if err != nil {
		t.Fatalf("backing gone after unmanage: %v", err)
	}
	if b.VolumeID != "" || b.InstanceUUID == v.ID {
		t.Errorf("backing after unmanage %+v", b)
	}
	if _, err := s.FindBacking(ctx, v.ID); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("FindBacking after unmanage: %v", err)
	}
}

func TestCleanupHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"2026-12-02T11:20:33Z":             "2026-12-02T11:20:33Z",
		"2026-12-02T11:20:33.123456Z":      "2026-12-02T11:20:33.123456Z",
		"2026-12-02T12:20:33.5+01:00":      "2026-12-02T11:20:33.5Z",
		"2026-12-02T11:20:33.000001":       "2026-12-02T11:20:33.000001Z",
		"2026-12-02T11:20:33.000001+00:00": "2026-12-02T11:20:33.000001Z",
	} {
		got, err := parseObjectTime(in)
		if err != nil || got.Format(time.RFC3339Nano) != want {
			t.Errorf("parseObjectTime(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := parseObjectTime("yesterday"); err == nil {
		t.Error("parseObjectTime accepted a bad time")
	}
	for in, want := range map[string]string{"h@b#p": "h@b", "h@b": "h@b", "": ""} {
		if got := backendOf(in); got != want {
			t.Errorf("backendOf(%q) = %q, want %q", in, got, want)
		}
	}
	for _, c := range []struct {
		typ, status string
		want        bool
	}{{"Volume", "creating", true}, {"Volume", "deleting", true}, {"Volume", "uploading", true}, {"Volume", "downloading", true},
		{"Volume", "extending", false}, {"Snapshot", "creating", true}, {"Snapshot", "deleting", false}} {
		if got := cleanableStatus(c.typ, c.status); got != c.want {
			t.Errorf("cleanableStatus(%s, %s) = %v", c.typ, c.status, got)
		}
	}
}

// TestDriverManageExisting: source-name "<vmdk path>@<VM inventory path>"
// names a VM's disk; its size rounds up to whole GiB; managing it makes
// it the disk of the volume's backing (detached from the VM, moved to the
// backing's directory); bad references fail as the driver's do.
func TestDriverManageExisting(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := clusters[0]
	dir := vcenter.DatastorePath{Datastore: c.Datastores[0].Name, Path: "src"}
	if err := s.MakeDirectory(ctx, c.Datacenter, dir); err != nil {
		t.Fatal(err)
	}
	disk := dir.Join("data.vmdk")
	if err := s.CreateVirtualDisk(ctx, c.Datacenter, disk, 3<<19, vcenter.DiskKindThin); err != nil {
		t.Fatal(err)
	}
	folder, err := s.EnsureFolderPath(ctx, c.Datacenter, "src")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := s.CreateVM(ctx, vcenter.VMSpec{Name: "src-vm", NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest", Folder: folder,
		ResourcePool: c.ResourcePool, Datastore: c.Datastores[0].Ref, SCSIController: vcenter.SCSILsiLogic, Disks: []string{disk.String()}})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := s.InventoryPath(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	for ref, class := range map[string]string{"": "InvalidInput", "a@b@c": "InvalidInput", disk.String() + "@/nowhere": "ManageExistingInvalidReference",
		"[x] y.vmdk@" + inv: "ManageExistingInvalidReference"} {
		_, err := d.manageExistingGetSize(ctx, map[string]any{"source-name": ref})
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Class != class {
			t.Errorf("manage_existing_get_size(%q) = %v, want %s", ref, err, class)
		}
	}
	ref := map[string]any{"source-name": disk.String() + "@" + inv}
	if size, err := d.manageExistingGetSize(ctx, ref); err != nil || size != 2 {
		t.Fatalf("manage_existing_get_size = %d, %v; want 2", size, err)
	}
	v := volumeSpec{ID: "7f2e9b5a-3c4d-4e6f-8a0b-2c3d4e5f6a7b", SizeGB: 2, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	if err := d.manageExisting(ctx, v, ref); err != nil {
		t.Fatal(err)
	}
	b, err := s.FindBacking(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != v.name() || b.DiskCapacityKB != 3<<19 || !strings.HasSuffix(b.DiskPath, "] "+v.name()+"/"+v.name()+".vmdk") || b.DiskUUID != v.ID {
		t.Errorf("managed backing %+v", b)
	}
	if _, err := s.FindVMDisk(ctx, vm.Ref, disk.String()); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("the disk is still on its VM: %v", err)
	}
}

// TestDriverRetypeProfiles: the VMDK driver's retype with storage
// profiles: a backing whose datastore is not compliant with the new
// type's profile is relocated to a compliant one and given the profile;
// a compliant one stays and only changes profile; a disk conversion of a
// backing with VM snapshots must leave its datastore, so it is not
// retyped when only that datastore is compliant; a profile vCenter lacks
// is ProfileNotFoundException.
func TestDriverRetypeProfiles(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds0, ds1 := clusters[0].Datastores[0], clusters[0].Datastores[1]
	gold := createTagProfile(ctx, t, s, "gold", "tier", "gold")
	silver := createTagProfile(ctx, t, s, "silver", "class", "silver")
	tagDatastore(ctx, t, s, ds0.Ref, "tier", "gold")
	tagDatastore(ctx, t, s, ds0.Ref, "class", "silver")
	tagDatastore(ctx, t, s, ds1.Ref, "class", "silver")
	pbmSvc := vcenter.NewStoragePolicies(s)

	v := volumeSpec{ID: "6e1d8a4f-2b3c-4d5e-9f0a-1b2c3d4e5f60", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	ref, err := d.createBacking(ctx, v, vcenter.Ref{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string, wantDS vcenter.Ref, wantProfile string) {
		t.Helper()
		b, err := s.FindBacking(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pbmSvc.BackingProfile(ctx, b.Ref)
		if err != nil || len(b.Datastores) == 0 || b.Datastores[0] != wantDS || got != wantProfile || b.Name != v.name() {
			t.Errorf("%s: backing %s on %v with profile %q (%v); want on %s with %q", step, b.Name, b.Datastores, got, err, wantDS.Value, wantProfile)
		}
	}
	check("created without a profile", ds1.Ref, "")

	steps := []struct {
		name    string
		specs   map[string]string
		want    bool
		wantErr bool
		ds      vcenter.Ref
		profile string
	}{
		{"to gold: relocated", map[string]string{"vmware:storage_profile": "gold"}, true, false, ds0.Ref, gold},
		{"to silver: compliant, stays", map[string]string{"vmware:storage_profile": "silver"}, true, false, ds0.Ref, silver},
		{"to no profile: stays, profile removed", map[string]string{}, true, false, ds0.Ref, ""},
		{"to bronze: not found", map[string]string{"vmware:storage_profile": "bronze"}, false, true, ds0.Ref, ""},
		{"to gold: compliant, stays", map[string]string{"vmware:storage_profile": "gold"}, true, false, ds0.Ref, gold},
	}
	for _, st := range steps {
		ok, err := d.retype(ctx, v, false, st.specs)
		if ok != st.want || (err != nil) != st.wantErr {
			t.Fatalf("%s: retype = %v, %v", st.name, ok, err)
		}
		check(st.name, st.ds, st.profile)
		if ok {
			v.StorageProfile = st.specs["vmware:storage_profile"]
		}
	}
	if _, err := s.CreateBackingSnapshot(ctx, ref, "vm-snapshot", ""); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.retype(ctx, v, false, map[string]string{"vmware:storage_profile": "gold", "vmware:vmdk_type": "thick"}); ok || err != nil {
		t.Errorf("thick on gold with VM snapshots (gold only on its datastore) = %v, %v; want false", ok, err)
	}
	if ok, err := d.retype(ctx, v, false, map[string]string{"vmware:storage_profile": "silver", "vmware:vmdk_type": "thick"}); !ok || err != nil {
		t.Fatalf("thick on silver with VM snapshots = %v, %v; want true", ok, err)
	}
	check("thick on silver with VM snapshots: relocated off its datastore", ds1.Ref, silver)
}

// TestDriverConnectionProfile: connecting a volume to an instance
// relocates its backing when its datastore is not compliant with the
// volume's storage profile (the driver's _relocate_backing), onto the
// instance host's compliant datastore; a compliant one stays.
func TestDriverConnectionProfile(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := clusters[1]
	ds0 := c.Datastores[0]
	if c.Datastores[1].FreeBytes <= ds0.FreeBytes {
		t.Fatalf("the second datastore should be the roomiest: %+v", c.Datastores)
	}
	createTagProfile(ctx, t, s, "gold", "tier", "gold")
	folder, err := s.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project (p1)", "Instances")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := s.CreateVM(ctx, vcenter.VMSpec{Name: "inst", NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest", Folder: folder,
		ResourcePool: c.ResourcePool, Datastore: ds0.Ref})
	if err != nil {
		t.Fatal(err)
	}
	v := volumeSpec{ID: "7f2e9b1c-3d4a-4b5c-8d6e-9f0a1b2c3d4e", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	// made before the volume's type had a profile: on the roomiest datastore
	if _, err := d.createBacking(ctx, v, vcenter.Ref{}); err != nil {
		t.Fatal(err)
	}
	v.StorageProfile = "gold"
	tagDatastore(ctx, t, s, ds0.Ref, "tier", "gold")
	connector := map[string]any{"instance": inst.Ref.Value}
	for _, step := range []string{"not compliant: relocated", "compliant: stays"} {
		b, err := d.connection(ctx, v, connector)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if len(b.Datastores) == 0 || b.Datastores[0] != ds0.Ref || !clusterHasHost(c, b.Host) {
			t.Errorf("%s: backing on %v (host %s), want on %s of cluster %s", step, b.Datastores, b.Host.Value, ds0.Name, c.Name)
		}
	}
}
