//go:build integration

package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// TestVolumeOps: the VMDK driver's volumes on vCenter through the real
// cinder-api and cinder-scheduler, the agent the only cinder-volume of its
// backend: a volume is created lazily (no backing), gets its backing with
// the driver's layout at its first connection (os-initialize_connection
// with a connector naming an instance: on that instance's cluster), is
// attached and detached through the attachments API (attaching, in-use,
// available), extended (size in the API and on the backing's disk, quota
// committed, volume.resize.* sent), snapshotted (a template in
// Volumes/Snapshots, provider_location its inventory path), a volume is
// made from the snapshot and another cloned from the volume (their own
// backings), and everything deleted again (backings and template gone,
// quota back to where it was).
func TestVolumeOps(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vcEnv, vc := testVCenter(t)
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	host := "vcagent-volops-" + suffix
	// a backend name of its own: other tests' backends cannot take its volumes
	backendName := "volops" + suffix
	backend := host + "@" + backendName
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env,
		"VCAGENT_ROLES=compute,volume",
		"VCAGENT_VOLUME_BACKEND="+backendName,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB,
		"VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2",
	)
	// what earlier tests left in the shared project's quota (volumes of a
	// stopped backend, a killed agent's) is the baseline; the test's own
	// operations must keep the quota and the resources in step
	baseline := quotaOffset(ctx, t, ctrl)
	raw := rawPublisher(t, ctrl.TransportURL)
	notifications := raw.replyQueue(t)
	for _, key := range []string{"notifications.info", "notifications.error"} {
		if err := raw.ch.QueueBind(notifications.name, key, ctrl.CinderExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	agent := startAgent(t, env...)
	opsURL := agent.opsURL(t)
	waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	// the scheduler must have this backend's capabilities before it places on it
	waitPool(ctx, t, ctrl, backend+"#"+backendName)
	typ := volumeTypeFor(ctx, t, ctrl, backendName)

	clusters, err := vc.Clusters(ctx)
	if err != nil || len(clusters) < 2 {
		t.Fatalf("simulator clusters: %v, %v", clusters, err)
	}
	timings := map[string]time.Duration{}
	calls := map[string]int{}
	lastCalls := vcenterCalls(t, opsURL)
	// mark records the vCenter calls the agent made since the last mark
	// (the periodic capability and compute reports included)
	mark := func(op string) {
		n := vcenterCalls(t, opsURL)
		calls[op] = n - lastCalls
		lastCalls = n
	}
	var resources []string // every volume and snapshot made, for the workers check

	create := func(t *testing.T, op string, body map[string]any) (string, map[string]any) {
		t.Helper()
		body["volume_type"] = typ
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": body})
		if err != nil {
			t.Fatal(err)
		}
		id, _ := v["volume"].(map[string]any)["id"].(string)
		resources = append(resources, id)
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id); err == nil {
				_, _ = ctrl.CinderVolumeStatus(dctx, id, "deleting", "available", "error")
			}
		})
		st, err := ctrl.CinderVolumeStatus(ctx, id, "creating")
		if err != nil {
			t.Fatal(err)
		}
		got, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			t.Fatal(err)
		}
		vol, _ := got["volume"].(map[string]any)
		if st != "available" {
			m, _ := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
			t.Fatalf("volume %s: %q, want available; %v; messages %v", id, st, vol, m)
		}
		timings[op] = time.Since(start)
		mark(op)
		return id, vol
	}

	id, vol := create(t, "create", map[string]any{"name": "vcagent-volops", "size": 1})
	project, _ := vol["os-vol-tenant-attr:tenant_id"].(string)
	if _, err := vc.FindBacking(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
		t.Fatalf("volume %s has a backing right after create (lazy create): %v", id, err)
	}

	// an instance VM on the second cluster: the backing goes next to it
	c := clusters[1]
	instFolder, err := vc.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project ("+project+")", "Instances")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := vc.CreateVM(ctx, vcenter.VMSpec{Name: "volops-instance", NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest",
		Folder: instFolder, ResourcePool: c.ResourcePool, Datastore: c.Datastores[0].Ref})
	if err != nil {
		t.Fatal(err)
	}
	connector := map[string]any{"ip": "127.0.0.1", "host": "compute-volops", "instance": inst.Ref.Value, "initiator": nil}

	var backing vcenter.Backing
	t.Run("initialize-connection", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		r, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-initialize_connection": map[string]any{"connector": connector}})
		if err != nil {
			t.Fatal(err)
		}
		timings["initialize_connection"] = time.Since(start)
		mark("initialize_connection")
		ci, _ := r["connection_info"].(map[string]any)
		data, _ := ci["data"].(map[string]any)
		if ci["driver_volume_type"] != "vmdk" || data["volume_id"] != id || data["name"] != "volume-"+id || data["access_mode"] != "rw" || data["encrypted"] != false {
			t.Errorf("connection_info %v", ci)
		}
		backing, err = vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatalf("no backing after initialize_connection: %v", err)
		}
		if data["volume"] != backing.Ref.Value {
			t.Errorf("connection_info volume %v, backing %s", data["volume"], backing.Ref.Value)
		}
		checkBacking(ctx, t, vc, backing, id, project, 1)
		if !inCluster(c, backing.Host) {
			t.Errorf("backing on host %v, not in the instance's cluster %s", backing.Host, c.Name)
		}
		// again: the same backing
		r, err = ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-initialize_connection": map[string]any{"connector": connector}})
		if err != nil {
			t.Fatal(err)
		}
		if got := r["connection_info"].(map[string]any)["data"].(map[string]any)["volume"]; got != backing.Ref.Value {
			t.Errorf("second connection: backing %v, want %s", got, backing.Ref.Value)
		}
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-terminate_connection": map[string]any{"connector": connector}}); err != nil {
			t.Errorf("os-terminate_connection: %v", err)
		}
	})
	if backing.Ref.IsZero() {
		t.FailNow()
	}

	t.Run("attachment", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		a, err := ctrl.CinderPOST(ctx, "/attachments", map[string]any{"attachment": map[string]any{
			// without instance_uuid: deleting an attachment of an instance makes
			// cinder-api ask nova (bug #2004555), which this cinder-api has no
			// endpoint of
			"volume_uuid": id, "connector": connector, "mode": "rw",
		}})
		if err != nil {
			t.Fatal(err)
		}
		timings["attachment_create"] = time.Since(start)
		mark("attachment_create")
		att, _ := a["attachment"].(map[string]any)
		attID, _ := att["id"].(string)
		ci, _ := att["connection_info"].(map[string]any)
		if ci["driver_volume_type"] != "vmdk" || ci["volume"] != backing.Ref.Value || ci["attachment_id"] != attID || ci["volume_id"] != id {
			t.Errorf("attachment connection_info %v", ci)
		}
		if st := volumeStatus(ctx, t, ctrl, id); st != "attaching" {
			t.Errorf("volume after attachment_update: %q, want attaching", st)
		}
		if _, err := ctrl.CinderPOST(ctx, "/attachments/"+attID+"/action", map[string]any{"os-complete": nil}); err != nil {
			t.Fatal(err)
		}
		if st := volumeStatus(ctx, t, ctrl, id); st != "in-use" {
			t.Errorf("volume after os-complete: %q, want in-use", st)
		}
		g, err := ctrl.CinderGET(ctx, "/attachments/"+attID)
		if err != nil {
			t.Fatal(err)
		}
		if ga, _ := g["attachment"].(map[string]any); ga["status"] != "attached" || ga["attach_mode"] != "rw" {
			t.Errorf("attachment %v", ga)
		}
		if _, err := ctrl.CinderDELETE(ctx, "/attachments/"+attID); err != nil {
			t.Fatal(err)
		}
		if st := volumeStatus(ctx, t, ctrl, id); st != "available" {
			t.Errorf("volume after the attachment's delete: %q, want available", st)
		}
	})

	t.Run("extend", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-extend": map[string]any{"new_size": 2}}); err != nil {
			t.Fatal(err)
		}
		st, err := ctrl.CinderVolumeStatus(ctx, id, "extending")
		if err != nil || st != "available" {
			t.Fatalf("volume after extend: %q, %v", st, err)
		}
		timings["extend"] = time.Since(start)
		mark("extend")
		g, _ := ctrl.CinderGET(ctx, "/volumes/"+id)
		if size := g["volume"].(map[string]any)["size"]; size != float64(2) {
			t.Errorf("size after extend: %v, want 2", size)
		}
		b, err := vc.GetBacking(ctx, backing.Ref)
		if err != nil || b.DiskCapacityKB != 2<<20 {
			t.Errorf("backing disk after extend: %d KiB, %v; want 2 GiB", b.DiskCapacityKB, err)
		}
		quotaMatchesResources(ctx, t, ctrl, baseline)
		waitNotifications(t, notifications, id, map[string]string{"volume.resize.start": "volume." + backend, "volume.resize.end": "volume." + backend})
	})

	t.Run("upload-to-image", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		r, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-volume_upload_image": map[string]any{
			"image_name": "vcagent-volops-image", "disk_format": "vmdk", "container_format": "bare", "force": false,
		}})
		if err != nil {
			t.Fatal(err)
		}
		up, _ := r["os-volume_upload_image"].(map[string]any)
		imageID, _ := up["image_id"].(string)
		if imageID == "" {
			t.Fatalf("no image id in %v", r)
		}
		h := http.Header{ctrl.AuthHeader: {ctrl.Token}}
		t.Cleanup(func() { _, _ = ctrl.Do(context.Background(), "DELETE", ctrl.GlanceURL+"/v2/images/"+imageID, nil, h) })
		st, err := ctrl.CinderVolumeStatus(ctx, id, "uploading")
		if err != nil || st != "available" {
			m, _ := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
			t.Fatalf("volume after upload: %q, %v; messages %v", st, err, m)
		}
		var img map[string]any
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if img, err = ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+imageID, nil, h); err != nil {
				t.Fatal(err)
			}
			if img["status"] == "active" || time.Now().After(deadline) {
				break
			}
		}
		timings["upload_to_image"] = time.Since(start)
		mark("upload_to_image")
		if img["status"] != "active" || img["disk_format"] != "vmdk" || img["vmware_disktype"] != "streamOptimized" ||
			img["vmware_image_version"] != "1" || img["owner_id"] != project {
			t.Errorf("image %v", img)
		}
		if size, _ := img["size"].(float64); size <= 0 {
			t.Errorf("image size %v", img["size"])
		}
	})

	var snapID string
	t.Run("snapshot", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		s, err := ctrl.CinderPOST(ctx, "/snapshots", map[string]any{"snapshot": map[string]any{"volume_id": id, "name": "vcagent-volops-snap"}})
		if err != nil {
			t.Fatal(err)
		}
		snapID, _ = s["snapshot"].(map[string]any)["id"].(string)
		resources = append(resources, snapID)
		st := snapshotStatus(ctx, t, ctrl, snapID, "creating")
		if st != "available" {
			t.Fatalf("snapshot %s: %q", snapID, st)
		}
		timings["snapshot"] = time.Since(start)
		mark("snapshot")
		want := "/" + c.Datacenter + "/vm/OpenStack/Project (" + project + ")/Volumes/Snapshots/snapshot-" + snapID
		tmpl, err := vc.FindByInventoryPath(ctx, want)
		if err != nil {
			t.Fatalf("no snapshot template at %s: %v", want, err)
		}
		if tb, err := vc.GetBacking(ctx, tmpl); err != nil || !tb.Template {
			t.Errorf("snapshot template %+v, %v", tb, err)
		}
		waitNotifications(t, notifications, "", map[string]string{"snapshot.create.start": "snapshot." + backend, "snapshot.create.end": "snapshot." + backend})
	})

	t.Run("from-snapshot-and-clone", func(t *testing.T) {
		if snapID == "" {
			t.Fatal("the snapshot subtest made no snapshot (see its failure)")
		}
		fromSnap, _ := create(t, "create_from_snapshot", map[string]any{"name": "vcagent-volops-fromsnap", "size": 3, "snapshot_id": snapID})
		b, err := vc.FindBacking(ctx, fromSnap)
		if err != nil {
			t.Fatalf("volume from snapshot has no backing: %v", err)
		}
		checkBacking(ctx, t, vc, b, fromSnap, project, 3)
		clone, _ := create(t, "clone", map[string]any{"name": "vcagent-volops-clone", "size": 2, "source_volid": id})
		cb, err := vc.FindBacking(ctx, clone)
		if err != nil {
			t.Fatalf("clone has no backing: %v", err)
		}
		checkBacking(ctx, t, vc, cb, clone, project, 2)
		for _, v := range []string{fromSnap, clone} {
			if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+v); err != nil {
				t.Fatal(err)
			}
			if st, err := ctrl.CinderVolumeStatus(ctx, v, "deleting", "available"); err != nil || st != "deleted" {
				t.Errorf("volume %s after delete: %q, %v", v, st, err)
			}
			if _, err := vc.FindBacking(ctx, v); !errors.Is(err, vcenter.ErrNotFound) {
				t.Errorf("backing of %s left after delete: %v", v, err)
			}
		}
	})

	t.Run("delete-snapshot", func(t *testing.T) {
		if snapID == "" {
			t.Fatal("the snapshot subtest made no snapshot (see its failure)")
		}
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		if _, err := ctrl.CinderDELETE(ctx, "/snapshots/"+snapID); err != nil {
			t.Fatal(err)
		}
		if st := snapshotStatus(ctx, t, ctrl, snapID, "deleting", "available"); st != "deleted" {
			t.Fatalf("snapshot after delete: %q", st)
		}
		timings["delete_snapshot"] = time.Since(start)
		mark("delete_snapshot")
		path := "/" + c.Datacenter + "/vm/OpenStack/Project (" + project + ")/Volumes/Snapshots/snapshot-" + snapID
		if _, err := vc.FindByInventoryPath(ctx, path); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("snapshot template left: %v", err)
		}
		waitNotifications(t, notifications, "", map[string]string{"snapshot.delete.start": "snapshot." + backend, "snapshot.delete.end": "snapshot." + backend})
	})

	t.Run("from-image", func(t *testing.T) {
		imageID := uploadFlatImage(t, ctrl)
		h := http.Header{ctrl.AuthHeader: {ctrl.Token}}
		t.Cleanup(func() { _, _ = ctrl.Do(context.Background(), "DELETE", ctrl.GlanceURL+"/v2/images/"+imageID, nil, h) })
		fromImage, vol := create(t, "create_from_image", map[string]any{"name": "vcagent-volops-fromimage", "size": 1, "imageRef": imageID})
		if vol["bootable"] != "true" {
			t.Errorf("volume from image: bootable %v", vol["bootable"])
		}
		if md, _ := vol["volume_image_metadata"].(map[string]any); md["image_id"] != imageID || md["disk_format"] != "vmdk" || md["vmware_disktype"] != "preallocated" {
			t.Errorf("volume_image_metadata %v", vol["volume_image_metadata"])
		}
		b, err := vc.FindBacking(ctx, fromImage)
		if err != nil {
			t.Fatalf("volume from image has no backing: %v", err)
		}
		checkBacking(ctx, t, vc, b, fromImage, project, 1)
		if !strings.HasSuffix(b.DiskPath, "] volume-"+fromImage+"/volume-"+fromImage+".vmdk") {
			t.Errorf("backing disk %s", b.DiskPath)
		}
		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+fromImage); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, fromImage, "deleting", "available"); err != nil || st != "deleted" {
			t.Errorf("volume from image after delete: %q, %v", st, err)
		}
		if _, err := vc.FindBacking(ctx, fromImage); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("backing left after delete: %v", err)
		}
	})

	t.Run("transfer", func(t *testing.T) {
		// a volume with a backing given to project demo: the backing moves
		// to demo's folder (accept_transfer)
		tid, _ := create(t, "create", map[string]any{"name": "vcagent-volops-transfer", "size": 1})
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+tid+"/action", map[string]any{"os-initialize_connection": map[string]any{"connector": map[string]any{"host": "x"}}}); err != nil {
			t.Fatal(err)
		}
		tr, err := ctrl.CinderPOST(ctx, "/volume-transfers", map[string]any{"transfer": map[string]any{"volume_id": tid, "name": "vcagent-volops"}})
		if err != nil {
			t.Fatal(err)
		}
		transfer, _ := tr["transfer"].(map[string]any)
		root := strings.TrimSuffix(ctrl.CinderURL, "/"+ctrl.Project)
		h := http.Header{"X-Auth-Token": {"demo:demo"}, "OpenStack-API-Version": {"volume 3.55"}}
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		if _, err := ctrl.Do(ctx, "POST", root+"/volume-transfers/"+fmt.Sprint(transfer["id"])+"/accept",
			map[string]any{"accept": map[string]any{"auth_key": transfer["auth_key"]}}, h); err != nil {
			t.Fatal(err)
		}
		timings["accept_transfer"] = time.Since(start)
		mark("accept_transfer")
		b, err := vc.FindBacking(ctx, tid)
		if err != nil {
			t.Fatal(err)
		}
		checkBacking(ctx, t, vc, b, tid, "demo", 1)
		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+tid); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, tid, "deleting", "available"); err != nil || st != "deleted" {
			t.Errorf("transferred volume after delete: %q, %v", st, err)
		}
	})

	t.Run("delete", func(t *testing.T) {
		start := time.Now()
		lastCalls = vcenterCalls(t, opsURL)
		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+id); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "deleting", "available"); err != nil || st != "deleted" {
			t.Fatalf("volume after delete: %q, %v", st, err)
		}
		timings["delete"] = time.Since(start)
		mark("delete")
		if _, err := vc.FindBacking(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("backing left after delete: %v", err)
		}
		quotaMatchesResources(ctx, t, ctrl, baseline)
	})
	t.Run("workers", func(t *testing.T) {
		// create_volume, delete_volume and create_snapshot leave no workers
		// rows behind (cinder's set_workers)
		db, err := sql.Open("mysql", ctrl.CinderDB)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, r := range resources {
			var n int
			if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM workers WHERE resource_id = ?", r).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%d workers rows left for %s", n, r)
			}
		}
	})
	for _, op := range []string{"create", "initialize_connection", "attachment_create", "extend", "upload_to_image", "snapshot", "create_from_snapshot", "clone", "delete_snapshot", "create_from_image", "accept_transfer", "delete"} {
		if d, ok := timings[op]; ok {
			t.Logf("%s through cinder-api: %s, %d vCenter calls", op, d.Round(time.Millisecond), calls[op])
		}
	}
}

