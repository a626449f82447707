package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

const (
	testVolumeID     = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a80"
	testAttachmentID = "6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b91"
)

// volHV is a vCenter with one instance VM and one volume backing.
type volHV struct {
	Hypervisor
	mu    sync.Mutex
	vm    vcenter.VM
	disks []vcenter.VolumeDisk // on the instance VM
	calls []string
	fail  string
}

func (f *volHV) call(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := fmt.Sprintf(format, args...)
	f.calls = append(f.calls, c)
	if f.fail != "" && strings.HasPrefix(c, f.fail) {
		return errors.New(c + " failed")
	}
	return nil
}

func (f *volHV) FindVMByInstanceUUID(_ context.Context, uuid string) (vcenter.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if uuid != testInstanceUUID || f.vm.Ref.IsZero() {
		return vcenter.VM{}, vcenter.ErrNotFound
	}
	vm := f.vm
	vm.ExtraConfig = map[string]string{}
	for k, v := range f.vm.ExtraConfig {
		vm.ExtraConfig[k] = v
	}
	return vm, nil
}

func (f *volHV) VolumeBackingDisk(_ context.Context, ref vcenter.Ref) (vcenter.VolumeDisk, error) {
	if err := f.call("VolumeBackingDisk %s", ref.Value); err != nil {
		return vcenter.VolumeDisk{}, err
	}
	if ref.Value != "vm-77" {
		return vcenter.VolumeDisk{}, vcenter.ErrNotFound
	}
	return vcenter.VolumeDisk{Path: "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk", UUID: testVolumeID,
		AdapterType: vcenter.BackingAdapterLsiLogic, DiskType: vcenter.VolumeDiskThin, CapacityKB: 1 << 20}, nil
}

