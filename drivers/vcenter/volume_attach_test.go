package vcenter

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// TestVolumeDiskAttachDetach: a volume backing's disk is described as
// nova's get_vmdk_info does, attached to an instance VM on a controller of
// the VM's (any SCSI controller with a free unit, as in nova), found
// again by the UUID vCenter reports for it, and detached with its file
// kept.
func TestVolumeDiskAttachDetach(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const (
		inst = "0b7c1f2a-3d4e-4f50-8a6b-7c8d9e0f1a02"
		vol  = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e03"
	)
	vm := e.create(t, inst) // a pvscsi controller
	if _, err := e.s.AttachDisk(ctx, vm.Ref, "["+e.ds.Name+"] "+inst+"/"+inst+".vmdk", 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	// the "backing": a VM with an lsiLogic controller and one thin disk
	spec := e.spec(vol)
	spec.SCSIController = SCSILsiLogic
	backing, err := e.s.CreateVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	volPath := "[" + e.ds.Name + "] " + vol + "/" + vol + ".vmdk"
	if _, err := e.s.AttachDisk(ctx, backing.Ref, volPath, 1<<20, 0); err != nil {
		t.Fatal(err)
	}

	var src VolumeDisk
	d := vmMeasure(t, e.s, "VolumeBackingDisk", func() (err error) { src, err = e.s.VolumeBackingDisk(ctx, backing.Ref); return })
	if vmTotal(d) != 1 {
		t.Errorf("VolumeBackingDisk calls: %v", d)
	}
	if src.Path != volPath || src.AdapterType != BackingAdapterLsiLogic || src.DiskType != VolumeDiskThin || src.CapacityKB != 1<<20 || src.UUID == "" ||
		src.Datastore != e.ds.Ref {
		t.Errorf("backing disk %+v", src)
	}

	var att VolumeDisk
	d = vmMeasure(t, e.s, "AttachVolumeDisk", func() (err error) { att, err = e.s.AttachVolumeDisk(ctx, vm.Ref, src); return })
	if d["ReconfigVM_Task"] != 1 || d["RetrievePropertiesEx"] < 2 {
		t.Errorf("AttachVolumeDisk calls: %v", d)
	}
	if att.Path != volPath || att.AdapterType != BackingAdapterParaVirtual || att.UUID == "" || att.DiskType != VolumeDiskThin {
		t.Errorf("attached disk %+v", att)
	}
	got, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil || len(got.Disks) != 2 || len(got.Controllers) != 1 {
		t.Fatalf("vm after attach: %v, %d disks, controllers %v; want 2 disks on the VM's controller", err, len(got.Disks), got.Controllers)
	}

	// a second volume goes to the same controller
	vol2 := "[" + e.ds.Name + "] " + vol + "/second.vmdk"
	if _, err := e.s.AttachDisk(ctx, backing.Ref, vol2, 1<<10, 0); err != nil {
		t.Fatal(err)
	}
	att2, err := e.s.AttachVolumeDisk(ctx, vm.Ref, VolumeDisk{Path: vol2, AdapterType: BackingAdapterLsiLogic, DiskType: VolumeDiskPreallocated})
	if err != nil {
		t.Fatal(err)
	}
	if att2.ControllerKey != att.ControllerKey || att2.UnitNumber == att.UnitNumber {
		t.Errorf("second volume at %d:%d, first at %d:%d; want the same controller", att2.ControllerKey, att2.UnitNumber, att.ControllerKey, att.UnitNumber)
	}

	found, err := e.s.FindVolumeDisk(ctx, vm.Ref, att.UUID)
	if err != nil || found.Key != att.Key {
		t.Errorf("FindVolumeDisk(%s) = %+v, %v; want key %d", att.UUID, found, err, att.Key)
	}
	if _, err := e.s.FindVolumeDisk(ctx, vm.Ref, "no-such-uuid"); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindVolumeDisk of an unknown uuid: %v, want ErrNotFound", err)
	}
	if _, err := e.s.FindVolumeDisk(ctx, vm.Ref, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindVolumeDisk of no uuid: %v, want ErrNotFound", err)
	}

	if err := e.s.DetachDisk(ctx, vm.Ref, found.Key, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.FindVolumeDisk(ctx, vm.Ref, att.UUID); !errors.Is(err, ErrNotFound) {
		t.Errorf("the volume disk after detach: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(datastoreDir(t, e, vol), vol+".vmdk")); err != nil {
		t.Errorf("the volume's file after detach: %v, want kept", err)
	}
	if _, err := e.s.VolumeBackingDisk(ctx, backing.Ref); err != nil {
		t.Errorf("the backing after detach: %v", err)
	}
}

// TestAllocateSlot: nova's allocate_controller_key_and_unit_number — any
// SCSI controller serves a SCSI adapter type, unit 7 is the controller's
// own, full controllers lead to a new one of the adapter type on the next
// free bus, IDE uses the existing IDE controllers only.
func TestAllocateSlot(t *testing.T) {
	t.Parallel()
	ctrl := &types.VirtualLsiLogicController{VirtualSCSIController: types.VirtualSCSIController{
		VirtualController: types.VirtualController{VirtualDevice: types.VirtualDevice{Key: 1000}, BusNumber: 0}, ScsiCtlrUnitNumber: 7}}
	ide := &types.VirtualIDEController{VirtualController: types.VirtualController{VirtualDevice: types.VirtualDevice{Key: 200}}}
	devices := object.VirtualDeviceList{ctrl, ide}
	for u := int32(0); u < 7; u++ {
		devices = append(devices, &types.VirtualDisk{VirtualDevice: types.VirtualDevice{Key: 2000 + u, ControllerKey: 1000, UnitNumber: types.NewInt32(u)}})
	}
	k, u, add, err := allocateSlot(devices, BackingAdapterLsiLogic)
	if err != nil || k != 1000 || u != 8 || add != nil {
		t.Errorf("lsiLogic slot = %d:%d %v %v; want 1000:8", k, u, add, err)
	}
	k, u, add, err = allocateSlot(devices, BackingAdapterParaVirtual)
	if err != nil || k != 1000 || u != 8 || add != nil {
		t.Errorf("paraVirtual slot = %d:%d %v %v; want 1000:8 (any SCSI controller)", k, u, add, err)
	}
	for u := int32(8); u < 16; u++ {
		devices = append(devices, &types.VirtualDisk{VirtualDevice: types.VirtualDevice{Key: 2000 + u, ControllerKey: 1000, UnitNumber: types.NewInt32(u)}})
	}
	k, u, add, err = allocateSlot(devices, BackingAdapterParaVirtual)
	if err != nil || k != -101 || u != 0 || add == nil {
		t.Fatalf("paraVirtual slot = %d:%d %v %v; want a new controller", k, u, add, err)
	}
	if pv, ok := add.Device.(*types.ParaVirtualSCSIController); !ok || pv.BusNumber != 1 {
		t.Errorf("new controller %#v; want pvscsi on bus 1", add.Device)
	}
	k, u, _, err = allocateSlot(devices, BackingAdapterIDE)
	if err != nil || k != 200 || u != 0 {
		t.Errorf("ide slot = %d:%d %v; want 200:0", k, u, err)
	}
	for u := int32(0); u < 2; u++ {
		devices = append(devices, &types.VirtualCdrom{VirtualDevice: types.VirtualDevice{Key: 3000 + u, ControllerKey: 200, UnitNumber: types.NewInt32(u)}})
	}
	if _, _, _, err := allocateSlot(devices, BackingAdapterIDE); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("full IDE: %v, want ErrInvalidArgument", err)
	}
}
