//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/agent/compute"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
	"github.com/vcagent/vcagent/rpc"
)

// TestPeriodicTasks runs nova-compute's periodic tasks on an agent with
// short intervals, against the real control plane:
//
//   - a soft-deleted server (powered off, SOFT_DELETED) is reclaimed after
//     reclaim_instance_interval: the server is gone, and its VM;
//   - a VM left running in vCenter for a deleted instance is reaped;
//   - an image cached for a server that is deleted gets its ts- folder,
//     and is removed from the cache after the minimum age;
//   - a resize left unconfirmed is confirmed after resize_confirm_window,
//     through the compute API's path (confirmResize action);
//   - the usage audit writes its task_log row (os-instance_usage_audit_log).
//
// The control plane's nova-api hard-deletes (its reclaim_instance_interval
// is 0, as other tests need): the test soft-deletes as nova-api's
// soft_delete does, through conductor and a soft_delete_instance cast.
func TestPeriodicTasks(t *testing.T) {
	for k, v := range map[string]string{
		"VCAGENT_PERIODIC_INTERVAL":                      "2s",
		"VCAGENT_RECLAIM_INSTANCE_INTERVAL":              "4s",
		"VCAGENT_RUNNING_DELETED_INSTANCE_POLL_INTERVAL": "3s",
		"VCAGENT_IMAGE_CACHE_MANAGER_INTERVAL":           "3s",
		"VCAGENT_REMOVE_UNUSED_ORIGINAL_MINIMUM_AGE":     "8s",
		"VCAGENT_RESIZE_CONFIRM_WINDOW":                  "10s",
		"VCAGENT_INSTANCE_USAGE_AUDIT":                   "true",
	} {
		t.Setenv(k, v) // the agent inherits the test's environment
	}
	start := time.Now()
	host := "vcagent-per-" + fmt.Sprint(time.Now().Unix()%100000)
	e := rszSetUp(t, map[string]string{host: ""}, 2)
	ctx := context.Background()
	t.Logf("set-up: %s", time.Since(start).Round(time.Millisecond))
	clusters, err := e.vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc := clusters[0].Datacenter

	t.Run("usage audit", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			v, err := e.ctrl.NovaGET(ctx, "/os-instance_usage_audit_log")
			if err != nil {
				t.Fatal(err)
			}
			logs, _ := v["instance_usage_audit_logs"].(map[string]any)
			hosts, _ := logs["log"].(map[string]any)
			if h, ok := hosts[host].(map[string]any); ok {
				if h["state"] != "DONE" || num(h["errors"]) != 0 || !strings.HasPrefix(fmt.Sprint(h["message"]), "Instance usage audit ran for host "+host) {
					t.Errorf("audit log of %s: %v", host, h)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no usage audit of %s: %v", host, logs)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("image cache ageing", func(t *testing.T) {
		image := uploadFlatImage(t, e.ctrl)
		created, err := e.ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
			"name": "per-image", "imageRef": image, "flavorRef": "42", "networks": "none", "availability_zone": e.az,
		}})
		if err != nil {
			t.Fatal(err)
		}
		id := created["server"].(map[string]any)["id"].(string)
		waitServer(t, e.ctrl, id, 120*time.Second, settled("ACTIVE"))
		folder := host + "_base"
		var ds vcenter.Datastore
		for _, c := range clusters {
			for _, d := range c.Datastores {
				if ok, err := e.vc.FileExists(ctx, dc, vcenter.DatastorePath{Datastore: d.Name, Path: folder + "/" + image + "/" + image + ".vmdk"}); err == nil && ok {
					ds = d
				}
			}
		}
		if ds.Name == "" {
			t.Fatalf("image %s is not cached in any datastore's %s", image, folder)
		}
		imageDir := vcenter.DatastorePath{Datastore: ds.Name, Path: folder + "/" + image}
		// In use: no timestamp over a few passes.
		time.Sleep(7 * time.Second)
		if ts := tsFolders(t, e.vc, ds, imageDir); len(ts) != 0 {
			t.Errorf("image in use has timestamps %v", ts)
		}
		if _, err := e.ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, e.ctrl, id)
		deleted := time.Now()
		var ts []string
		for deadline := time.Now().Add(20 * time.Second); len(ts) == 0; {
			if ts = tsFolders(t, e.vc, ds, imageDir); len(ts) == 0 && time.Now().After(deadline) {
				t.Fatalf("no timestamp folder in %s after the server's deletion", imageDir)
			}
			time.Sleep(250 * time.Millisecond)
		}
		stamp, err := time.Parse("2006-01-02-15-04-05", strings.TrimPrefix(ts[0], "ts-"))
		if err != nil || stamp.Before(deleted.UTC().Add(-2*time.Second)) || stamp.After(time.Now().UTC().Add(time.Second)) {
			t.Errorf("timestamp %s (%v), want the time of the pass after %s", ts[0], err, deleted.UTC())
		}
		t.Logf("timestamp %s %s after the deletion", ts[0], time.Since(deleted).Round(time.Millisecond))
		for deadline := time.Now().Add(40 * time.Second); ; {
			if entries := subFolders(t, e.vc, ds, vcenter.DatastorePath{Datastore: ds.Name, Path: folder}); !slices.Contains(entries, image) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("image %s still cached %s after the deletion", image, time.Since(deleted))
			}
			time.Sleep(250 * time.Millisecond)
		}
		if age := time.Since(stamp); age < 8*time.Second {
			t.Errorf("image removed %s after its timestamp, before the minimum age of 8s", age)
		}
		t.Logf("image removed %s after the deletion", time.Since(deleted).Round(time.Millisecond))
	})

	t.Run("soft delete and reclaim", func(t *testing.T) {
		s := e.boot(t, "per-reclaim", "42")
		id := s["id"].(string)
		softDelete(t, e.ctrl, host, id)
		s = waitServer(t, e.ctrl, id, 60*time.Second, func(s map[string]any) bool {
			return s["status"] == "SOFT_DELETED" && s["OS-EXT-STS:task_state"] == nil
		})
		softDeleted := time.Now()
		if vm, err := e.vc.FindVMByInstanceUUID(ctx, id); err == nil && vm.PowerState != vcenter.PowerStateOff {
			t.Errorf("soft-deleted server's VM %s", vm.PowerState)
		}
		waitGone(t, e.ctrl, id)
		t.Logf("reclaimed %s after the soft delete", time.Since(softDeleted).Round(time.Millisecond))
		if time.Since(softDeleted) < 3*time.Second {
			t.Errorf("reclaimed before reclaim_instance_interval")
		}
		if _, err := e.vc.FindVMByInstanceUUID(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("VM of the reclaimed server: %v, want none", err)
		}
		noAllocations(t, e.ctrl, id)
	})

	t.Run("a VM of a deleted instance is reaped", func(t *testing.T) {
		s := e.boot(t, "per-reap", "42")
		id := s["id"].(string)
		if _, err := e.ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, e.ctrl, id)
		// A VM of the deleted instance turns up (a failed delete, an
		// operator's restore...): the agent's, running in its cluster.
		c := clusters[0]
		d := c.Datastores[0]
		folder, err := e.vc.EnsureFolderPath(ctx, c.Datacenter, "vcagent-zombies")
		if err != nil {
			t.Fatal(err)
		}
		dir := vcenter.DatastorePath{Datastore: d.Name, Path: "zombie-" + id}
		if err := e.vc.MakeDirectory(ctx, c.Datacenter, dir); err != nil {
			t.Fatal(err)
		}
		vm, err := e.vc.CreateVM(ctx, vcenter.VMSpec{Name: "zombie " + id, InstanceUUID: id, NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest",
			ManagedByKey: "org.openstack.compute", ManagedByType: "instance", ExtraConfig: map[string]string{"nvp.vm-uuid": id},
			Folder: folder, ResourcePool: c.ResourcePool, Datastore: d.Ref, DatastorePath: dir.Join("zombie.vmx").String()})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.vc.PowerOn(ctx, vm.Ref); err != nil {
			t.Fatal(err)
		}
		made := time.Now()
		for deadline := time.Now().Add(30 * time.Second); ; {
			_, err := e.vc.FindVMByInstanceUUID(ctx, id)
			if errors.Is(err, vcenter.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("VM of the deleted instance %s still there after %s (%v)", id, time.Since(made), err)
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("reaped %s after it appeared", time.Since(made).Round(time.Millisecond))
	})

	t.Run("unconfirmed resize is confirmed", func(t *testing.T) {
		flavorID := "vcagent-per-" + fmt.Sprint(time.Now().UnixNano()%1000000)
		if _, err := e.ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
			"name": flavorID, "id": flavorID, "ram": 128, "vcpus": 1, "disk": 1,
		}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = e.ctrl.NovaDELETE(context.Background(), "/flavors/"+flavorID) })
		s := e.boot(t, "per-resize", "42")
		id := s["id"].(string)
		restore := e.excludeNode(t, fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]))
		e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavorID}})
		waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
		restore()
		finished := time.Now()
		s = waitServer(t, e.ctrl, id, 60*time.Second, settled("ACTIVE"))
		e.waitMigration(t, id, "confirmed")
		t.Logf("confirmed %s after VERIFY_RESIZE", time.Since(finished).Round(time.Millisecond))
		e.checkEvents(t, id, "confirmResize", "compute_confirm_resize")
		e.checkVM(t, s, 1, 128, vcenter.PowerStateOn)
		if f, _ := s["flavor"].(map[string]any); f["original_name"] != flavorID {
			t.Errorf("flavor after the confirm: %v, want %s", f, flavorID)
		}
	})
}

