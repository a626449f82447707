package volume

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// simDriver is the VMDK driver on a fresh embedded vCenter (two clusters
// of two hosts, two shared datastores).
func simDriver(t *testing.T, re *regexp.Regexp) (*vmdkDriver, *vcenter.Session) {
	t.Helper()
	ctx := t.Context()
	sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{Clusters: 2, HostsPerCluster: 2, Datastores: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	s, err := vcenter.New(vcenter.Config{URL: sim.URL().String(), Insecure: true, KeepAlive: time.Hour}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Logout(context.Background()) })
	d := newVMDKDriver(s, nil, re, "Volumes", zerolog.Nop())
	d.pol = newStoragePolicies(vcenter.NewStoragePolicies(s))
	return d, s
}

// TestDriverLazyBackingAtConnection: a volume gets its backing at its first
// connection, on a datastore of the connector's instance's host, in
// OpenStack/Project (<id>)/Volumes, as the VMDK driver lays it out; the
// second connection finds the same backing; extend grows its disk; delete
// removes it, and deleting again is fine.
func TestDriverLazyBackingAtConnection(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil || len(clusters) != 2 {
		t.Fatalf("clusters: %v %v", clusters, err)
	}
	// an instance VM on the second cluster's second host
	c := clusters[1]
	folder, err := s.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project (p1)", "Instances")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := s.CreateVM(ctx, vcenter.VMSpec{Name: "inst", NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest", Folder: folder,
		ResourcePool: c.ResourcePool, Datastore: c.Datastores[0].Ref})
	if err != nil {
		t.Fatal(err)
	}
	v := volumeSpec{ID: "0b7e1f5a-3c2d-4e6f-8a9b-0c1d2e3f4a5b", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	if _, ok, err := d.findBacking(ctx, v.ID); ok || err != nil {
		t.Fatalf("a backing before the connection: %v %v", ok, err)
	}
	before := s.Calls()
	b, err := d.connection(ctx, v, map[string]any{"instance": inst.Ref.Value, "host": "compute1"})
	if err != nil {
		t.Fatal(err)
	}
	calls := int64(0)
	for k, n := range s.Calls() {
		calls += n - before[k]
	}
	t.Logf("first connection (backing created): %d vCenter calls", calls)
	if b, err = s.GetBacking(ctx, b.Ref); err != nil {
		t.Fatal(err)
	}
	if b.Name != "volume-"+v.ID || b.InstanceUUID != v.ID || b.VolumeID != v.ID || b.DiskCapacityKB != 1<<20 || !clusterHasHost(c, b.Host) {
		t.Errorf("backing %+v (instance on %v)", b, inst.Host)
	}
	vm, err := s.GetVM(ctx, b.Ref)
	if err != nil {
		t.Fatal(err)
	}
	vf, err := s.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project (p1)", "Volumes")
	if err != nil || vm.Folder != vf {
		t.Errorf("backing in folder %v, want %v (%v)", vm.Folder, vf, err)
	}
	if vm.ExtraConfig["cinder.volume.id"] != v.ID || vm.ManagedByKey != "org.openstack.storage" || vm.ManagedByType != "volume" {
		t.Errorf("backing extraConfig %v managedBy %s/%s", vm.ExtraConfig, vm.ManagedByKey, vm.ManagedByType)
	}
	again, err := d.connection(ctx, v, map[string]any{"instance": inst.Ref.Value})
	if err != nil || again.Ref != b.Ref {
		t.Fatalf("second connection: %v, %v; want %v", again.Ref, err, b.Ref)
	}

	if err := d.extendVolume(ctx, v.ID, 3); err != nil {
		t.Fatal(err)
	}
	if nb, err := s.GetBacking(ctx, b.Ref); err != nil || nb.DiskCapacityKB != 3<<20 {
		t.Errorf("after extend: %d KiB, %v", nb.DiskCapacityKB, err)
	}
	// no backing: extend is a no-op
	if err := d.extendVolume(ctx, "0b7e1f5a-3c2d-4e6f-8a9b-00000000ffff", 5); err != nil {
		t.Errorf("extend without backing: %v", err)
	}

	// snapshot (template format), volume from it, clone full and linked
	loc, err := d.createSnapshot(ctx, v, "s1")
	if want := "/" + c.Datacenter + "/vm/OpenStack/Project (p1)/Volumes/Snapshots/snapshot-s1"; err != nil || loc != want {
		t.Fatalf("createSnapshot = %q, %v; want %q", loc, err, want)
	}
	tmpl, err := s.FindByInventoryPath(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	fromSnap := volumeSpec{ID: "0b7e1f5a-3c2d-4e6f-8a9b-0c1d2e3f4a5c", SizeGB: 4, ProjectID: "p1", DiskType: "thin", CloneType: "full"}
	if err := d.cloneFrom(ctx, fromSnap, tmpl, 3, true); err != nil {
		t.Fatal(err)
	}
	if nb, _, err := d.findBacking(ctx, fromSnap.ID); err != nil || nb.Template || nb.DiskCapacityKB != 4<<20 || nb.Name != "volume-"+fromSnap.ID {
		t.Errorf("volume from snapshot: %+v, %v", nb, err)
	}
	linked := volumeSpec{ID: "0b7e1f5a-3c2d-4e6f-8a9b-0c1d2e3f4a5d", SizeGB: 3, ProjectID: "p1", DiskType: "thin", CloneType: "linked"}
	if err := d.cloneFrom(ctx, linked, b.Ref, 3, false); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := d.findBacking(ctx, linked.ID); !ok || err != nil {
		t.Errorf("linked clone: %v %v", ok, err)
	}
	if _, err := s.FindBackingSnapshot(ctx, b.Ref, "temp-snapshot-"+linked.ID); err == nil {
		t.Error("the linked clone's temporary snapshot is left")
	}
	if err := d.deleteSnapshot(ctx, loc); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindByInventoryPath(ctx, loc); err == nil {
		t.Error("snapshot template left after delete")
	}
	if err := d.deleteSnapshot(ctx, loc); err != nil {
		t.Errorf("deleting a snapshot again: %v", err)
	}

	// accept_transfer: the backing moves to the new project's folder
	if err := d.acceptTransfer(ctx, v.ID, "p2"); err != nil {
		t.Fatal(err)
	}
	p2, err := s.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project (p2)", "Volumes")
	if err != nil {
		t.Fatal(err)
	}
	if moved, err := s.GetBacking(ctx, b.Ref); err != nil || moved.Folder != p2 {
		t.Errorf("after accept_transfer: folder %v, %v; want %v", moved.Folder, err, p2)
	}

	for _, id := range []string{v.ID, v.ID, fromSnap.ID, linked.ID} {
		if err := d.deleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, _ := d.findBacking(ctx, v.ID); ok {
		t.Error("backing left after delete")
	}
}

// TestDriverPlacement: the datastore regex, free space, the storage
// profile's compliance and the avoided datastore pick the datastore (the
// one with the most free space among the rest); none fits:
// NoValidDatastore; a profile vCenter does not have:
// ProfileNotFoundException.
func TestDriverPlacement(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds0, ds1 := clusters[0].Datastores[0], clusters[0].Datastores[1]
	if ds1.FreeBytes <= ds0.FreeBytes {
		t.Fatalf("the simulator's second datastore should have more free space: %+v %+v", ds0, ds1)
	}
	createTagProfile(ctx, t, s, "gold", "tier", "gold")
	createTagProfile(ctx, t, s, "empty", "tier", "none")
	tagDatastore(ctx, t, s, ds0.Ref, "tier", "gold")
	only0 := regexp.MustCompile("^" + regexp.QuoteMeta(ds0.Name) + "$")
	for _, tc := range []struct {
		name    string
		re      *regexp.Regexp
		req     placementRequest
		want    string // datastore name; "" when none fits
		errText string
	}{
		{"most free space", nil, placementRequest{SizeGB: 1}, ds1.Name, ""},
		{"regex matching nothing", regexp.MustCompile("^none$"), placementRequest{SizeGB: 1}, "", "no valid datastore"},
		{"regex", only0, placementRequest{SizeGB: 1}, ds0.Name, ""},
		{"too large", nil, placementRequest{SizeGB: 1 << 20}, "", "no valid datastore"},
		{"profile", nil, placementRequest{SizeGB: 1, Profile: "gold"}, ds0.Name, ""},
		{"profile, avoided", nil, placementRequest{SizeGB: 1, Profile: "gold", Avoid: ds0.Ref}, "", "compliant with storage profile"},
		{"avoided", nil, placementRequest{SizeGB: 1, Avoid: ds1.Ref}, ds0.Name, ""},
		{"profile without datastores", nil, placementRequest{SizeGB: 1, Profile: "empty"}, "", "no valid datastore"},
		{"unknown profile", nil, placementRequest{SizeGB: 1, Profile: "bronze"}, "", "Storage profile: bronze not found."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d.dsRegex = tc.re
			pl, err := d.selectPlacement(ctx, tc.req)
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("placement %+v, %v; want an error with %q", pl.Datastore, err, tc.errText)
				}
				return
			}
			if err != nil || pl.Datastore.Name != tc.want || pl.ResourcePool.IsZero() {
				t.Errorf("placement %+v, %v; want %s", pl, err, tc.want)
			}
		})
	}
}

// TestPerGBQoS: cinder's per-GB QoS options.
func TestPerGBQoS(t *testing.T) {
	got := perGBQoS(map[string]string{"read_iops_sec_per_gb": "10", "read_iops_sec_per_gb_min": "50", "write_iops_sec_per_gb": "100", "write_iops_sec_max": "300", "x": "y"}, 4)
	want := map[string]any{"read_iops_sec": int64(50), "write_iops_sec": int64(300), "x": "y"}
	if len(got) != len(want) {
		t.Fatalf("perGBQoS = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("perGBQoS[%s] = %v, want %v", k, got[k], v)
		}
	}
}
