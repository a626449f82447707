//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// attachedVolume is a volume attached to a server through nova, with a
// marker written into its disk's data file (the flat extent of the
// backing's disk) to read back after each move.
type attachedVolume struct {
	ctrl    *cp.ControlPlane
	vc      *vcenter.Session
	id      string
	backing vcenter.Backing
	flat    vcenter.DatastorePath
	marker  []byte
	// capacityKB is the size of the volume's disk on the VM at the first
	// check (-1 before it).
	capacityKB int64
}

// attachMarkedVolume makes a volume of the type, attaches it to the
// server through nova and writes the marker into its disk.
func attachMarkedVolume(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, vc *vcenter.Session, server, name, typ string) *attachedVolume {
	t.Helper()
	vol := createTestVolume(ctx, t, ctrl, name, typ)
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/os-volume_attachments", map[string]any{"volumeAttachment": map[string]any{"volumeId": vol}}); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "available", "reserved", "attaching"); err != nil || st != "in-use" {
		t.Fatalf("volume %s after attach: %q, %v; want in-use", vol, st, err)
	}
	b, err := vc.FindBacking(ctx, vol)
	if err != nil {
		t.Fatalf("the volume's backing: %v", err)
	}
	p, err := vcenter.ParseDatastorePath(b.DiskPath)
	if err != nil {
		t.Fatal(err)
	}
	a := &attachedVolume{ctrl: ctrl, vc: vc, id: vol, backing: b, capacityKB: -1, marker: []byte("vcagent data of volume " + vol + "\n"),
		flat: vcenter.DatastorePath{Datastore: p.Datastore, Path: strings.TrimSuffix(p.Path, ".vmdk") + "-flat.vmdk"}}
	if ok, err := vc.FileExists(ctx, "DC0", a.flat); err != nil || !ok {
		t.Fatalf("the data file %s of the volume's disk: %t, %v", a.flat, ok, err)
	}
	if err := vc.Upload(ctx, "DC0", a.flat, bytes.NewReader(a.marker), int64(len(a.marker))); err != nil {
		t.Fatalf("writing the marker: %v", err)
	}
	return a
}

// checkIntact checks that the backing still owns the volume's disk and
// the disk still holds the marker.
func (a *attachedVolume) checkIntact(ctx context.Context, t *testing.T, stage string) {
	t.Helper()
	if b, err := a.vc.GetBacking(ctx, a.backing.Ref); err != nil || b.DiskPath != a.backing.DiskPath {
		t.Errorf("%s: the backing %+v, %v; want it with its disk %s", stage, b, err, a.backing.DiskPath)
	}
	got, err := a.vc.Download(ctx, "DC0", a.flat, 1<<20)
	if err != nil || !bytes.Equal(got, a.marker) {
		t.Errorf("%s: the volume's data %q, %v; want %q", stage, got, err, a.marker)
	}
}

// checkAttached checks that the volume is in-use with one attachment, to
// the server, that the server's VM has the backing's disk (extraConfig
// volume-<id> set) and that the data is intact; it returns cinder's
// attachment id.
func (a *attachedVolume) checkAttached(ctx context.Context, t *testing.T, stage, server string) string {
	t.Helper()
	if st, err := a.ctrl.CinderVolumeStatus(ctx, a.id, "reserved", "attaching", "detaching"); err != nil || st != "in-use" {
		t.Errorf("%s: volume %s %q, %v; want in-use", stage, a.id, st, err)
	}
	g, err := a.ctrl.CinderGET(ctx, "/volumes/"+a.id)
	if err != nil {
		t.Fatal(err)
	}
	atts, _ := g["volume"].(map[string]any)["attachments"].([]any)
	att := ""
	if len(atts) == 1 {
		m := atts[0].(map[string]any)
		att = fmt.Sprint(m["attachment_id"])
		if m["server_id"] != server {
			t.Errorf("%s: attachment %v, want one to %s", stage, m, server)
		}
	} else {
		t.Errorf("%s: cinder's attachments of %s: %v; want one", stage, a.id, atts)
	}
	vm, err := a.vc.FindVMByInstanceUUID(ctx, server)
	if err != nil {
		t.Fatalf("%s: the server's VM: %v", stage, err)
	}
	if !vmHasDisk(vm, a.backing.DiskPath) || vm.ExtraConfig["volume-"+a.id] == "" {
		t.Errorf("%s: VM disks %+v, extraConfig volume-%s %q; want the backing's %s attached", stage, vm.Disks, a.id, vm.ExtraConfig["volume-"+a.id], a.backing.DiskPath)
	}
	for _, d := range vm.Disks {
		if d.FileName != a.backing.DiskPath {
			continue
		}
		if a.capacityKB < 0 {
			a.capacityKB = d.CapacityKB
		} else if d.CapacityKB != a.capacityKB {
			t.Errorf("%s: the volume's disk is %d KB, was %d KB: a resize must not touch it", stage, d.CapacityKB, a.capacityKB)
		}
	}
	a.checkIntact(ctx, t, stage)
	return att
}