// softDelete does what nova-api's soft_delete does (with
// reclaim_instance_interval > 0): task_state soft-deleting and deleted_at
// saved, the delete action recorded, soft_delete_instance cast to the host.
func softDelete(t *testing.T, ctrl *cp.ControlPlane, host, id string) {
	t.Helper()
	ctx := context.Background()
	tr := goTransport(t, ctrl.TransportURL)
	cond := compute.NewConductor(tr, "nova", 30*time.Second, zerolog.Nop())
	rc := compute.AdminContext()
	v, err := cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{id}, map[string]any{"expected_attrs": []string{}})
	if err != nil {
		t.Fatal(err)
	}
	inst := v.(*ovo.Object)
	inst.SetString("task_state", "soft-deleting")
	inst.SetDateTime("deleted_at", time.Now().UTC())
	inst.SetInt("progress", 0)
	if _, err := cond.ObjectAction(ctx, rc, inst, "save", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cond.ClassAction(ctx, rc, "InstanceAction", "action_start", []any{id, "delete"}, map[string]any{"want_result": false}); err != nil {
		t.Fatal(err)
	}
	enc, err := ovo.NovaCodec().EncodeEntity(inst)
	if err != nil {
		t.Fatal(err)
	}
	c := tr.NewClient(rpc.Target{Exchange: "nova", Topic: "compute", Server: host, Version: "6.0"})
	if err := c.Cast(ctx, rc, "soft_delete_instance", map[string]any{"instance": enc}); err != nil {
		t.Fatal(err)
	}
}

