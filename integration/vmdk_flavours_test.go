//go:build integration

package integration

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
	"github.com/vcagent/vcagent/integration/cp"
)

// vmdkImageRaw is the disk the sparse and streamOptimized test images hold.
func vmdkImageRaw() []byte { return vmdktest.Raw(8 << 20) }

// uploadVMDKImages puts vmdkImageRaw, converted by qemu-img, into the real
// glance as a monolithicSparse and a streamOptimized image, and returns
// their ids by subformat.
func uploadVMDKImages(t *testing.T, ctrl *cp.ControlPlane) map[string]string {
	t.Helper()
	ctx := context.Background()
	raw := vmdkImageRaw()
	ids := map[string]string{}
	for sub, disktype := range map[string]string{"monolithicSparse": "sparse", "streamOptimized": "streamOptimized"} {
		img, err := ctrl.Do(ctx, "POST", ctrl.GlanceURL+"/v2/images", map[string]any{
			"name": "vcagent-" + sub, "disk_format": "vmdk", "container_format": "bare",
			"vmware_disktype": disktype, "vmware_adaptertype": "lsiLogic",
		}, http.Header{ctrl.AuthHeader: {ctrl.Token}})
		if err != nil {
			t.Fatal(err)
		}
		id := img["id"].(string)
		h := http.Header{ctrl.AuthHeader: {ctrl.Token}, "Content-Type": {"application/octet-stream"}}
		if _, err := ctrl.Do(ctx, "PUT", ctrl.GlanceURL+"/v2/images/"+id+"/file", vmdktest.Qemu(t, raw, sub), h); err != nil {
			t.Fatal(err)
		}
		ids[sub] = id
	}
	return ids
}

// TestVMDKFlavours boots one server from each kind of VMDK image glance may
// hold (a preallocated flat extent, monolithicSparse and streamOptimized)
// through the real nova API, and checks each VM in vCenter down to the
// bytes of its root disk, then deletes them.
func TestVMDKFlavours(t *testing.T) {
	ctrl, vc, host, flat := computeHostWithImage(t, "vmdkhost")
	ids := uploadVMDKImages(t, ctrl)
	ctx := context.Background()
	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc := clusters[0].Datacenter
	raw := vmdkImageRaw()
	var servers []string
	for _, f := range []struct {
		name, image string
		disk        []byte // what the root disk's extent must hold
	}{
		{"preallocated", flat, make([]byte, 1<<20)}, // uploadFlatImage's
		{"monolithicSparse", ids["monolithicSparse"], raw},
		{"streamOptimized", ids["streamOptimized"], raw},
	} {
		start := time.Now()
		id := createServer(t, ctrl, "vmdk-"+f.name, f.image, host)
		servers = append(servers, id)
		waitServer(t, ctrl, id, 180*time.Second, settled("ACTIVE"))
		t.Logf("%s image: ACTIVE after %s", f.name, time.Since(start).Round(time.Millisecond))

		vm, err := vc.FindVMByInstanceUUID(ctx, id)
		if err != nil {
			t.Fatalf("%s: no VM for server %s: %v", f.name, id, err)
		}
		if vm.Name != "vmdk-"+f.name+" ("+id+")" || vm.PowerState != vcenter.PowerStateOn || vm.ExtraConfig["nvp.vm-uuid"] != id || len(vm.Disks) != 1 {
			t.Errorf("%s: VM %+v", f.name, vm)
			continue
		}
		root, err := vcenter.ParseDatastorePath(vm.Disks[0].FileName)
		if err != nil {
			t.Fatal(err)
		}
		if kb, err := vc.VirtualDiskCapacityKB(ctx, dc, root); err != nil || kb != 1<<20 {
			t.Errorf("%s: root disk %s: %d KiB (%v), want the flavor's 1 GiB", f.name, root, kb, err)
		}
		// The simulator grows a disk in its descriptor only, so the extent
		// is still the image's flat disk, as converted on its way in.
		extent := vcenter.DatastorePath{Datastore: root.Datastore, Path: strings.TrimSuffix(root.Path, ".vmdk") + "-flat.vmdk"}
		got, err := vc.Download(ctx, dc, extent, int64(len(f.disk)))
		if err != nil || !bytes.Equal(got, f.disk) {
			t.Errorf("%s: root disk extent %s: %d bytes (%v), equal to the image's disk: %v", f.name, extent, len(got), err, bytes.Equal(got, f.disk))
		}
	}

	t0 := time.Now()
	for _, id := range servers {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range servers {
		for {
			_, err := ctrl.NovaGET(ctx, "/servers/"+id)
			if cp.StatusCode(err) == http.StatusNotFound {
				break
			}
			if time.Since(t0) > 120*time.Second {
				t.Fatalf("server %s not deleted: %v", id, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
		if _, err := vc.FindVMByInstanceUUID(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("VM of %s left in vCenter: %v", id, err)
		}
		noAllocations(t, ctrl, id)
	}
	t.Logf("3 deleted after %s", time.Since(t0).Round(time.Millisecond))
}