// TestVolumeSurvivesShelveAndResize: a server with a volume attached
// through nova (a marker written into the volume's disk) is shelved and
// offloaded (its VM destroyed: the volume's disk is detached first and
// the volume stays reserved for the server), unshelved (the volume
// attached to the new VM, in-use), resized to the other cluster and
// confirmed, resized again and reverted (the attachment handed over on
// each side as nova does, the volume in-use at the end of each step with
// its disk untouched by the root disk's resize), rebuilt (the new VM has
// the volume again) and deleted (the volume available, its backing with
// the disk and the marker).
func TestVolumeSurvivesShelveAndResize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	vcEnv, vc := testVCenter(t)
	ctrl, host, typ := volumeComputeAgentOn(ctx, t, vcEnv, "vcagent-volmv-")
	e := newRszEnv(t, ctrl, vc, []string{host}, 2)
	suffix := fmt.Sprint(time.Now().UnixNano() % 1000000)
	var flavors []string
	for i, disk := range []int{2, 3} {
		f := fmt.Sprintf("vcagent-volmv-%d-%s", i, suffix)
		if _, err := ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{"name": f, "id": f, "ram": 128, "vcpus": 1, "disk": disk}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/flavors/"+f) })
		flavors = append(flavors, f)
	}
	s := e.boot(t, "volmv", "42")
	id := s["id"].(string)
	vol := attachMarkedVolume(ctx, t, ctrl, vc, id, "vcagent-volmv", typ)
	att := vol.checkAttached(ctx, t, "attached", id)

	// ---- shelve (offloaded at once): the VM goes, the volume stays the
	// server's (reserved, nova's _terminate_volume_connections)
	step := time.Now()
	e.action(t, id, map[string]any{"shelve": nil})
	waitServer(t, ctrl, id, 180*time.Second, settled("SHELVED_OFFLOADED"))
	t.Logf("shelve offload: %s", time.Since(step).Round(time.Millisecond))
	if _, err := vc.FindVMByInstanceUUID(ctx, id); err == nil {
		t.Errorf("the offloaded server's VM is still in vCenter")
	}
	if st, err := ctrl.CinderVolumeStatus(ctx, vol.id, "in-use", "detaching"); err != nil || st != "reserved" {
		t.Errorf("volume after the shelve offload: %q, %v; want reserved for the server", st, err)
	}
	vol.checkIntact(ctx, t, "shelved offloaded")
	if l, err := ctrl.NovaGET(ctx, "/servers/"+id+"/os-volume_attachments"); err != nil || len(asList(l, "volumeAttachments")) != 1 {
		t.Errorf("nova's attachments of the offloaded server: %v, %v; want the volume", l, err)
	}

	// ---- unshelve: attached to the new VM
	step = time.Now()
	e.action(t, id, map[string]any{"unshelve": nil})
	s = waitServer(t, ctrl, id, 180*time.Second, settled("ACTIVE"))
	t.Logf("unshelve: %s", time.Since(step).Round(time.Millisecond))
	if a := vol.checkAttached(ctx, t, "unshelved", id); a == att {
		t.Errorf("unshelved: attachment %s, want a new one", a)
	}

	// ---- resize to the other cluster, confirmed
	src := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	step = time.Now()
	restore := e.excludeNode(t, src)
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavors[0]}})
	s = waitServer(t, ctrl, id, 180*time.Second, settled("VERIFY_RESIZE"))
	restore()
	if dst := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]); dst == src {
		t.Errorf("resized on node %s, want the other node", dst)
	}
	e.checkVM(t, s, 1, 128, vcenter.PowerStateOn)
	vol.checkAttached(ctx, t, "resized", id)
	e.action(t, id, map[string]any{"confirmResize": nil})
	s = waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "confirmed")
	t.Logf("resize and confirm: %s", time.Since(step).Round(time.Millisecond))
	vol.checkAttached(ctx, t, "resize confirmed", id)

	// ---- resize back to the first cluster, reverted
	src = fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	step = time.Now()
	restore = e.excludeNode(t, src)
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavors[1]}})
	s = waitServer(t, ctrl, id, 180*time.Second, settled("VERIFY_RESIZE"))
	restore()
	vol.checkAttached(ctx, t, "resized again", id)
	e.action(t, id, map[string]any{"revertResize": nil})
	s = waitServer(t, ctrl, id, 180*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "reverted")
	t.Logf("resize and revert: %s", time.Since(step).Round(time.Millisecond))
	if got := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]); got != src {
		t.Errorf("reverted server on node %s, want %s", got, src)
	}
	e.checkVM(t, s, 1, 128, vcenter.PowerStateOn)
	vol.checkAttached(ctx, t, "resize reverted", id)

	// ---- rebuild: the VM is made again from the image, the volume
	// attached to the new one
	step = time.Now()
	e.action(t, id, map[string]any{"rebuild": map[string]any{"imageRef": e.image}})
	waitServer(t, ctrl, id, 180*time.Second, settled("ACTIVE"))
	t.Logf("rebuild: %s", time.Since(step).Round(time.Millisecond))
	vol.checkAttached(ctx, t, "rebuilt", id)

	// ---- delete: the volume is available, its disk intact
	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
		t.Fatal(err)
	}
	waitServerGone(ctx, t, ctrl, id, 90*time.Second)
	if st, err := ctrl.CinderVolumeStatus(ctx, vol.id, "in-use", "detaching"); err != nil || st != "available" {
		t.Errorf("volume after the server's delete: %q, %v; want available", st, err)
	}
	vol.checkIntact(ctx, t, "server deleted")
}