// subFolders lists the folders in p, as the VMware driver's
// get_sub_folders does (none when p does not exist).
func subFolders(t *testing.T, vc *vcenter.Session, ds vcenter.Datastore, p vcenter.DatastorePath) []string {
	t.Helper()
	ctx := context.Background()
	b, err := object.NewDatastore(vc.Client(), ds.Ref.Reference()).Browser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := b.SearchDatastore(ctx, p.String(), &types.HostDatastoreBrowserSearchSpec{Query: []types.BaseFileQuery{&types.FolderFileQuery{}}, MatchPattern: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		if fault.Is(err, &types.FileNotFound{}) {
			return nil
		}
		t.Fatalf("search %s: %v", p, err)
	}
	res, _ := info.Result.(types.HostDatastoreBrowserSearchResults)
	var out []string
	for _, f := range res.File {
		out = append(out, f.GetFileInfo().Path)
	}
	return out
}

// tsFolders returns the timestamp folders of a cached image.
func tsFolders(t *testing.T, vc *vcenter.Session, ds vcenter.Datastore, dir vcenter.DatastorePath) []string {
	t.Helper()
	var out []string
	for _, f := range subFolders(t, vc, ds, dir) {
		if strings.HasPrefix(f, "ts-") {
			out = append(out, f)
		}
	}
	return out
}
