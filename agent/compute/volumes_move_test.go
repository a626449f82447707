package compute

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

func moveInstance() *ovo.Object {
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	inst.SetString("host", "host1")
	return inst
}

// legacyBDM is a volume BDM of the pre-3.44 flow (no attachment id).
func legacyBDM(t *testing.T) *ovo.Object {
	t.Helper()
	b := testBDM(t, "/dev/sdc", true)
	b.SetString("volume_id", "vol-legacy")
	b.SetNull("attachment_id")
	b.ResetChanges()
	return b
}

// TestTerminateVolumeConnections: nova's _terminate_volume_connections —
// each attachment is replaced by a reserved one (created without a
// connector before the old one is deleted, so the volume never looks
// free) and the BDM saved with it; a pre-3.44 BDM has its connection
// terminated; an old attachment already gone is no error.
func TestTerminateVolumeConnections(t *testing.T) {
	for _, tc := range []struct {
		name      string
		deleteErr error
		wantErr   bool
	}{
		{name: "replaced"},
		{name: "old attachment gone", deleteErr: &cloud.HTTPError{Status: http.StatusNotFound}},
		{name: "cinder fails", deleteErr: &cloud.HTTPError{Status: http.StatusInternalServerError, Message: "boom"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _, api, f := volumeEnv(t, nil)
			if tc.deleteErr != nil {
				api.fail = map[string]error{"AttachmentDelete": tc.deleteErr}
			}
			b, legacy := testBDM(t, "/dev/sdb", true), legacyBDM(t)
			err := v.terminateVolumeConnections(t.Context(), mustContext(t, map[string]any{"auth_token": "user-token"}), moveInstance(), []*ovo.Object{b, legacy})
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			want := []string{"AttachmentCreate " + testVolumeID + " " + testInstanceUUID + " connector=false ", "AttachmentDelete " + testAttachmentID}
			if !tc.wantErr {
				want = append(want, "TerminateConnection vol-legacy")
			}
			if got := api.callList(); !slices.Equal(got, want) {
				t.Errorf("cinder calls %v, want %v", got, want)
			}
			names, data := sentActions(t, f)
			if tc.wantErr {
				if len(names) != 0 || b.StringOrEmpty("attachment_id") != testAttachmentID {
					t.Errorf("saves %v, BDM attachment %s: want the BDM untouched", names, b.StringOrEmpty("attachment_id"))
				}
				return
			}
			if !slices.Equal(names, []string{"BlockDeviceMapping.save"}) || data[0]["attachment_id"] != "new-att-1" {
				t.Errorf("object actions %v %v: want the BDM saved with the reserved attachment", names, data)
			}
		})
	}
}

// TestUpdateAndCompleteVolumeAttachments: at the end of a move each
// attachment gets this host's connector (with the VM's moref and the
// device), the BDM the connection info with the volume as serial, and
// the attachments are completed after the driver's step.
func TestUpdateAndCompleteVolumeAttachments(t *testing.T) {
	v, _, api, f := volumeEnv(t, nil)
	rc := mustContext(t, map[string]any{"auth_token": "user-token"})
	b, legacy := testBDM(t, "/dev/sdb", false), legacyBDM(t)
	vols := []*ovo.Object{b, legacy}
	if err := v.updateVolumeAttachments(t.Context(), rc, moveInstance(), vols); err != nil {
		t.Fatal(err)
	}
	if err := v.completeVolumeAttachments(t.Context(), rc, vols); err != nil {
		t.Fatal(err)
	}
	want := []string{"AttachmentUpdate " + testAttachmentID + " host=10.0.0.9,initiator=<nil>,instance=vm-42,ip=10.0.0.9 /dev/sdb", "AttachmentComplete " + testAttachmentID}
	if got := api.callList(); !slices.Equal(got, want) {
		t.Errorf("cinder calls %v, want %v", got, want)
	}
	names, data := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.save"}) || !strings.Contains(data[0]["connection_info"].(string), `"serial":"`+testVolumeID+`"`) {
		t.Errorf("object actions %v %v: want the BDM saved with the connection info", names, data)
	}
}

// TestShelveOffloadVolumes: before the offloaded VM is destroyed its
// volume disks are detached, files kept (the VMware driver's destroy
// with block_device_info); after it the attachments become reserved ones.
func TestShelveOffloadVolumes(t *testing.T) {
	b := testBDM(t, "/dev/sdb", true)
	v, hv, api, _ := volumeEnv(t, ovo.NewList("BlockDeviceMappingList", "1.18", b))
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid", Path: "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	rc := mustContext(t, map[string]any{"auth_token": "user-token"})
	after, err := v.shelveOffloadVolumes(t.Context(), rc, moveInstance())
	if err != nil {
		t.Fatal(err)
	}
	if got := hv.callList(); len(got) == 0 || got[0] != "PowerOff" || !slices.Contains(got, "DetachDisk vm-42 2001 false") {
		t.Errorf("vCenter calls %v: want the VM off and the volume's disk detached, its file kept", got)
	}
	if got := api.callList(); len(got) != 0 {
		t.Errorf("cinder calls before the destroy %v: want none", got)
	}
	if err := after(); err != nil {
		t.Fatal(err)
	}
	if got := api.callList(); !slices.Equal(got, []string{"AttachmentCreate " + testVolumeID + " " + testInstanceUUID + " connector=false ", "AttachmentDelete " + testAttachmentID}) {
		t.Errorf("cinder calls after the destroy %v", got)
	}
}

