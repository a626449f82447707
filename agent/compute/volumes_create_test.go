package compute

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// createBDM is a BDM of a volume nova-compute creates.
func createBDM(t *testing.T, source string, deleteOnTermination bool) *ovo.Object {
	t.Helper()
	b := testBDM(t, "/dev/sda", false)
	b.SetString("source_type", source)
	b.SetNull("volume_id")
	b.SetNull("attachment_id")
	b.SetInt("volume_size", 2)
	b.SetInt("boot_index", 0)
	b.SetBool("delete_on_termination", deleteOnTermination)
	switch source {
	case "image":
		b.SetString("image_id", "img-1")
	case "snapshot":
		b.SetString("snapshot_id", "snap-1")
	}
	return b
}

func bdmListRaw(t *testing.T, bdms ...*ovo.Object) json.RawMessage {
	t.Helper()
	enc, err := ovo.NovaCodec().EncodeEntity(ovo.NewList("BlockDeviceMappingList", "1.18", bdms...))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(enc)
	return raw
}

// TestBuildCreatesVolumes: for a BDM of source image, blank or snapshot
// the build creates the volume in cinder as nova's
// DriverVol*BlockDevice does (the image or snapshot as its source, a
// blank one named after the instance, the snapshot's volume's type),
// waits for it to be available, reserves an attachment for the instance,
// saves both ids in the BDM and then attaches it like any volume.
func TestBuildCreatesVolumes(t *testing.T) {
	for _, tc := range []struct {
		source, create string
		pre            []string
	}{
		{"image", "CreateVolume size=2 name= image=img-1 snapshot= type= az=", nil},
		{"blank", "CreateVolume size=2 name=" + testInstanceUUID + "-blank-vol image= snapshot= type= az=", nil},
		{"snapshot", "CreateVolume size=2 name= image= snapshot=snap-1 type=fast az=", []string{"Snapshot snap-1", "Volume orig-vol"}},
	} {
		t.Run(tc.source, func(t *testing.T) {
			v, hv, api, f := volumeEnv(t, nil)
			v.allocate = &allocatePolicy{retries: 5, interval: time.Millisecond}
			api.vol.VolumeType = "fast"
			api.statuses = []string{"fast", "creating", "downloading", "available"}
			if tc.source != "snapshot" {
				api.statuses = api.statuses[1:]
			}
			hv.vm = vcenter.VM{} // no VM yet
			inst := ovo.New("Instance", "2.7")
			inst.SetString("uuid", testInstanceUUID)
			inst.SetNull("root_device_name")
			b := createBDM(t, tc.source, true)
			vols, err := v.prepBuildVolumes(t.Context(), mustContext(t, map[string]any{"auth_token": "user-token"}), inst, bdmListRaw(t, b))
			if err != nil {
				t.Fatal(err)
			}
			want := append(append([]string{}, tc.pre...), tc.create,
				"Volume "+testVolumeID, "Volume "+testVolumeID, "Volume "+testVolumeID,
				"AttachmentCreate "+testVolumeID+" "+testInstanceUUID+" connector=false ",
				"Volume "+testVolumeID, "AttachmentUpdate new-att-1 host=10.0.0.9,initiator=<nil>,ip=10.0.0.9 /dev/sda", "AttachmentComplete new-att-1")
			if got := api.callList(); !slices.Equal(got, want) {
				t.Errorf("cinder calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if len(vols) != 1 || vols[0].bdm.StringOrEmpty("volume_id") != testVolumeID || vols[0].bdm.StringOrEmpty("attachment_id") != "new-att-1" {
				t.Fatalf("build volumes %+v: want the created volume with its attachment", vols)
			}
			_, data := sentActions(t, f)
			if len(data) == 0 || data[0]["volume_id"] != testVolumeID || data[0]["attachment_id"] != "new-att-1" {
				t.Errorf("first BDM save %v: want the volume and attachment ids saved at once", data)
			}
		})
	}
}

// TestBuildVolumeNotCreated: a volume that does not become available in
// block_device_allocate_retries + 1 reads (or ends in another status)
// aborts the build with nova's VolumeNotCreated message; a
// delete_on_termination volume is deleted; a failed create aborts too.
func TestBuildVolumeNotCreated(t *testing.T) {
	for _, tc := range []struct {
		name      string
		statuses  []string
		retries   int
		deleteVol bool
		createErr error
		reads     int
		wantMsg   string
	}{
		{name: "still creating", statuses: []string{"creating"}, retries: 2, deleteVol: true, reads: 3, wantMsg: "or 3 attempts. And its status is creating."},
		{name: "no retries", statuses: []string{"downloading"}, retries: 0, reads: 1, wantMsg: "or 1 attempts. And its status is downloading."},
		{name: "error status", statuses: []string{"creating", "error"}, retries: 5, deleteVol: true, reads: 2, wantMsg: "or 2 attempts. And its status is error."},
		{name: "create refused", createErr: &cloud.HTTPError{Status: http.StatusRequestEntityTooLarge, Message: "VolumeSizeExceedsAvailableQuota"}, deleteVol: true, wantMsg: "VolumeSizeExceedsAvailableQuota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _, api, _ := volumeEnv(t, nil)
			v.allocate = &allocatePolicy{retries: tc.retries, interval: time.Millisecond}
			api.statuses = tc.statuses
			if tc.createErr != nil {
				api.fail = map[string]error{"CreateVolume": tc.createErr}
			}
			inst := ovo.New("Instance", "2.7")
			inst.SetString("uuid", testInstanceUUID)
			inst.SetNull("root_device_name")
			_, err := v.prepBuildVolumes(t.Context(), mustContext(t, map[string]any{"auth_token": "user-token"}), inst, bdmListRaw(t, createBDM(t, "blank", tc.deleteVol)))
			wantRemote(t, "build", err, "BuildAbortException")
			if err == nil || !strings.Contains(err.Error(), "Failure prepping block device.") || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %v: want the block device failure with %q", err, tc.wantMsg)
			}
			calls := api.callList()
			reads, deletes := 0, 0
			for _, c := range calls {
				if strings.HasPrefix(c, "Volume ") {
					reads++
				}
				if c == "DeleteVolume "+testVolumeID {
					deletes++
				}
			}
			if reads != tc.reads {
				t.Errorf("%d volume reads, want %d: %v", reads, tc.reads, calls)
			}
			if wantDel := tc.deleteVol && tc.createErr == nil; (deletes > 0) != wantDel {
				t.Errorf("cinder calls %v: volume deleted %v, want %v", calls, deletes > 0, wantDel)
			}
			if slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "AttachmentCreate") }) {
				t.Errorf("cinder calls %v: no attachment for a volume that is not available", calls)
			}
		})
	}
}

