//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
	"github.com/vcagent/vcagent/integration/cp"
)

// TestSnapshotShelveUnshelve drives the agent's snapshot and shelve through
// the real nova API: createImage makes an active streamOptimized image in
// glance with the VMware driver's properties, a server booted from it is
// ACTIVE with the original's disk content; shelve ends SHELVED_OFFLOADED
// with no VM and no allocations left, unshelve brings the server back
// ACTIVE on a new VM with the same disk, and the shelve image is deleted.
// The instance actions show the compute's events as successes.
func TestSnapshotShelveUnshelve(t *testing.T) {
	ctrl, vc, host, _ := computeHostWithImage(t, "vcagent-snap-",
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2", "VCAGENT_NOTIFICATION_FORMAT=both")
	listener := startPeer(t, []string{"pypeer/nova_notifications.py", "--url", ctrl.TransportURL, "--pool", "vcagent-" + host})
	ctx := context.Background()
	gh := http.Header{ctrl.AuthHeader: {ctrl.Token}}
	suffix := fmt.Sprint(time.Now().UnixNano() % 1000000)

	// A flavor without a root disk size keeps the disk at the image's 1 MiB,
	// so that the disks compare byte for byte.
	flavorID := "vcagent-snap-" + suffix
	if _, err := ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
		"name": flavorID, "id": flavorID, "vcpus": 1, "ram": 64, "disk": 0,
	}}); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ctrl.NovaDELETE(ctx, "/flavors/"+flavorID) }()

	// An image whose bytes are not all zero.
	raw := vmdktest.Raw(1 << 20)
	img, err := ctrl.Do(ctx, "POST", ctrl.GlanceURL+"/v2/images", map[string]any{
		"name": "vcagent-snap-src", "disk_format": "vmdk", "container_format": "bare",
		"vmware_disktype": "preallocated", "vmware_adaptertype": "lsiLogic",
	}, gh)
	if err != nil {
		t.Fatal(err)
	}
	image := img["id"].(string)
	if _, err := ctrl.Do(ctx, "PUT", ctrl.GlanceURL+"/v2/images/"+image+"/file", raw,
		http.Header{ctrl.AuthHeader: {ctrl.Token}, "Content-Type": {"application/octet-stream"}}); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ctrl.Do(ctx, "DELETE", ctrl.GlanceURL+"/v2/images/"+image, nil, gh) }()

	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc := clusters[0].Datacenter
	boot := func(name, imageRef string) string {
		t.Helper()
		t0 := time.Now()
		created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
			"name": name, "imageRef": imageRef, "flavorRef": flavorID, "networks": "none", "host": host,
		}})
		if err != nil {
			t.Fatal(err)
		}
		id := created["server"].(map[string]any)["id"].(string)
		t.Cleanup(func() {
			if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil && cp.StatusCode(err) != http.StatusNotFound {
				t.Errorf("delete: %v", err)
			}
			// The agent must still run to delete it.
			for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
				if _, err := ctrl.NovaGET(ctx, "/servers/"+id); cp.StatusCode(err) == http.StatusNotFound {
					return
				}
			}
			t.Errorf("server %s not deleted within 60 s", id)
		})
		waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
		t.Logf("boot %s from %s: ACTIVE after %s", name, imageRef, time.Since(t0).Round(time.Millisecond))
		return id
	}
	rootDisk := func(id string) (vcenter.VM, []byte) {
		t.Helper()
		vm, err := vc.FindVMByInstanceUUID(ctx, id)
		if err != nil {
			t.Fatalf("no VM for server %s: %v", id, err)
		}
		if len(vm.Disks) != 1 {
			t.Fatalf("VM of %s has disks %+v", id, vm.Disks)
		}
		p, err := vcenter.ParseDatastorePath(strings.TrimSuffix(vm.Disks[0].FileName, ".vmdk") + "-flat.vmdk")
		if err != nil {
			t.Fatal(err)
		}
		data, err := vc.Download(ctx, dc, p, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		return vm, data
	}
	act := func(id string, body map[string]any, status string) (map[string]any, map[string]any) {
		t.Helper()
		t0 := time.Now()
		res, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", body)
		if err != nil {
			t.Fatalf("%v: %v", keys(body), err)
		}
		time.Sleep(100 * time.Millisecond)
		s := waitServer(t, ctrl, id, 120*time.Second, settled(status))
		t.Logf("%v: %s after %s", keys(body), status, time.Since(t0).Round(time.Millisecond))
		return res, s
	}
	getImage := func(id string) (map[string]any, error) {
		return ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+id, nil, gh)
	}

	id := boot("snap-a", image)
	_, orig := rootDisk(id)
	if !bytes.Equal(orig, raw) {
		t.Fatalf("the server's disk (%d bytes) does not hold the image", len(orig))
	}

	// Snapshot.
	t0 := time.Now()
	res, _ := act(id, map[string]any{"createImage": map[string]any{"name": "snap-a-image"}}, "ACTIVE")
	snapID, _ := res["image_id"].(string)
	if snapID == "" {
		t.Fatalf("createImage answered %v", res)
	}
	defer func() { _, _ = ctrl.Do(ctx, "DELETE", ctrl.GlanceURL+"/v2/images/"+snapID, nil, gh) }()
	var snap map[string]any
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if snap, err = getImage(snapID); err != nil {
			t.Fatal(err)
		}
		if snap["status"] == "active" || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("snapshot image %s active after %s, %v bytes", snapID, time.Since(t0).Round(time.Millisecond), snap["size"])
	for k, want := range map[string]any{"status": "active", "disk_format": "vmdk", "container_format": "bare",
		"vmware_disktype": "streamOptimized", "vmware_adaptertype": "lsiLogic", "image_type": "snapshot", "vmware_image_version": "1"} {
		if snap[k] != want {
			t.Errorf("snapshot image %s = %v, want %v", k, snap[k], want)
		}
	}
	if vm, err := vc.FindVMByInstanceUUID(ctx, id); err != nil || vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("VM after the snapshot: %+v, %v; want powered on", vm, err)
	}
	waitActionEvent(t, ctrl, id, "createImage", "compute_snapshot_instance", "Success")

	// The snapshot boots, with the original's disk.
	b := boot("snap-b", snapID)
	if _, data := rootDisk(b); !bytes.Equal(data, orig) {
		t.Errorf("the server booted from the snapshot has another disk (%d bytes, want %d)", len(data), len(orig))
	}

	// A snapshot that fails in vCenter (the disk's data gone from the
	// datastore): the image nova-api made is deleted (delete_image_on_error),
	// the compute event is an error, the server stays ACTIVE.
	vmB, _ := rootDisk(b)
	flatB, err := vcenter.ParseDatastorePath(strings.TrimSuffix(vmB.Disks[0].FileName, ".vmdk") + "-flat.vmdk")
	if err != nil {
		t.Fatal(err)
	}
	if err := vc.DeleteDatastoreFile(ctx, dc, flatB); err != nil {
		t.Fatal(err)
	}
	res, _ = act(b, map[string]any{"createImage": map[string]any{"name": "snap-b-broken"}}, "ACTIVE")
	broken, _ := res["image_id"].(string)
	waitActionEvent(t, ctrl, b, "createImage", "compute_snapshot_instance", "Error")
	if im, err := getImage(broken); err == nil && im["status"] != "deleted" {
		t.Errorf("image %s of the failed snapshot: %v, want deleted", broken, im["status"])
		_, _ = ctrl.Do(ctx, "DELETE", ctrl.GlanceURL+"/v2/images/"+broken, nil, gh)
	} else if err != nil && cp.StatusCode(err) != http.StatusNotFound {
		t.Error(err)
	}

	// Shelve: snapshot, VM gone, offloaded. Shelve images of earlier runs
	// may carry the same name.
	shelvedName := "/v2/images?name=snap-a-shelved"
	earlier := map[any]bool{}
	if imgs, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+shelvedName, nil, gh); err == nil {
		for _, im := range asList(imgs, "images") {
			earlier[im["id"]] = true
		}
	}
	act(id, map[string]any{"shelve": nil}, "SHELVED_OFFLOADED")
	// The host is cleared by a save after the one that sets the state.
	s := waitServer(t, ctrl, id, 10*time.Second, func(s map[string]any) bool {
		return settled("SHELVED_OFFLOADED")(s) && (s["OS-EXT-SRV-ATTR:host"] == nil || s["OS-EXT-SRV-ATTR:host"] == "")
	})
	if _, err := vc.FindVMByInstanceUUID(ctx, id); err == nil {
		t.Errorf("a VM is left in vCenter for the offloaded server")
	}
	if h := s["OS-EXT-SRV-ATTR:host"]; h != nil && h != "" {
		t.Errorf("offloaded server still on host %v", h)
	}
	noAllocations(t, ctrl, id)
	waitActionEvent(t, ctrl, id, "shelve", "compute_shelve_instance", "Success")
	imgs, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+shelvedName, nil, gh)
	if err != nil {
		t.Fatal(err)
	}
	var shelved string
	for _, im := range asList(imgs, "images") {
		if !earlier[im["id"]] && im["status"] == "active" && im["vmware_disktype"] == "streamOptimized" {
			shelved = im["id"].(string)
		}
	}
	if shelved == "" {
		t.Errorf("no active shelve image snap-a-shelved in glance: %v", imgs)
	}

	// Unshelve onto this host. nova Zed's unshelve to a host (2.91) fails
	// in the scheduler (Destination without a node: "No default set for
	// field node"), so the host gets an availability zone of its own
	// (2.77) instead.
	agg, err := ctrl.NovaPOST(ctx, "/os-aggregates", map[string]any{"aggregate": map[string]any{"name": flavorID, "availability_zone": flavorID}})
	if err != nil {
		t.Fatal(err)
	}
	aggID := fmt.Sprint(agg["aggregate"].(map[string]any)["id"])
	defer func() {
		_, _ = ctrl.NovaPOST(ctx, "/os-aggregates/"+aggID+"/action", map[string]any{"remove_host": map[string]any{"host": host}})
		_, _ = ctrl.NovaDELETE(ctx, "/os-aggregates/"+aggID)
	}()
	if _, err := ctrl.NovaPOST(ctx, "/os-aggregates/"+aggID+"/action", map[string]any{"add_host": map[string]any{"host": host}}); err != nil {
		t.Fatal(err)
	}
	act(id, map[string]any{"unshelve": map[string]any{"availability_zone": flavorID}}, "ACTIVE")
	if s := waitServer(t, ctrl, id, time.Second, settled("ACTIVE")); s["OS-EXT-SRV-ATTR:host"] != host {
		t.Errorf("unshelved onto %v, want %s", s["OS-EXT-SRV-ATTR:host"], host)
	}
	vm, data := rootDisk(id)
	if vm.PowerState != vcenter.PowerStateOn || !bytes.Equal(data, orig) {
		t.Errorf("unshelved VM %s (%s): disk equal %v", vm.Ref, vm.PowerState, bytes.Equal(data, orig))
	}
	waitActionEvent(t, ctrl, id, "unshelve", "compute_unshelve_instance", "Success")
	if shelved != "" {
		if im, err := getImage(shelved); err == nil && im["status"] != "deleted" {
			t.Errorf("shelve image %s left after the unshelve: %v", shelved, im["status"])
		} else if err != nil && cp.StatusCode(err) != http.StatusNotFound {
			t.Error(err)
		}
	}

	// The actions nova recorded.
	acts, err := ctrl.NovaGET(ctx, "/servers/"+id+"/os-instance-actions")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"create": "compute__do_build_and_run_instance", "createImage": "compute_snapshot_instance",
		"shelve": "compute_shelve_instance", "unshelve": "compute_unshelve_instance"}
	for _, a := range asList(acts, "instanceActions") {
		ev, ok := want[fmt.Sprint(a["action"])]
		if !ok {
			continue
		}
		delete(want, fmt.Sprint(a["action"]))
		detail, err := ctrl.NovaGET(ctx, fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
		if err != nil {
			t.Fatal(err)
		}
		ia, _ := detail["instanceAction"].(map[string]any)
		found := false
		for _, e := range asList(ia, "events") {
			if e["result"] != "Success" {
				t.Errorf("action %v: event %v %v", a["action"], e["event"], e["result"])
			}
			found = found || e["event"] == ev
		}
		if !found {
			t.Errorf("action %v has no %s event: %v", a["action"], ev, ia["events"])
		}
	}
	if len(want) > 0 {
		t.Errorf("actions missing: %v", want)
	}

	// The notifications of the first server, up to unshelve.end: both
	// kinds in nova-compute's order, the versioned payloads loading into
	// nova's classes, the snapshot's with its image.
	var legacy, versioned []string
	deadline := time.Now().Add(60 * time.Second)
	for !slices.Contains(versioned, "instance.unshelve.end") || !slices.Contains(legacy, "compute.instance.unshelve.end") {
		if time.Now().After(deadline) {
			t.Fatalf("no unshelve.end within 60 s; legacy %v, versioned %v", legacy, versioned)
		}
		n := listener.next(t, time.Until(deadline))
		et := fmt.Sprint(n["event_type"])
		p, _ := n["payload"].(map[string]any)
		if n["topic"] == "notifications" {
			if p["instance_id"] == id {
				legacy = append(legacy, et)
			}
			continue
		}
		data, _ := p["nova_object.data"].(map[string]any)
		if data["uuid"] != id {
			continue
		}
		versioned = append(versioned, et)
		if n["load_error"] != nil {
			t.Errorf("%s: payload does not load into nova's classes: %v\n%v", et, n["load_error"], n["payload"])
		}
		want := "InstanceActionPayload"
		switch {
		case strings.HasPrefix(et, "instance.create."):
			want = "InstanceCreatePayload"
		case strings.HasPrefix(et, "instance.snapshot."):
			want = "InstanceActionSnapshotPayload"
			if data["snapshot_image_id"] != snapID {
				t.Errorf("%s: snapshot_image_id %v, want %s", et, data["snapshot_image_id"], snapID)
			}
		}
		if n["payload_class"] != want {
			t.Errorf("%s: payload class %v, want %s", et, n["payload_class"], want)
		}
	}
	wantVersioned := []string{
		"instance.create.start", "instance.create.end",
		"instance.snapshot.start", "instance.snapshot.end",
		"instance.shelve.start", "instance.shelve.end",
		"instance.shelve_offload.start", "instance.shelve_offload.end",
		"instance.unshelve.start", "instance.unshelve.end",
	}
	if !slices.Equal(versioned, wantVersioned) {
		t.Errorf("versioned notifications\n got %v\nwant %v", versioned, wantVersioned)
	}
	var wantLegacy []string
	for _, v := range wantVersioned {
		wantLegacy = append(wantLegacy, "compute."+v)
	}
	if !slices.Equal(legacy, wantLegacy) {
		t.Errorf("legacy notifications\n got %v\nwant %v", legacy, wantLegacy)
	}
}