func (f *volHV) AttachVolumeDisk(_ context.Context, vm vcenter.Ref, d vcenter.VolumeDisk) (vcenter.VolumeDisk, error) {
	if err := f.call("AttachVolumeDisk %s %s %s %s", vm.Value, d.Path, d.AdapterType, d.DiskType); err != nil {
		return vcenter.VolumeDisk{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d.Key, d.UUID = 2001, "attached-"+d.UUID
	f.disks = append(f.disks, d)
	return d, nil
}

func (f *volHV) FindVolumeDisk(_ context.Context, vm vcenter.Ref, uuid string) (vcenter.VolumeDisk, error) {
	if err := f.call("FindVolumeDisk %s %s", vm.Value, uuid); err != nil {
		return vcenter.VolumeDisk{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.disks {
		if d.UUID == uuid && uuid != "" {
			return d, nil
		}
	}
	return vcenter.VolumeDisk{}, vcenter.ErrNotFound
}

func (f *volHV) DetachDisk(_ context.Context, vm vcenter.Ref, key int32, destroy bool) error {
	if err := f.call("DetachDisk %s %d %v", vm.Value, key, destroy); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disks = slices.DeleteFunc(f.disks, func(d vcenter.VolumeDisk) bool { return d.Key == key })
	return nil
}

func (f *volHV) SetExtraConfig(_ context.Context, vm vcenter.Ref, values map[string]string) error {
	for k, v := range values {
		if err := f.call("SetExtraConfig %s %s=%s", vm.Value, k, v); err != nil {
			return err
		}
		f.mu.Lock()
		if v == "" {
			delete(f.vm.ExtraConfig, k)
		} else {
			f.vm.ExtraConfig[k] = v
		}
		f.mu.Unlock()
	}
	return nil
}

func (f *volHV) PowerOff(context.Context, vcenter.Ref) error {
	if err := f.call("PowerOff"); err != nil {
		return err
	}
	f.mu.Lock()
	f.vm.PowerState = vcenter.PowerStateOff
	f.mu.Unlock()
	return nil
}

func (f *volHV) RelocateVM(_ context.Context, vm vcenter.Ref, spec vcenter.RelocateSpec) (vcenter.VM, error) {
	return vcenter.VM{Ref: vm}, f.call("RelocateVM %s %s %s", vm.Value, spec.ResourcePool.Value, spec.Datastore.Value)
}

func (f *volHV) EnsureExtension(context.Context, string, string, string) error {
	return f.call("EnsureExtension")
}

func (f *volHV) EnsureFolderPath(_ context.Context, dc string, path ...string) (vcenter.Ref, error) {
	return vcenter.Ref{Type: "Folder", Value: "group-7"}, f.call("EnsureFolderPath %s %s", dc, strings.Join(path, "/"))
}

func (f *volHV) CreateVM(_ context.Context, spec vcenter.VMSpec) (vcenter.VM, error) {
	if err := f.call("CreateVM %s %s disks=%d ctrl=%s", spec.InstanceUUID, spec.DatastorePath, len(spec.Disks), spec.SCSIController); err != nil {
		return vcenter.VM{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vm = vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-42"}, InstanceUUID: spec.InstanceUUID, PowerState: vcenter.PowerStateOff,
		ResourcePool: spec.ResourcePool, ExtraConfig: map[string]string{}}
	return f.vm, nil
}

func (f *volHV) PowerOn(context.Context, vcenter.Ref) error {
	if err := f.call("PowerOn"); err != nil {
		return err
	}
	f.mu.Lock()
	f.vm.PowerState = vcenter.PowerStateOn
	f.mu.Unlock()
	return nil
}

func (f *volHV) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// fakeVolumeAPI is cinder, recording the calls.
type fakeVolumeAPI struct {
	mu    sync.Mutex
	calls []string
	fail  map[string]error // call name -> error
	vol   cloud.Volume
	// statuses, if set, are the statuses Volume answers in turn (the
	// last one from then on).
	statuses []string
	created  int
}

func (f *fakeVolumeAPI) call(name, format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+fmt.Sprintf(format, args...))
	return f.fail[name]
}

func (f *fakeVolumeAPI) Volume(_ context.Context, cc cloud.CinderContext, id string) (cloud.Volume, error) {
	if cc.Token != "user-token" {
		return cloud.Volume{}, fmt.Errorf("token %q, want the user's", cc.Token)
	}
	v := f.vol
	v.ID = id
	f.mu.Lock()
	if len(f.statuses) > 0 {
		v.Status = f.statuses[0]
		if len(f.statuses) > 1 {
			f.statuses = f.statuses[1:]
		}
	}
	f.mu.Unlock()
	return v, f.call("Volume", "%s", id)
}

func (f *fakeVolumeAPI) AttachmentUpdate(_ context.Context, _ cloud.CinderContext, id string, connector map[string]any, mp string) (map[string]any, error) {
	keys := make([]string, 0, len(connector))
	for k, v := range connector {
		keys = append(keys, fmt.Sprintf("%s=%v", k, v))
	}
	slices.Sort(keys)
	if err := f.call("AttachmentUpdate", "%s %s %s", id, strings.Join(keys, ","), mp); err != nil {
		return nil, err
	}
	return map[string]any{"driver_volume_type": "vmdk", "data": map[string]any{
		"volume": "vm-77", "volume_id": testVolumeID, "name": "volume-" + testVolumeID, "access_mode": "rw",
	}}, nil
}

func (f *fakeVolumeAPI) AttachmentComplete(_ context.Context, _ cloud.CinderContext, id string) error {
	return f.call("AttachmentComplete", "%s", id)
}

func (f *fakeVolumeAPI) AttachmentDelete(_ context.Context, _ cloud.CinderContext, id string) error {
	return f.call("AttachmentDelete", "%s", id)
}

func (f *fakeVolumeAPI) RollDetaching(_ context.Context, _ cloud.CinderContext, id string) error {
	return f.call("RollDetaching", "%s", id)
}

func (f *fakeVolumeAPI) TerminateConnection(_ context.Context, _ cloud.CinderContext, id string, _ map[string]any) error {
	return f.call("TerminateConnection", "%s", id)
}

func (f *fakeVolumeAPI) Detach(_ context.Context, _ cloud.CinderContext, id, att string) error {
	return f.call("Detach", "%s %s", id, att)
}

func (f *fakeVolumeAPI) MigrateVolumeCompletion(_ context.Context, _ cloud.CinderContext, oldID, newID string, failed bool) (string, error) {
	return oldID, f.call("MigrateVolumeCompletion", "%s %s %v", oldID, newID, failed)
}

func (f *fakeVolumeAPI) DeleteVolume(_ context.Context, _ cloud.CinderContext, id string) error {
	return f.call("DeleteVolume", "%s", id)
}

func (f *fakeVolumeAPI) AttachmentCreate(_ context.Context, _ cloud.CinderContext, volumeID, instanceUUID string, connector map[string]any, mp string) (string, map[string]any, error) {
	f.mu.Lock()
	f.created++
	id := fmt.Sprintf("new-att-%d", f.created)
	f.mu.Unlock()
	if err := f.call("AttachmentCreate", "%s %s connector=%v %s", volumeID, instanceUUID, connector != nil, mp); err != nil {
		return "", nil, err
	}
	if connector == nil {
		return id, nil, nil
	}
	return id, map[string]any{"driver_volume_type": "vmdk", "data": map[string]any{"volume": "vm-77", "volume_id": volumeID}}, nil
}

func (f *fakeVolumeAPI) Attachment(_ context.Context, _ cloud.CinderContext, id string) (map[string]any, error) {
	return map[string]any{"id": id, "connection_info": map[string]any{"driver_volume_type": "vmdk", "data": map[string]any{"volume": "vm-77"}}},
		f.call("Attachment", "%s", id)
}

func (f *fakeVolumeAPI) CreateVolume(_ context.Context, _ cloud.CinderContext, spec cloud.VolumeCreate) (cloud.Volume, error) {
	if err := f.call("CreateVolume", "size=%d name=%s image=%s snapshot=%s type=%s az=%s", spec.Size, spec.Name, spec.ImageID, spec.SnapshotID, spec.VolumeType, spec.AvailabilityZone); err != nil {
		return cloud.Volume{}, err
	}
	return cloud.Volume{ID: testVolumeID, Status: "creating", Size: spec.Size}, nil
}

func (f *fakeVolumeAPI) Snapshot(_ context.Context, _ cloud.CinderContext, id string) (cloud.Snapshot, error) {
	return cloud.Snapshot{ID: id, VolumeID: "orig-vol", Status: "available", Size: 1}, f.call("Snapshot", "%s", id)
}

func (f *fakeVolumeAPI) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// volumeEnv returns volumes on a fake conductor (whose class actions
// answer classReply), vCenter and cinder.
func volumeEnv(t *testing.T, classReply any) (*volumes, *volHV, *fakeVolumeAPI, *fakeConductor) {
	t.Helper()
	reply := json.RawMessage(`null`)
	if classReply != nil {
		enc, err := ovo.NovaCodec().EncodeEntity(classReply)
		if err != nil {
			t.Fatal(err)
		}
		reply, _ = json.Marshal(enc)
	}
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(`[{"id": 17}, null]`),
		"object_class_action_versions": reply,
	}, got: map[string][]json.RawMessage{}}
	c := startFakeConductor(t, f)
	hv := &volHV{vm: vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-42"}, PowerState: vcenter.PowerStateOn, ExtraConfig: map[string]string{}}}
	api := &fakeVolumeAPI{vol: cloud.Volume{Status: "reserved", Size: 1}}
	l := &lifecycle{cond: c, hv: hv, host: "host1", log: zerolog.Nop()}
	return &volumes{lifecycle: l, api: api, connectorIP: "10.0.0.9"}, hv, api, f
}

// volRequest is request() with the user's token in the context.
func volRequest(t *testing.T, method string, args map[string]any, instFields map[string]any) *rpc.Request {
	t.Helper()
	req := request(t, method, args)
	_ = req.Context.Set("auth_token", "user-token")
	if len(instFields) > 0 {
		var all map[string]any
		_ = json.Unmarshal(req.Args, &all)
		inst := all["instance"].(map[string]any)["nova_object.data"].(map[string]any)
		for k, v := range instFields {
			inst[k] = v
		}
		req.Args, _ = json.Marshal(all)
	}
	return req
}

func testBDM(t *testing.T, device string, withConnection bool) *ovo.Object {
	t.Helper()
	b := ovo.New("BlockDeviceMapping", "1.21")
	b.SetInt("id", 17)
	b.SetString("instance_uuid", testInstanceUUID)
	b.SetString("source_type", "volume")
	b.SetString("destination_type", "volume")
	b.SetString("volume_id", testVolumeID)
	b.SetString("device_name", device)
	b.SetString("attachment_id", testAttachmentID)
	b.SetNull("volume_size")
	b.SetNull("connection_info")
	if withConnection {
		b.SetString("connection_info", `{"driver_volume_type": "vmdk", "data": {"volume": "vm-77", "volume_id": "`+testVolumeID+`"}, "serial": "`+testVolumeID+`"}`)
	}
	b.ResetChanges()
	return b
}

func encodeArg(t *testing.T, o *ovo.Object) any {
	t.Helper()
	enc, err := ovo.NovaCodec().EncodeEntity(o)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// sentActions returns "<object>.<method>" of the object_action calls and
// the objects' data.
func sentActions(t *testing.T, f *fakeConductor) ([]string, []map[string]any) {
	t.Helper()
	var names []string
	var data []map[string]any
	for _, a := range sentObjects(t, f) {
		obj, _ := a["objinst"].(map[string]any)
		names = append(names, fmt.Sprintf("%v.%v", obj["nova_object.name"], a["objmethod"]))
		d, _ := obj["nova_object.data"].(map[string]any)
		data = append(data, d)
	}
	return names, data
}

func classActions(t *testing.T, f *fakeConductor) []string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, raw := range f.got["object_class_action_versions"] {
		var a map[string]any
		_ = json.Unmarshal(raw, &a)
		out = append(out, fmt.Sprintf("%v.%v", a["objname"], a["objmethod"]))
	}
	return out
}

func wantRemote(t *testing.T, what string, err error, class string) {
	t.Helper()
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != class {
		t.Errorf("%s: %v, want %s", what, err, class)
	}
}

// TestNextDeviceName checks compute_utils.get_next_device_name.
func TestNextDeviceName(t *testing.T) {
	t.Parallel()
	inst := ovo.New("Instance", "2.7")
	inst.SetNull("root_device_name")
	root, used := blockMapping(inst, nil)
	if got, err := nextDeviceName(used, root, ""); err != nil || got != "/dev/sdb" {
		t.Errorf("no root device name: %q, %v; want /dev/sdb", got, err)
	}
	inst.SetString("root_device_name", "/dev/sda")
	vol := ovo.New("BlockDeviceMapping", "1.21")
	vol.SetString("destination_type", "volume")
	vol.SetString("device_name", "/dev/sdb")
	root, used = blockMapping(inst, []*ovo.Object{vol})
	for _, c := range []struct{ req, want, err string }{
		{"", "/dev/sdc", ""},
		{"/dev/vdd", "/dev/sdd", ""},
		{"/dev/sdb", "", "DevicePathInUse"},
		{"sdx", "", "InvalidDevicePath"},
	} {
		got, err := nextDeviceName(used, root, c.req)
		if c.err != "" {
			wantRemote(t, c.req, err, c.err)
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("device %q: %q, %v; want %q", c.req, got, err, c.want)
		}
	}
	var many []string
	for i := 0; i < 26; i++ {
		many = append(many, "/dev/sd"+deviceLetterAt(i))
	}
	if got, _ := nextDeviceName(many, "/dev/sda", ""); got != "/dev/sdaa" {
		t.Errorf("after sdz: %q, want /dev/sdaa", got)
	}
}

// TestReserveBlockDeviceName: the next free device name, the BDM created
// through conductor with nova's fields and returned; a volume attached
// already, a tag or multiattach fail as in nova.
func TestReserveBlockDeviceName(t *testing.T) {
	existing := testBDM(t, "/dev/sdb", true)
	existing.SetString("volume_id", "other-volume")
	v, _, _, f := volumeEnv(t, ovo.NewList("BlockDeviceMappingList", "1.18", existing))
	ctx := t.Context()
	req := volRequest(t, "reserve_block_device_name", map[string]any{"device": nil, "volume_id": testVolumeID,
		"disk_bus": nil, "device_type": nil, "tag": nil, "multiattach": false}, map[string]any{"root_device_name": "/dev/sda"})
	res, err := v.ReserveBlockDeviceName(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	bdm, err := ovo.NovaCodec().Decode(res)
	if err != nil || bdm.Name != "BlockDeviceMapping" || bdm.StringOrEmpty("device_name") != "/dev/sdc" {
		t.Fatalf("reply %v, %v; want the BDM at /dev/sdc", res, err)
	}
	if id, _ := bdm.Int("id"); id != 17 {
		t.Errorf("the reply lacks conductor's id: %v", bdm.Fields)
	}
	names, data := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.create"}) {
		t.Fatalf("object actions %v", names)
	}
	for k, want := range map[string]any{"source_type": "volume", "destination_type": "volume", "instance_uuid": testInstanceUUID,
		"volume_id": testVolumeID, "device_name": "/dev/sdc", "boot_index": nil, "guest_format": nil, "tag": nil} {
		if got, ok := data[0][k]; !ok || got != want {
			t.Errorf("created BDM %s = %v, want %v", k, got, want)
		}
	}
	if got := classActions(t, f); !slices.Equal(got, []string{"BlockDeviceMappingList.get_by_instance_uuid"}) {
		t.Errorf("class actions %v", got)
	}

	req = volRequest(t, "reserve_block_device_name", map[string]any{"volume_id": "other-volume"}, nil)
	_, err = v.ReserveBlockDeviceName(ctx, req)
	wantRemote(t, "volume attached already", err, "InvalidVolume")
	req = volRequest(t, "reserve_block_device_name", map[string]any{"volume_id": testVolumeID, "tag": "t1"}, nil)
	_, err = v.ReserveBlockDeviceName(ctx, req)
	wantRemote(t, "tagged", err, "VolumeTaggedAttachNotSupported")
	req = volRequest(t, "reserve_block_device_name", map[string]any{"volume_id": testVolumeID, "multiattach": true}, nil)
	_, err = v.ReserveBlockDeviceName(ctx, req)
	wantRemote(t, "multiattach", err, "MultiattachNotSupportedByVirtDriver")
}

// TestAttachVolume: nova's new-style attach on the VMware driver.
func TestAttachVolume(t *testing.T) {
	v, hv, api, f := volumeEnv(t, nil)
	ctx := t.Context()
	req := volRequest(t, "attach_volume", map[string]any{"bdm": encodeArg(t, testBDM(t, "/dev/sdb", false))}, nil)
	if _, err := v.AttachVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	wantAPI := []string{
		"Volume " + testVolumeID,
		"AttachmentUpdate " + testAttachmentID + " host=10.0.0.9,initiator=<nil>,instance=vm-42,ip=10.0.0.9 /dev/sdb",
		"AttachmentComplete " + testAttachmentID,
	}
	if got := api.callList(); !slices.Equal(got, wantAPI) {
		t.Errorf("cinder calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantAPI, "\n"))
	}
	volPath := "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk"
	wantHV := []string{
		"VolumeBackingDisk vm-77",
		"AttachVolumeDisk vm-42 " + volPath + " lsiLogic thin",
		"SetExtraConfig vm-42 volume-" + testVolumeID + "=attached-" + testVolumeID,
	}
	if got := hv.callList(); !slices.Equal(got, wantHV) {
		t.Errorf("vCenter calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantHV, "\n"))
	}
	names, data := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.save"}) {
		t.Fatalf("object actions %v", names)
	}
	var ci map[string]any
	if err := json.Unmarshal([]byte(data[0]["connection_info"].(string)), &ci); err != nil || ci["serial"] != testVolumeID || ci["driver_volume_type"] != "vmdk" {
		t.Errorf("saved connection_info %v (%v)", data[0]["connection_info"], err)
	}
	if fmt.Sprint(data[0]["volume_size"]) != "1" {
		t.Errorf("saved volume_size %v, want the volume's 1", data[0]["volume_size"])
	}
	if got := classActions(t, f); !slices.Equal(got, []string{"InstanceActionEvent.event_start", "InstanceActionEvent.event_finish_with_failure"}) {
		t.Errorf("class actions %v", got)
	}
}

// TestAttachVolumeFailure: a failed driver attach deletes the attachment
// (twice, as nova's _volume_attach and _attach_volume both do), destroys
// the BDM and records the fault.
func TestAttachVolumeFailure(t *testing.T) {
	v, hv, api, f := volumeEnv(t, nil)
	hv.fail = "AttachVolumeDisk"
	req := volRequest(t, "attach_volume", map[string]any{"bdm": encodeArg(t, testBDM(t, "/dev/sdb", false))}, nil)
	_, err := v.AttachVolume(t.Context(), req)
	wantRemote(t, "attach", err, "VimFaultException")
	want := []string{"AttachmentDelete " + testAttachmentID, "AttachmentDelete " + testAttachmentID}
	if got := api.callList(); !slices.Equal(got[2:], want) {
		t.Errorf("cinder calls %v", got)
	}
	names, _ := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.destroy", "InstanceFault.create"}) {
		t.Errorf("object actions %v", names)
	}

	// attachment_complete failing: the disk comes off again
	v, hv, api, _ = volumeEnv(t, nil)
	api.fail = map[string]error{"AttachmentComplete": &cloud.HTTPError{Status: http.StatusInternalServerError, Message: "boom"}}
	_, err = v.AttachVolume(t.Context(), req)
	wantRemote(t, "complete", err, "ClientException")
	if got := hv.callList(); !slices.Contains(got, "DetachDisk vm-42 2001 false") {
		t.Errorf("vCenter calls %v: want the disk detached", got)
	}
}

// TestDetachVolume: the disk found by extraConfig volume-<id>, detached
// with its file kept, the key cleared, the attachment deleted and the BDM
// destroyed; a disk that is gone is only a warning.
func TestDetachVolume(t *testing.T) {
	v, hv, api, f := volumeEnv(t, testBDM(t, "/dev/sdb", true))
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid", Path: "[ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	ctx := t.Context()
	req := volRequest(t, "detach_volume", map[string]any{"volume_id": testVolumeID, "attachment_id": testAttachmentID}, nil)
	if _, err := v.DetachVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	wantHV := []string{
		"FindVolumeDisk vm-42 disk-uuid",
		"VolumeBackingDisk vm-77",
		"DetachDisk vm-42 2001 false",
		"SetExtraConfig vm-42 volume-" + testVolumeID + "=",
	}
	if got := hv.callList(); !slices.Equal(got, wantHV) {
		t.Errorf("vCenter calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantHV, "\n"))
	}
	if got := api.callList(); !slices.Equal(got, []string{"Volume " + testVolumeID, "AttachmentDelete " + testAttachmentID}) {
		t.Errorf("cinder calls %v", got)
	}
	names, _ := sentActions(t, f)
	if !slices.Equal(names, []string{"BlockDeviceMapping.destroy"}) {
		t.Errorf("object actions %v", names)
	}
	if got := classActions(t, f); !slices.Contains(got, "BlockDeviceMapping.get_by_volume_and_instance") {
		t.Errorf("class actions %v", got)
	}

	// again: the disk is gone (DiskNotFound is ignored), the attachment
	// too (VolumeAttachmentNotFound is ignored)
	api.fail = map[string]error{"AttachmentDelete": &cloud.HTTPError{Status: http.StatusNotFound}}
	if _, err := v.DetachVolume(ctx, req); err != nil {
		t.Errorf("detach of a missing disk: %v", err)
	}

	// a vCenter failure rolls the detaching back
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	hv.fail = "DetachDisk"
	api.calls = nil
	_, err := v.DetachVolume(ctx, req)
	wantRemote(t, "failed detach", err, "VimFaultException")
	if got := api.callList(); !slices.Contains(got, "RollDetaching "+testVolumeID) || slices.Contains(got, "AttachmentDelete "+testAttachmentID) {
		t.Errorf("cinder calls after a failed detach %v", got)
	}
}

// TestDetachVolumeConsolidates: a disk Storage DRS moved to another
// datastore is consolidated into the backing before the detach, as nova's
// _consolidate_vmdk_volume does.
func TestDetachVolumeConsolidates(t *testing.T) {
	v, hv, _, _ := volumeEnv(t, testBDM(t, "/dev/sdb", true))
	hv.vm.Host = vcenter.Ref{Type: "HostSystem", Value: "host-3"}
	hv.vm.ResourcePool = vcenter.Ref{Type: "ResourcePool", Value: "resgroup-9"}
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid", Path: "[ds2] moved/volume.vmdk",
		Datastore: vcenter.Ref{Type: "Datastore", Value: "datastore-2"}, AdapterType: "lsiLogic", DiskType: "thin"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	req := volRequest(t, "detach_volume", map[string]any{"volume_id": testVolumeID, "attachment_id": testAttachmentID}, nil)
	if _, err := v.DetachVolume(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"FindVolumeDisk vm-42 disk-uuid",
		"VolumeBackingDisk vm-77",
		"RelocateVM vm-77 resgroup-9 datastore-2",
		"DetachDisk vm-77 0 true",
		"AttachVolumeDisk vm-77 [ds2] moved/volume.vmdk lsiLogic thin",
		"DetachDisk vm-42 2001 false",
		"SetExtraConfig vm-42 volume-" + testVolumeID + "=",
	}
	if got := hv.callList(); !slices.Equal(got, want) {
		t.Errorf("vCenter calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSwapVolume: the VMware driver cannot swap: NotImplementedError after
// the new attachment got the connector; the old volume's detaching rolled
// back, the new attachment deleted.
func TestSwapVolume(t *testing.T) {
	v, _, api, _ := volumeEnv(t, testBDM(t, "/dev/sdb", true))
	req := volRequest(t, "swap_volume", map[string]any{"old_volume_id": testVolumeID, "new_volume_id": "new-vol", "new_attachment_id": "new-att"}, nil)
	_, err := v.SwapVolume(t.Context(), req)
	wantRemote(t, "swap", err, "NotImplementedError")
	want := []string{
		"Volume " + testVolumeID, "Volume new-vol",
		"AttachmentUpdate new-att host=10.0.0.9,initiator=<nil>,instance=vm-42,ip=10.0.0.9 /dev/sdb",
		"RollDetaching " + testVolumeID, "AttachmentDelete new-att",
	}
	if got := api.callList(); !slices.Equal(got, want) {
		t.Errorf("cinder calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestRemoveVolumeConnection: the driver detach only (the caller deletes
// the attachment); a missing BDM is no error.
func TestRemoveVolumeConnection(t *testing.T) {
	v, hv, api, _ := volumeEnv(t, testBDM(t, "/dev/sdb", true))
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	req := volRequest(t, "remove_volume_connection", map[string]any{"volume_id": testVolumeID}, nil)
	if res, err := v.RemoveVolumeConnection(t.Context(), req); err != nil || res != nil {
		t.Fatalf("remove_volume_connection = %v, %v", res, err)
	}
	if got := hv.callList(); !slices.Contains(got, "DetachDisk vm-42 2001 false") {
		t.Errorf("vCenter calls %v", got)
	}
	if got := api.callList(); len(got) != 0 {
		t.Errorf("cinder calls %v, want none", got)
	}

	v, _, _, _ = volumeEnv(t, nil) // conductor answers no BDM
	if _, err := v.RemoveVolumeConnection(t.Context(), req); err != nil {
		t.Errorf("no BDM: %v, want nil", err)
	}
}

// TestTerminateVolumes: before the VM is destroyed it is powered off and
// the volumes' disks come off (a missing one is only logged); after it,
// the attachments are deleted and the delete_on_termination volumes too.
func TestTerminateVolumes(t *testing.T) {
	v, hv, api, _ := volumeEnv(t, nil)
	hv.disks = []vcenter.VolumeDisk{{Key: 2001, UUID: "disk-uuid"}}
	hv.vm.ExtraConfig["volume-"+testVolumeID] = "disk-uuid"
	first := testBDM(t, "/dev/sdb", true)
	second := testBDM(t, "/dev/sdc", true)
	second.SetString("volume_id", "vol-2")
	second.SetString("attachment_id", "att-2")
	second.SetBool("delete_on_termination", true)
	second.SetString("connection_info", `{"driver_volume_type": "vmdk", "data": {"volume": "vm-78", "volume_id": "vol-2"}}`)
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	ctx := t.Context()
	v.detachForDestroy(ctx, inst, []*ovo.Object{first, second})
	got := hv.callList()
	if len(got) < 2 || got[0] != "PowerOff" || !slices.Contains(got, "DetachDisk vm-42 2001 false") {
		t.Errorf("vCenter calls %v: want the VM off, then the disk detached", got)
	}
	api.fail = map[string]error{"AttachmentDelete": &cloud.HTTPError{Status: http.StatusNotFound}}
	v.releaseVolumes(ctx, mustContext(t, map[string]any{"auth_token": "user-token"}), inst, []*ovo.Object{first, second})
	want := []string{"AttachmentDelete " + testAttachmentID, "AttachmentDelete att-2", "DeleteVolume vol-2"}
	if got := api.callList(); !slices.Equal(got, want) {
		t.Errorf("cinder calls %v, want %v", got, want)
	}
}

// TestBuildVolumes: boot from a volume — the root BDM gets /dev/sda and
// the other volume the next name, both are attached in cinder before the
// VM exists (the connector names no VM), and at spawn the root volume's
// backing moves to the VM's pool and datastore before its disk is
// attached; a volume of a source nova does not know aborts the build.
func TestBuildVolumes(t *testing.T) {
	v, hv, api, f := volumeEnv(t, nil)
	hv.vm.ResourcePool = vcenter.Ref{Type: "ResourcePool", Value: "resgroup-9"}
	root := testBDM(t, "", false)
	root.SetInt("boot_index", 0)
	root.SetNull("device_name")
	data := testBDM(t, "", false)
	data.SetString("volume_id", "vol-2")
	data.SetString("attachment_id", "att-2")
	data.SetInt("boot_index", -1)
	data.SetNull("device_name")
	data.SetString("disk_bus", "paraVirtual")
	enc, err := ovo.NovaCodec().EncodeEntity(ovo.NewList("BlockDeviceMappingList", "1.18", root, data))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(enc)
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	inst.SetNull("root_device_name")
	ctx := t.Context()
	rc := mustContext(t, map[string]any{"auth_token": "user-token"})

	// the VM does not exist yet
	vm := hv.vm
	hv.vm = vcenter.VM{}
	vols, err := v.prepBuildVolumes(ctx, rc, inst, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 || inst.StringOrEmpty("root_device_name") != "/dev/sda" ||
		vols[0].bdm.StringOrEmpty("device_name") != "/dev/sda" || vols[1].bdm.StringOrEmpty("device_name") != "/dev/sdb" {
		t.Fatalf("build volumes %d, root device %q", len(vols), inst.StringOrEmpty("root_device_name"))
	}
	want := []string{
		"Volume " + testVolumeID, "AttachmentUpdate " + testAttachmentID + " host=10.0.0.9,initiator=<nil>,ip=10.0.0.9 /dev/sda", "AttachmentComplete " + testAttachmentID,
		"Volume vol-2", "AttachmentUpdate att-2 host=10.0.0.9,initiator=<nil>,ip=10.0.0.9 /dev/sdb", "AttachmentComplete att-2",
	}
	if got := api.callList(); !slices.Equal(got, want) {
		t.Errorf("cinder calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if names, _ := sentActions(t, f); len(names) != 4 {
		t.Errorf("object actions %v: want two device name saves and two connection info saves", names)
	}

	hv.vm = vm
	if err := v.attachBuildVolumes(ctx, inst, vcenter.Ref{Type: "Datastore", Value: "datastore-5"}, vols); err != nil {
		t.Fatal(err)
	}
	got := hv.callList()
	if len(got) < 2 || got[0] != "VolumeBackingDisk vm-77" || got[1] != "RelocateVM vm-77 resgroup-9 datastore-5" {
		t.Errorf("vCenter calls %v: want the root backing relocated first", got)
	}
	if !slices.Contains(got, "AttachVolumeDisk vm-42 [ds1] volume-"+testVolumeID+"/volume-"+testVolumeID+".vmdk paraVirtual thin") {
		t.Errorf("vCenter calls %v: want the second volume on its disk_bus", got)
	}

	// a volume of a source nova does not know
	odd := testBDM(t, "", false)
	odd.SetString("source_type", "local")
	enc, _ = ovo.NovaCodec().EncodeEntity(ovo.NewList("BlockDeviceMappingList", "1.18", odd))
	raw, _ = json.Marshal(enc)
	_, err = v.prepBuildVolumes(ctx, rc, inst, raw)
	wantRemote(t, "local volume", err, "BuildAbortException")
	if vols, err := v.prepBuildVolumes(ctx, rc, inst, json.RawMessage(`null`)); err != nil || vols != nil {
		t.Errorf("no BDMs: %v, %v", vols, err)
	}
}

// TestSpawnFromVolume: a build without an image whose boot device is a
// volume makes the VM without a disk of its own, moves the backing to the
// VM's pool and datastore, attaches the volume's disk and powers the VM
// on.
func TestSpawnFromVolume(t *testing.T) {
	v, hv, _, _ := volumeEnv(t, nil)
	hv.vm = vcenter.VM{}
	root := testBDM(t, "/dev/sda", true)
	root.SetInt("boot_index", 0)
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	inst.SetString("image_ref", "")
	inst.SetString("project_id", "p1")
	inst.SetString("display_name", "bfv")
	flavor := ovo.New("Flavor", "1.2")
	flavor.SetInt("vcpus", 1)
	flavor.SetInt("memory_mb", 64)
	inst.SetObject("flavor", flavor)
	vols := []buildVolume{{bdm: root, ci: bdmConnectionInfo(root)}}
	if !bootsFromVolume(inst, vols) {
		t.Fatal("bootsFromVolume = false")
	}
	withImage := ovo.New("Instance", "2.7")
	withImage.SetString("image_ref", "img-1")
	if bootsFromVolume(withImage, vols) || bootsFromVolume(inst, nil) {
		t.Error("bootsFromVolume of a server with an image, or without volumes")
	}
	cluster := vcenter.Cluster{Datacenter: "DC0", ResourcePool: vcenter.Ref{Type: "ResourcePool", Value: "resgroup-9"}}
	ds := vcenter.Datastore{Name: "ds1", Ref: vcenter.Ref{Type: "Datastore", Value: "datastore-5"}}
	if err := v.spawnFromVolume(t.Context(), inst, cluster, ds, map[string]any{}, vols); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"EnsureExtension",
		"EnsureFolderPath DC0 OpenStack/Project (p1)/Instances",
		"CreateVM " + testInstanceUUID + " [ds1] " + testInstanceUUID + "/ disks=0 ctrl=lsiLogic",
		"VolumeBackingDisk vm-77",
		"RelocateVM vm-77 resgroup-9 datastore-5",
		"VolumeBackingDisk vm-77",
		"AttachVolumeDisk vm-42 [ds1] volume-" + testVolumeID + "/volume-" + testVolumeID + ".vmdk lsiLogic thin",
		"SetExtraConfig vm-42 volume-" + testVolumeID + "=attached-" + testVolumeID,
		"PowerOn",
	}
	if got := hv.callList(); !slices.Equal(got, want) {
		t.Errorf("vCenter calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestCinderErrorTranslation checks nova's translate_*_exception.
func TestCinderErrorTranslation(t *testing.T) {
	t.Parallel()
	wantRemote(t, "volume 404", cinderError(&cloud.HTTPError{Status: 404}, "volume", "v"), "VolumeNotFound")
	wantRemote(t, "attachment 404", cinderError(&cloud.HTTPError{Status: 404}, "attachment", "a"), "VolumeAttachmentNotFound")
	wantRemote(t, "400", cinderError(&cloud.HTTPError{Status: 400, Message: "bad"}, "volume", "v"), "InvalidInput")
	wantRemote(t, "no endpoint", cinderError(fmt.Errorf("x: %w", cloud.ErrAuthConfig), "volume", "v"), "CinderConnectionFailed")
	if cinderError(nil, "volume", "v") != nil {
		t.Error("nil must stay nil")
	}
	cc := cinderContext(mustContext(t, map[string]any{"auth_token": "tok", "project_id": "p", "request_id": "req-1",
		"service_catalog": []any{map[string]any{"type": "volumev3"}}}))
	if cc.Token != "tok" || cc.Values["project_id"] != "p" || cc.GlobalRequestID != "req-1" || len(cc.ServiceCatalog) != 1 {
		t.Errorf("cinder context %+v", cc)
	}
}

func mustContext(t *testing.T, m map[string]any) rpc.Context {
	t.Helper()
	rc, err := rpc.NewContext(m)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}