// TestBuildAbortCleansUpVolumes: when attaching a created volume fails,
// its reserved attachment is deleted and, being delete_on_termination,
// the volume too; a volume the user brought stays.
func TestBuildAbortCleansUpVolumes(t *testing.T) {
	v, _, api, _ := volumeEnv(t, nil)
	v.allocate = &allocatePolicy{retries: 1, interval: time.Millisecond}
	api.statuses = []string{"available"}
	api.fail = map[string]error{"AttachmentUpdate": &cloud.HTTPError{Status: http.StatusInternalServerError, Message: "boom"}}
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	inst.SetNull("root_device_name")
	own := testBDM(t, "/dev/sdb", false)
	own.SetString("volume_id", "vol-own")
	own.SetString("attachment_id", "att-own")
	own.SetBool("delete_on_termination", false)
	_, err := v.prepBuildVolumes(t.Context(), mustContext(t, map[string]any{"auth_token": "user-token"}), inst, bdmListRaw(t, createBDM(t, "image", true), own))
	wantRemote(t, "build", err, "BuildAbortException")
	calls := api.callList()
	for _, want := range []string{"AttachmentDelete new-att-1", "AttachmentDelete att-own", "DeleteVolume " + testVolumeID} {
		if !slices.Contains(calls, want) {
			t.Errorf("cinder calls %v: want %s", calls, want)
		}
	}
	if slices.Contains(calls, "DeleteVolume vol-own") {
		t.Errorf("cinder calls %v: the user's volume was deleted", calls)
	}
}