// TestPreLiveMigrationVolumes: the destination creates an attachment with
// its connector for each volume, keeps it and its connection info in the
// BDM, completes it and answers the old ids (old_vol_attachment_ids).
func TestPreLiveMigrationVolumes(t *testing.T) {
	b := testBDM(t, "/dev/sdb", true)
	v, _, api, f := volumeEnv(t, ovo.NewList("BlockDeviceMappingList", "1.18", b, legacyBDM(t)))
	old, err := v.preLiveMigrationVolumes(t.Context(), mustContext(t, map[string]any{"auth_token": "user-token"}), moveInstance())
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != 1 || old[testVolumeID] != testAttachmentID {
		t.Errorf("old_vol_attachment_ids %v", old)
	}
	want := []string{"AttachmentCreate " + testVolumeID + " " + testInstanceUUID + " connector=true /dev/sdb", "AttachmentComplete new-att-1"}
	if got := api.callList(); !slices.Equal(got, want) {
		t.Errorf("cinder calls %v, want %v", got, want)
	}
	_, data := sentActions(t, f)
	if len(data) != 2 || data[0]["attachment_id"] != "new-att-1" || data[1]["connection_info"] == nil {
		t.Errorf("BDM saves %v: want the new attachment, then the connection info", data)
	}
}

// TestLiveMigrationVolumeEnds: after the migration the source's
// attachments (those of the BDMs before the destination changed them)
// are deleted; after a failed one the destination's are deleted and the
// BDMs get the source's attachment and connection info back.
func TestLiveMigrationVolumeEnds(t *testing.T) {
	source := []*ovo.Object{testBDM(t, "/dev/sdb", true), legacyBDM(t)}
	moved := testBDM(t, "/dev/sdb", false)
	moved.SetString("attachment_id", "dest-att")
	moved.SetString("connection_info", `{"driver_volume_type": "vmdk", "data": {"volume": "vm-99"}}`)
	moved.ResetChanges()
	v, _, api, f := volumeEnv(t, ovo.NewList("BlockDeviceMappingList", "1.18", moved, legacyBDM(t)))
	rc := mustContext(t, map[string]any{"auth_token": "user-token"})

	v.removeSourceVolumeConnections(t.Context(), rc, moveInstance(), source)
	if got := api.callList(); !slices.Equal(got, []string{"AttachmentDelete " + testAttachmentID, "TerminateConnection vol-legacy"}) {
		t.Errorf("cinder calls after the migration %v", got)
	}

	api.calls = nil
	v.rollbackVolumeBDMs(t.Context(), rc, moveInstance(), source)
	if got := api.callList(); !slices.Equal(got, []string{"AttachmentDelete dest-att"}) {
		t.Errorf("cinder calls of the rollback %v", got)
	}
	names, data := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.save"}) || data[0]["attachment_id"] != testAttachmentID ||
		!strings.Contains(data[0]["connection_info"].(string), "vm-77") {
		t.Errorf("object actions %v %v: want the BDM back on the source's attachment", names, data)
	}
}

// TestConsolidateMovedVolumes: a volume disk a move took to another
// datastore has its backing follow it; one still where the backing has
// it is left alone.
func TestConsolidateMovedVolumes(t *testing.T) {
	b := testBDM(t, "/dev/sdb", true)
	for _, tc := range []struct {
		name string
		path string
		want []string
	}{
		{"in place", "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk",
			[]string{"FindVolumeDisk vm-42 disk-uuid", "VolumeBackingDisk vm-77"}},
		{"moved", "[ds2] " + testInstanceUUID + "/volume.vmdk", []string{
			"FindVolumeDisk vm-42 disk-uuid", "VolumeBackingDisk vm-77", "RelocateVM vm-77 resgroup-9 datastore-2",
			"DetachDisk vm-77 0 true", "AttachVolumeDisk vm-77 [ds2] " + testInstanceUUID + "/volume.vmdk lsiLogic thin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, hv, _, _ := volumeEnv(t, nil)
			hv.vm.ResourcePool = vcenter.Ref{Type: "ResourcePool", Value: "resgroup-9"}
			hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid", Path: tc.path,
				Datastore: vcenter.Ref{Type: "Datastore", Value: "datastore-2"}, AdapterType: "lsiLogic", DiskType: "thin"}}
			hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
			v.consolidateVolumes(t.Context(), moveInstance(), []*ovo.Object{b})
			if got := hv.callList(); !slices.Equal(got, tc.want) {
				t.Errorf("vCenter calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestInstanceRootDisk: a resize only ever grows, copies or restores the
// disk in the instance's own folder, never a volume's.
func TestInstanceRootDisk(t *testing.T) {
	root := vcenter.Disk{Key: 2000, FileName: "[ds1] " + testInstanceUUID + "/" + testInstanceUUID + ".vmdk"}
	vol := vcenter.Disk{Key: 2001, FileName: "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk"}
	for _, tc := range []struct {
		name  string
		disks []vcenter.Disk
		want  int32
		ok    bool
	}{
		{"root and volume", []vcenter.Disk{root, vol}, 2000, true},
		{"volume first", []vcenter.Disk{vol, root}, 2000, true},
		{"booted from a volume", []vcenter.Disk{vol}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := instanceRootDisk(vcenter.VM{InstanceUUID: testInstanceUUID, Disks: tc.disks})
			if ok != tc.ok || d.Key != tc.want {
				t.Errorf("root disk %+v, %v; want key %d, %v", d, ok, tc.want, tc.ok)
			}
		})
	}
}