// TestVolumeLiveMigration: a server with a volume live-migrates between
// two agents of one vCenter (the first one also cinder-volume): the
// destination creates the volume's new attachment in
// pre_live_migration, the source deletes the old one after the move, the
// volume stays in-use with one attachment and its disk stays attached to
// the VM with its data; the server's delete leaves it available.
func TestVolumeLiveMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	vcEnv, vc := testVCenter(t)
	ctrl, hostA, typ := volumeComputeAgentOn(ctx, t, vcEnv, "vcagent-vollm-", "VCAGENT_CLUSTERS=DC0_C0")
	hostB := hostA + "b"
	startAgent(t, append(append(computeAgentEnv(ctrl, hostB), vcEnv...), "VCAGENT_CLUSTERS=DC0_C1", cinderEndpointEnv(ctrl))...)
	waitServiceState(t, ctrl, hostB, "up", 90*time.Second)
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	e := newRszEnv(t, ctrl, vc, []string{hostA, hostB}, 2)
	// booted on the volume role's own host: its backend places backings
	// on the datastores of its cluster
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "vollm", "imageRef": e.image, "flavorRef": "42", "networks": "none", "availability_zone": e.az, "host": hostA,
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := created["server"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
	s := waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	srcHost := fmt.Sprint(s["OS-EXT-SRV-ATTR:host"])
	vol := attachMarkedVolume(ctx, t, ctrl, vc, id, "vcagent-vollm", typ)
	att := vol.checkAttached(ctx, t, "attached", id)

	for i := range 2 {
		step := time.Now()
		e.action(t, id, map[string]any{"os-migrateLive": map[string]any{"host": nil, "block_migration": "auto"}})
		s = waitServer(t, ctrl, id, 180*time.Second, func(s map[string]any) bool {
			return settled("ACTIVE")(s) && s["OS-EXT-SRV-ATTR:host"] != srcHost
		})
		e.waitMigration(t, id, "completed")
		t.Logf("live migration %d from %s: %s", i+1, srcHost, time.Since(step).Round(time.Millisecond))
		e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
		a := vol.checkAttached(ctx, t, fmt.Sprintf("live migration %d", i+1), id)
		if a == att {
			t.Errorf("live migration %d: attachment %s, want the destination's new one", i+1, a)
		}
		att = a
		srcHost = fmt.Sprint(s["OS-EXT-SRV-ATTR:host"])
	}

	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
		t.Fatal(err)
	}
	waitServerGone(ctx, t, ctrl, id, 90*time.Second)
	if st, err := ctrl.CinderVolumeStatus(ctx, vol.id, "in-use", "detaching"); err != nil || st != "available" {
		t.Errorf("volume after the server's delete: %q, %v; want available", st, err)
	}
	vol.checkIntact(ctx, t, "server deleted")
}