// checkBacking: the driver's layout of a backing.
func checkBacking(ctx context.Context, t *testing.T, vc *vcenter.Session, b vcenter.Backing, id, project string, sizeGB int64) {
	t.Helper()
	if b.Name != "volume-"+id || b.InstanceUUID != id || b.VolumeID != id || b.Template || b.DiskCapacityKB != sizeGB<<20 {
		t.Errorf("backing of %s: %+v", id, b)
	}
	vm, err := vc.GetVM(ctx, b.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ExtraConfig["cinder.volume.id"] != id || vm.PowerState != vcenter.PowerStateOff {
		t.Errorf("backing vm %+v", vm)
	}
	path, err := vc.InventoryPath(ctx, vm.Folder)
	if want := "/vm/OpenStack/Project (" + project + ")/Volumes"; err != nil || !strings.HasSuffix(path, want) {
		t.Errorf("backing folder %q, %v; want …%s", path, err, want)
	}
}

func inCluster(c vcenter.Cluster, host vcenter.Ref) bool {
	for _, h := range c.Hosts {
		if h.Ref == host {
			return true
		}
	}
	return false
}

func volumeStatus(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, id string) string {
	t.Helper()
	g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := g["volume"].(map[string]any)["status"].(string)
	return st
}

// snapshotStatus polls the snapshot until its status is not transient
// ("deleted" once it is gone).
func snapshotStatus(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, id string, transient ...string) string {
	t.Helper()
	for {
		g, err := ctrl.CinderGET(ctx, "/snapshots/"+id)
		if cp.StatusCode(err) == 404 {
			return "deleted"
		}
		if err != nil {
			t.Fatal(err)
		}
		st, _ := g["snapshot"].(map[string]any)["status"].(string)
		wait := false
		for _, tr := range transient {
			wait = wait || st == tr
		}
		if !wait {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("snapshot %s still %s", id, st)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitNotifications waits for the events (event -> publisher) about
// resource id (any when empty).
func waitNotifications(t *testing.T, q *rawReplies, id string, want map[string]string) {
	t.Helper()
	for len(want) > 0 {
		n := q.next(t)
		payload, _ := n["payload"].(map[string]any)
		if id != "" && payload["volume_id"] != id {
			continue
		}
		event, _ := n["event_type"].(string)
		if pub, ok := want[event]; ok {
			if n["publisher_id"] != pub {
				t.Errorf("%s: publisher %v, want %s", event, n["publisher_id"], pub)
			}
			delete(want, event)
		}
	}
}

// waitPool waits until cinder-scheduler has the pool.
func waitPool(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, pool string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := ctrl.CinderGET(ctx, "/scheduler-stats/get_pools")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range asList(p, "pools") {
			if p["name"] == pool {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cinder-scheduler has no pool %s", pool)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// volumeTypeFor creates a volume type placing volumes on the backends
// named backendName (deleted at the end of the test).
func volumeTypeFor(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, backendName string) string {
	t.Helper()
	name := "vcagent-" + backendName
	v, err := ctrl.CinderPOST(ctx, "/types", map[string]any{"volume_type": map[string]any{
		"name": name, "os-volume-type-access:is_public": true,
		"extra_specs": map[string]any{"volume_backend_name": backendName},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := v["volume_type"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		_, _ = ctrl.CinderDELETE(dctx, "/types/"+id)
	})
	return name
}

// eagerVolumeBackend starts an agent with the compute and volume roles
// (backings created at once, vmware_lazy_create off) as a backend of its
// own, named after prefix, waits until cinder-scheduler has its pool and
// returns the test's vCenter session, the backend (host@name), its name
// and a volume type placing volumes on it.
func eagerVolumeBackend(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, prefix string) (vc *vcenter.Session, backend, backendName, typ string) {
	t.Helper()
	vcEnv, vc := testVCenter(t)
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	host := "vcagent-" + prefix + "-" + suffix
	backendName = prefix + suffix
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env, "VCAGENT_ROLES=compute,volume", "VCAGENT_VOLUME_BACKEND="+backendName,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB, "VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_VOLUME_LAZY_CREATE=false")
	startAgent(t, env...)
	backend = host + "@" + backendName
	waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	waitPool(ctx, t, ctrl, backend+"#"+backendName)
	return vc, backend, backendName, volumeTypeFor(ctx, t, ctrl, backendName)
}

// TestVolumeEagerCreate: with vmware_lazy_create off
// (VCAGENT_VOLUME_LAZY_CREATE=false) create_volume makes the backing at
// once, with the volume type's vmware:vmdk_type (thick here), and a
// vmware:vmdk_type the driver does not know fails the create at each of
// the scheduler's attempts, the volume in error.
func TestVolumeEagerCreate(t *testing.T) {
	ctrl := controlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vc, _, backendName, typ := eagerVolumeBackend(ctx, t, ctrl, "voleager")
	// a type with vmware:vmdk_type thick, and one with a bad value
	thick := typ + "-thick"
	bad := typ + "-bad"
	for name, vt := range map[string]string{thick: "thick", bad: "fat"} {
		v, err := ctrl.CinderPOST(ctx, "/types", map[string]any{"volume_type": map[string]any{
			"name": name, "extra_specs": map[string]any{"volume_backend_name": backendName, "vmware:vmdk_type": vt},
		}})
		if err != nil {
			t.Fatal(err)
		}
		tid, _ := v["volume_type"].(map[string]any)["id"].(string)
		t.Cleanup(func() { _, _ = ctrl.CinderDELETE(context.Background(), "/types/"+tid) })
	}
	for _, c := range []struct {
		typ, want string
	}{{thick, "available"}, {bad, "error"}} {
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": "vcagent-eager", "size": 1, "volume_type": c.typ}})
		if err != nil {
			t.Fatal(err)
		}
		id, _ := v["volume"].(map[string]any)["id"].(string)
		st, err := ctrl.CinderVolumeStatus(ctx, id, "creating")
		if err != nil || st != c.want {
			t.Errorf("volume of type %s: %q, %v; want %s", c.typ, st, err, c.want)
		}
		b, berr := vc.FindBacking(ctx, id)
		if c.want == "available" {
			if berr != nil {
				t.Errorf("no backing right after an eager create: %v", berr)
			} else if b.Name != "volume-"+id || b.DiskCapacityKB != 1<<20 {
				t.Errorf("backing %+v", b)
			}
		} else if !errors.Is(berr, vcenter.ErrNotFound) {
			t.Errorf("a failed create left a backing: %v", berr)
		}
		if c.want == "error" {
			// the driver's create_volume failed: CREATE_VOLUME_FROM_BACKEND,
			// DRIVER_FAILED_CREATE, as cinder's message API records it, at
			// each of the scheduler's three attempts (the create flow
			// reschedules a driver failure; this backend is the only one
			// of the type), then the scheduler's SCHEDULE_ALLOCATE_VOLUME,
			// NO_VALID_BACKEND
			m, err := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
			if err != nil {
				t.Fatal(err)
			}
			msgs := asList(m, "messages")
			events := map[string]int{}
			for _, msg := range msgs {
				events[fmt.Sprint(msg["event_id"])]++
				if msg["event_id"] == "VOLUME_VOLUME_008_012" && (msg["message_level"] != "ERROR" || msg["resource_type"] != "VOLUME" ||
					msg["user_message"] != "create volume from backend storage:Driver failed to create the volume.") {
					t.Errorf("user message of the failed volume: %v", msg)
				}
			}
			if len(msgs) != 4 || events["VOLUME_VOLUME_008_012"] != 3 || events["VOLUME_VOLUME_001_003"] != 1 {
				t.Errorf("user messages of the failed volume: %v, want 3 VOLUME_VOLUME_008_012 and VOLUME_VOLUME_001_003", events)
			}
		}
		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+id); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "deleting", c.want); err != nil || st != "deleted" {
			t.Errorf("volume after delete: %q, %v", st, err)
		}
		if _, err := vc.FindBacking(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("backing left after delete: %v", err)
		}
	}
}

// vcenterCalls is the agent's vcagent_vcenter_calls_total, summed.
func vcenterCalls(t *testing.T, opsURL string) int {
	t.Helper()
	_, body := httpGet(t, opsURL+"/metrics")
	n := 0
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "vcagent_vcenter_calls_total") {
			var v float64
			if f := strings.Fields(l); len(f) == 2 {
				_, _ = fmt.Sscan(f[1], &v)
			}
			n += int(v)
		}
	}
	return n
}

// quotaOffset is the project's quota usage (volumes, gigabytes) minus
// what its volumes and snapshots add up to.
func quotaOffset(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane) [2]float64 {
	t.Helper()
	used := volumeQuotaInUse(ctx, t, ctrl)
	var have [2]float64
	vols, err := ctrl.CinderGET(ctx, "/volumes/detail")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range asList(vols, "volumes") {
		size, _ := v["size"].(float64)
		have[0]++
		have[1] += size
	}
	snaps, err := ctrl.CinderGET(ctx, "/snapshots/detail")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range asList(snaps, "snapshots") {
		size, _ := s["size"].(float64)
		have[1] += size
	}
	return [2]float64{used[0] - have[0], used[1] - have[1]}
}

// quotaMatchesResources: the project's quota usage (volumes, gigabytes)
// moves with its volumes and snapshots: the offset stays the baseline's.
// Other agents may be mid-operation, so it waits until they agree (10 s).
func quotaMatchesResources(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, baseline [2]float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		off := quotaOffset(ctx, t, ctrl)
		if off == baseline {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("quota in use minus the project's volumes and snapshots (volumes, gigabytes): %v, %v at the start", off, baseline)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestVolumeRevertRetypeManage: revert_to_snapshot, retype and unmanage
// through the real cinder API, as the VMDK driver answers them. Reverting
// to a template snapshot (the driver's snapshot format) fails as the
// driver does (InvalidSnapshot): the volume is error, the snapshot
// available again, and the manager's backup snapshot "[revert] volume
// <id> backup snapshot" stays. Retyping a volume with a backing from a
// thin type to a thick one converts its backing's disk (relocated or
// cloned, keeping the volume's identity) and gives the volume the new
// type. Managing a VM's disk ("<vmdk path>@<VM inventory path>") makes
// it the disk of a new volume's backing (size rounded up to whole GB, the
// disk detached from the VM); a reference to nothing leaves the volume
// error_managing. Unmanaging a volume removes it from cinder and leaves
// its backing in vCenter, no longer naming the volume.
func TestVolumeRevertRetypeManage(t *testing.T) {
	ctrl := controlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vc, backend, backendName, typ := eagerVolumeBackend(ctx, t, ctrl, "volrrt")
	suffix := strings.TrimPrefix(backendName, "volrrt")
	thick := typ + "-thick"
	v, err := ctrl.CinderPOST(ctx, "/types", map[string]any{"volume_type": map[string]any{
		"name": thick, "extra_specs": map[string]any{"volume_backend_name": backendName, "vmware:vmdk_type": "thick"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	thickID, _ := v["volume_type"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.CinderDELETE(context.Background(), "/types/"+thickID) })

	newVolume := func(t *testing.T, name string) string {
		t.Helper()
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": name, "size": 1, "volume_type": typ}})
		if err != nil {
			t.Fatal(err)
		}
		id, _ := v["volume"].(map[string]any)["id"].(string)
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id+"?cascade=true"); err == nil {
				_, _ = ctrl.CinderVolumeStatus(dctx, id, "deleting", "available", "error")
			}
		})
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "creating"); err != nil || st != "available" {
			t.Fatalf("volume %s: %q, %v; want available", id, st, err)
		}
		return id
	}

	t.Run("revert-to-template-snapshot", func(t *testing.T) {
		id := newVolume(t, "vcagent-revert")
		s, err := ctrl.CinderPOST(ctx, "/snapshots", map[string]any{"snapshot": map[string]any{"volume_id": id, "name": "vcagent-revert"}})
		if err != nil {
			t.Fatal(err)
		}
		snapID, _ := s["snapshot"].(map[string]any)["id"].(string)
		if st := snapshotStatus(ctx, t, ctrl, snapID, "creating"); st != "available" {
			t.Fatalf("snapshot %s: %q", snapID, st)
		}
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"revert": map[string]any{"snapshot_id": snapID}}); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "reverting"); err != nil || st != "error" {
			t.Errorf("volume %s after reverting to a template snapshot: %q, %v; want error (InvalidSnapshot)", id, st, err)
		}
		if st := snapshotStatus(ctx, t, ctrl, snapID, "restoring"); st != "available" {
			t.Errorf("snapshot %s after the failed revert: %q, want available", snapID, st)
		}
		snaps, err := ctrl.CinderGET(ctx, "/snapshots/detail?volume_id="+id)
		if err != nil {
			t.Fatal(err)
		}
		backup := ""
		for _, sn := range asList(snaps, "snapshots") {
			if sn["name"] == "[revert] volume "+id+" backup snapshot" {
				backup, _ = sn["id"].(string)
				if sn["status"] != "available" {
					t.Errorf("backup snapshot %v", sn)
				}
			}
		}
		if backup == "" {
			t.Errorf("no backup snapshot of the revert among %v", snaps)
		}
	})

	t.Run("retype-thin-to-thick", func(t *testing.T) {
		id := newVolume(t, "vcagent-retype")
		before, err := vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-retype": map[string]any{"new_type": thick, "migration_policy": "never"}}); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "retyping"); err != nil || st != "available" {
			t.Fatalf("volume %s after retype: %q, %v", id, st, err)
		}
		g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if vt := g["volume"].(map[string]any)["volume_type"]; vt != thick {
			t.Errorf("volume type after retype: %v, want %s", vt, thick)
		}
		after, err := vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backing before %s %s on %v, after %s %s on %v", before.Ref.Value, before.DiskType, before.Datastores, after.Ref.Value, after.DiskType, after.Datastores)
		// govmomi's simulator ignores the disk locator of a clone or
		// relocation, so the disk type itself is not checked
		if after.Name != "volume-"+id || after.VolumeID != id || after.InstanceUUID != id || after.DiskUUID != id {
			t.Errorf("backing after retype %+v: want it named and identified by the volume", after)
		}
	})

	t.Run("manage-existing", func(t *testing.T) {
		// a VM with a 1.5 GiB disk: the disk becomes a 2 GB volume's backing disk
		clusters, err := vc.Clusters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := clusters[0]
		dir := vcenter.DatastorePath{Datastore: c.Datastores[0].Name, Path: "manage-src-" + suffix}
		if err := vc.MakeDirectory(ctx, c.Datacenter, dir); err != nil {
			t.Fatal(err)
		}
		disk := dir.Join("data.vmdk")
		if err := vc.CreateVirtualDisk(ctx, c.Datacenter, disk, 3<<19, vcenter.DiskKindThin); err != nil {
			t.Fatal(err)
		}
		folder, err := vc.EnsureFolderPath(ctx, c.Datacenter, "manage-src")
		if err != nil {
			t.Fatal(err)
		}
		src, err := vc.CreateVM(ctx, vcenter.VMSpec{Name: "manage-src-" + suffix, NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest",
			Folder: folder, ResourcePool: c.ResourcePool, Datastore: c.Datastores[0].Ref, SCSIController: vcenter.SCSILsiLogic, Disks: []string{disk.String()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = vc.Destroy(context.Background(), src.Ref) })
		invPath, err := vc.InventoryPath(ctx, src.Ref)
		if err != nil {
			t.Fatal(err)
		}
		manage := func(t *testing.T, sourceName string) string {
			t.Helper()
			v, err := ctrl.CinderPOST(ctx, "/manageable_volumes", map[string]any{"volume": map[string]any{
				"host": backend + "#" + backendName, "ref": map[string]any{"source-name": sourceName}, "name": "vcagent-managed", "volume_type": typ,
			}})
			if err != nil {
				t.Fatal(err)
			}
			id, _ := v["volume"].(map[string]any)["id"].(string)
			t.Cleanup(func() {
				dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
				defer dcancel()
				if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id); err == nil {
					_, _ = ctrl.CinderVolumeStatus(dctx, id, "deleting", "available", "error", "error_managing")
				}
			})
			return id
		}
		// a reference to nothing: error_managing
		bad := manage(t, "[nowhere] x.vmdk@"+invPath)
		// cinder-api shows error_managing as error
		if st, err := ctrl.CinderVolumeStatus(ctx, bad, "managing", "creating"); err != nil || st != "error" {
			t.Errorf("volume managed from a missing disk: %q, %v; want error (error_managing)", st, err)
		}
		db, err := sql.Open("mysql", ctrl.CinderDB)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var st string
		if err := db.QueryRowContext(ctx, "SELECT status FROM volumes WHERE id = ?", bad).Scan(&st); err != nil || st != "error_managing" {
			t.Errorf("volume managed from a missing disk: %q, %v in cinder's database; want error_managing", st, err)
		}
		id := manage(t, disk.String()+"@"+invPath)
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "managing", "creating"); err != nil || st != "available" {
			t.Fatalf("managed volume %s: %q, %v; want available", id, st, err)
		}
		g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if size := g["volume"].(map[string]any)["size"]; size != float64(2) {
			t.Errorf("managed volume size %v, want 2 (1.5 GiB rounded up)", size)
		}
		b, err := vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatalf("no backing for the managed volume: %v", err)
		}
		if b.Name != "volume-"+id || b.DiskCapacityKB != 3<<19 || !strings.HasSuffix(b.DiskPath, "] volume-"+id+"/volume-"+id+".vmdk") || b.DiskUUID != id {
			t.Errorf("managed volume's backing %+v", b)
		}
		if _, err := vc.FindVMDisk(ctx, src.Ref, disk.String()); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("the disk is still on its VM: %v", err)
		}
		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+id); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "deleting", "available"); err != nil || st != "deleted" {
			t.Errorf("managed volume after delete: %q, %v", st, err)
		}
		if _, err := vc.GetBacking(ctx, b.Ref); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("the managed volume's backing is left after delete: %v", err)
		}
	})

	t.Run("unmanage", func(t *testing.T) {
		id := newVolume(t, "vcagent-unmanage")
		b, err := vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = vc.DeleteBacking(context.Background(), b.Ref) })
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-unmanage": nil}); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "unmanaging", "available"); err != nil || st != "deleted" {
			t.Fatalf("volume %s after unmanage: %q, %v; want it gone", id, st, err)
		}
		kept, err := vc.GetBacking(ctx, b.Ref)
		if err != nil {
			t.Fatalf("the unmanaged volume's backing is gone: %v", err)
		}
		if kept.VolumeID != "" || kept.InstanceUUID == id {
			t.Errorf("unmanaged backing %+v still names volume %s", kept, id)
		}
		if _, err := vc.FindBacking(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("the volume's backing is still found by its id: %v", err)
		}
	})
}