// TestVolumeBootFromImageVolume: a server booted through nova from a
// volume nova-compute creates from an image (source image, destination
// volume, boot index 0) with a blank volume besides, both
// delete_on_termination: the agent creates both in cinder (the image's
// one from the image), waits for them, attaches them (in-use at /dev/sda
// and /dev/sdb, their backings' disks on the VM, which has no disk of its
// own) and the server is ACTIVE. Shelved, it is offloaded at once (the
// volumes stay reserved for it); unshelved, its VM is made from the
// volumes again. Its delete deletes both volumes.
func TestVolumeBootFromImageVolume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vcEnv, vc := testVCenter(t)
	ctrl, host, typ := volumeComputeAgentOn(ctx, t, vcEnv, "vcagent-volimg-")
	// the host in a zone of its own, so that the unshelve comes back to it
	e := newRszEnv(t, ctrl, vc, []string{host}, 2)
	image := e.image
	start := time.Now()
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "volimg", "flavorRef": "42", "networks": "none", "availability_zone": e.az,
		"block_device_mapping_v2": []any{
			map[string]any{"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume",
				"volume_size": 1, "volume_type": typ, "delete_on_termination": true},
			map[string]any{"boot_index": -1, "source_type": "blank", "destination_type": "volume",
				"volume_size": 1, "volume_type": typ, "delete_on_termination": true},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	server := created["server"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		_, _ = ctrl.NovaDELETE(dctx, "/servers/"+server)
	})
	waitServer(t, ctrl, server, 180*time.Second, settled("ACTIVE"))
	t.Logf("boot from an image volume: ACTIVE after %s", time.Since(start).Round(time.Millisecond))

	l, err := ctrl.NovaGET(ctx, "/servers/"+server+"/os-volume_attachments")
	if err != nil {
		t.Fatal(err)
	}
	as := asList(l, "volumeAttachments")
	byDevice := map[string]string{}
	for _, a := range as {
		byDevice[fmt.Sprint(a["device"])] = fmt.Sprint(a["volumeId"])
	}
	root, blank := byDevice["/dev/sda"], byDevice["/dev/sdb"]
	if len(as) != 2 || root == "" || blank == "" {
		t.Fatalf("nova's attachments %v: want the created volumes at /dev/sda and /dev/sdb", as)
	}
	vm, err := vc.FindVMByInstanceUUID(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 2 || vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("VM %s with disks %+v: want it on with the two volumes' disks", vm.PowerState, vm.Disks)
	}
	for _, v := range []string{root, blank} {
		g, err := ctrl.CinderGET(ctx, "/volumes/"+v)
		if err != nil {
			t.Fatal(err)
		}
		cv, _ := g["volume"].(map[string]any)
		if cv["status"] != "in-use" || cv["volume_type"] != typ || num(cv["size"]) != 1 {
			t.Errorf("volume %s: status %v, type %v, size %v; want in-use, %s, 1", v, cv["status"], cv["volume_type"], cv["size"], typ)
		}
		b, err := vc.FindBacking(ctx, v)
		if err != nil {
			t.Errorf("the backing of %s: %v", v, err)
			continue
		}
		if !vmHasDisk(vm, b.DiskPath) || vm.ExtraConfig["volume-"+v] == "" {
			t.Errorf("VM disks %+v: want %s's %s attached", vm.Disks, v, b.DiskPath)
		}
	}
	g, err := ctrl.CinderGET(ctx, "/volumes/"+root)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := g["volume"].(map[string]any)
	if meta, _ := cv["volume_image_metadata"].(map[string]any); cv["bootable"] != "true" || meta["image_id"] != image {
		t.Errorf("root volume: bootable %v, image metadata %v; want it made from %s", cv["bootable"], cv["volume_image_metadata"], image)
	}
	if g, err := ctrl.CinderGET(ctx, "/volumes/"+blank); err == nil {
		if name := g["volume"].(map[string]any)["name"]; name != server+"-blank-vol" {
			t.Errorf("blank volume's name %v, want %s-blank-vol", name, server)
		}
	}

	// ---- shelve (a volume-backed server is offloaded at once) and
	// unshelve: the VM goes, the volumes stay reserved for the server;
	// the new VM is made from them again
	step := time.Now()
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/action", map[string]any{"shelve": nil}); err != nil {
		t.Fatal(err)
	}
	waitServer(t, ctrl, server, 120*time.Second, settled("SHELVED_OFFLOADED"))
	t.Logf("shelve offload of the volume-backed server: %s", time.Since(step).Round(time.Millisecond))
	if _, err := vc.FindVMByInstanceUUID(ctx, server); err == nil {
		t.Errorf("the offloaded server's VM is still in vCenter")
	}
	for _, v := range []string{root, blank} {
		if st, err := ctrl.CinderVolumeStatus(ctx, v, "in-use", "detaching"); err != nil || st != "reserved" {
			t.Errorf("volume %s after the shelve offload: %q, %v; want reserved", v, st, err)
		}
	}
	step = time.Now()
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/action", map[string]any{"unshelve": nil}); err != nil {
		t.Fatal(err)
	}
	waitServer(t, ctrl, server, 120*time.Second, settled("ACTIVE"))
	t.Logf("unshelve of the volume-backed server: %s", time.Since(step).Round(time.Millisecond))
	if vm, err = vc.FindVMByInstanceUUID(ctx, server); err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 2 || vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("unshelved VM %s with disks %+v: want it on with the two volumes' disks", vm.PowerState, vm.Disks)
	}
	for _, v := range []string{root, blank} {
		if st, err := ctrl.CinderVolumeStatus(ctx, v, "reserved", "attaching"); err != nil || st != "in-use" {
			t.Errorf("volume %s after the unshelve: %q, %v; want in-use", v, st, err)
		}
		if b, err := vc.FindBacking(ctx, v); err != nil || !vmHasDisk(vm, b.DiskPath) {
			t.Errorf("unshelved VM disks %+v: want %s's backing disk (%v)", vm.Disks, v, err)
		}
	}

	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server); err != nil {
		t.Fatal(err)
	}
	waitServerGone(ctx, t, ctrl, server, 90*time.Second)
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer dcancel()
	for _, v := range []string{root, blank} {
		if st, err := ctrl.CinderVolumeStatus(dctx, v, "in-use", "detaching", "available", "deleting"); err != nil || st != "deleted" {
			t.Errorf("volume %s after the server's delete: %q, %v; want it deleted (delete_on_termination)", v, st, err)
		}
	}
}
