package vcenter

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// The compute side of cinder's "vmdk" volumes, as nova's VMware driver
// does it (nova/virt/vmwareapi/volumeops.py): the volume's disk file,
// owned by its backing (the shadow VM cinder's VMDK driver keeps), is
// attached to the instance's VM as a second disk and detached again
// without deleting the file.

// VolumeDisk is a VMDK-backed virtual disk of a VM, as vm_util.get_vmdk_info
// describes it.
type VolumeDisk struct {
	// Key, ControllerKey and UnitNumber place the device on its VM.
	Key           int32
	ControllerKey int32
	UnitNumber    int32
	// Path is the disk's file, "[ds] volume-<id>/volume-<id>.vmdk".
	Path string
	// UUID is the disk's backing UUID (VirtualDiskFlatVer2BackingInfo.uuid).
	UUID string
	// Datastore is the datastore holding the file (zero if not reported).
	Datastore  Ref
	CapacityKB int64
	// AdapterType is the disk's controller, as nova names it (lsiLogic,
	// busLogic, lsiLogicsas, paraVirtual, ide); "" if unknown.
	AdapterType string
	// DiskType is thin, eagerZeroedThick or preallocated (nova's
	// _get_device_disk_type).
	DiskType string
}

// Disk types of VolumeDisk.DiskType.
const (
	VolumeDiskThin             = "thin"
	VolumeDiskEagerZeroedThick = "eagerZeroedThick"
	VolumeDiskPreallocated     = "preallocated"
)

// controllerAdapterType is vm_util.CONTROLLER_TO_ADAPTER_TYPE.
func controllerAdapterType(d types.BaseVirtualDevice) string {
	switch d.(type) {
	case *types.VirtualLsiLogicController:
		return BackingAdapterLsiLogic
	case *types.VirtualBusLogicController:
		return BackingAdapterBusLogic
	case *types.VirtualIDEController:
		return BackingAdapterIDE
	case *types.VirtualLsiLogicSASController:
		return BackingAdapterLsiLogicSAS
	case *types.ParaVirtualSCSIController:
		return BackingAdapterParaVirtual
	}
	return ""
}

// volumeDiskFrom describes disk, a device among devices.
func volumeDiskFrom(disk *types.VirtualDisk, devices object.VirtualDeviceList) VolumeDisk {
	d := VolumeDisk{Key: disk.Key, ControllerKey: disk.ControllerKey, CapacityKB: disk.CapacityInKB, DiskType: VolumeDiskPreallocated}
	if disk.UnitNumber != nil {
		d.UnitNumber = *disk.UnitNumber
	}
	if fb, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
		d.Path, d.UUID, d.Datastore = fb.FileName, fb.Uuid, refFromPtr(fb.Datastore)
		switch {
		case fb.ThinProvisioned != nil && *fb.ThinProvisioned:
			d.DiskType = VolumeDiskThin
		case fb.EagerlyScrub != nil && *fb.EagerlyScrub:
			d.DiskType = VolumeDiskEagerZeroedThick
		}
	}
	if c := devices.FindByKey(disk.ControllerKey); c != nil {
		d.AdapterType = controllerAdapterType(c)
	}
	return d
}

// devices reads a VM's config.hardware.device.
func (s *Session) devices(ctx context.Context, op string, vm Ref) (object.VirtualDeviceList, error) {
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
		return nil, wrapVMErr(op, err)
	}
	if m.Config == nil {
		return nil, wrapErr(op, errors.New("vm has no configuration"))
	}
	return object.VirtualDeviceList(m.Config.Hardware.Device), nil
}

// VolumeBackingDisk describes the disk of a volume backing as nova's
// vm_util.get_vmdk_info does for the volume ref: the last flat VMDK disk
// of the VM, its controller's adapter type and its provisioning. A backing
// without such a disk fails with an error wrapping ErrNotFound; so does a
// backing that does not exist.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) VolumeBackingDisk(ctx context.Context, backing Ref) (VolumeDisk, error) {
	op := "read the volume disk of " + backing.Value
	devices, err := s.devices(ctx, op, backing)
	if err != nil {
		return VolumeDisk{}, err
	}
	var found *types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if _, flat := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); flat {
				found = disk
			}
		}
	}
	if found == nil {
		return VolumeDisk{}, wrapErr(op, fmt.Errorf("%w: the backing has no VMDK disk", ErrNotFound))
	}
	return volumeDiskFrom(found, devices), nil
}

// FindVolumeDisk returns the VM's VMDK disk whose backing UUID is uuid
// (vm_util.get_vmdk_backed_disk_device), or an error wrapping ErrNotFound.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) FindVolumeDisk(ctx context.Context, vm Ref, uuid string) (VolumeDisk, error) {
	op := fmt.Sprintf("find disk %s of vm %s", uuid, vm.Value)
	devices, err := s.devices(ctx, op, vm)
	if err != nil {
		return VolumeDisk{}, err
	}
	if uuid != "" {
		for _, d := range devices {
			if disk, ok := d.(*types.VirtualDisk); ok {
				if fb, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && fb.Uuid == uuid {
					return volumeDiskFrom(disk, devices), nil
				}
			}
		}
	}
	return VolumeDisk{}, wrapErr(op, fmt.Errorf("%w: no disk with uuid %q", ErrNotFound, uuid))
}

// maxUnits are the unit numbers of an IDE and a SCSI controller.
const (
	ideUnits  = 2
	scsiUnits = 16
	// maxSCSIControllers is constants.SCSI_MAX_CONTROLLER_NUMBER.
	maxSCSIControllers = 4
)

// isSCSIController is vm_util._is_scsi_controller.
func isSCSIController(d types.BaseVirtualDevice) bool {
	switch d.(type) {
	case *types.VirtualLsiLogicController, *types.VirtualLsiLogicSASController, *types.VirtualBusLogicController, *types.ParaVirtualSCSIController:
		return true
	}
	return false
}

// allocateSlot is vm_util.allocate_controller_key_and_unit_number: the
// first free unit on a controller of the adapter type, or a new controller
// (key -101, the first free SCSI bus) to add in the same reconfiguration.
func allocateSlot(devices object.VirtualDeviceList, adapter string) (int32, int32, *types.VirtualDeviceConfigSpec, error) {
	taken := map[int32]map[int32]bool{}
	use := func(ctrl, unit int32) {
		if taken[ctrl] == nil {
			taken[ctrl] = map[int32]bool{}
		}
		taken[ctrl][unit] = true
	}
	var ide, scsi []int32
	buses := map[int32]bool{}
	for _, d := range devices {
		v := d.GetVirtualDevice()
		if v.UnitNumber != nil && v.ControllerKey != 0 {
			use(v.ControllerKey, *v.UnitNumber)
		}
		if isSCSIController(d) {
			sc := d.(types.BaseVirtualSCSIController).GetVirtualSCSIController()
			use(sc.Key, sc.ScsiCtlrUnitNumber)
			scsi = append(scsi, sc.Key)
			buses[sc.BusNumber] = true
		}
		if _, ok := d.(*types.VirtualIDEController); ok {
			ide = append(ide, v.Key)
		}
	}
	keys, units := scsi, int32(scsiUnits)
	if adapter == BackingAdapterIDE {
		keys, units = ide, ideUnits
	}
	for _, k := range keys {
		for u := int32(0); u < units; u++ {
			if !taken[k][u] {
				return k, u, nil, nil
			}
		}
	}
	if adapter == BackingAdapterIDE {
		return 0, 0, nil, fmt.Errorf("%w: no free IDE slot", ErrInvalidArgument)
	}
	bus := int32(-1)
	for i := int32(0); i < maxSCSIControllers; i++ {
		if !buses[i] {
			bus = i
			break
		}
	}
	if bus < 0 {
		return 0, 0, nil, fmt.Errorf("%w: Only %d SCSI controllers are allowed to be created on this instance.", ErrInvalidArgument, maxSCSIControllers)
	}
	dev, err := controllerFor(adapter)
	if err != nil {
		return 0, 0, nil, err
	}
	sc := dev.(types.BaseVirtualSCSIController).GetVirtualSCSIController()
	sc.Key, sc.BusNumber, sc.SharedBus = -101, bus, types.VirtualSCSISharingNoSharing
	return -101, 0, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: dev}, nil
}

// AttachVolumeDisk attaches the existing disk file d.Path to the VM as
// nova's volumeops.attach_disk_to_vm does for a volume: on a controller of
// d.AdapterType (one is added when none has a free unit), persistent,
// provisioned as d.DiskType, the file kept. It returns the disk as
// attached, with the UUID vCenter reports for it.
//
// Cost: 4 SOAP round trips (RetrievePropertiesEx, ReconfigVM_Task, usually
// 1 task poll, RetrievePropertiesEx). Concurrent attachments to one VM may
// pick the same unit; the loser fails.
func (s *Session) AttachVolumeDisk(ctx context.Context, vm Ref, d VolumeDisk) (VolumeDisk, error) {
	op := fmt.Sprintf("attach volume disk %q to vm %s", d.Path, vm.Value)
	if d.Path == "" {
		return VolumeDisk{}, wrapErr(op, fmt.Errorf("%w: no disk path", ErrInvalidArgument))
	}
	devices, err := s.devices(ctx, op, vm)
	if err != nil {
		return VolumeDisk{}, err
	}
	adapter := d.AdapterType
	if adapter == "" {
		adapter = BackingAdapterLsiLogic
	}
	ctrlKey, unit, ctrlSpec, err := allocateSlot(devices, adapter)
	if err != nil {
		return VolumeDisk{}, wrapErr(op, err)
	}
	fb := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: d.Path},
		DiskMode:                     string(types.VirtualDiskModePersistent),
	}
	switch d.DiskType {
	case VolumeDiskThin:
		fb.ThinProvisioned = types.NewBool(true)
	case VolumeDiskEagerZeroedThick:
		fb.EagerlyScrub = types.NewBool(true)
	}
	disk := &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
		Key: -100, ControllerKey: ctrlKey, UnitNumber: types.NewInt32(unit), Backing: fb,
		Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true},
	}}
	changes := []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk}}
	if ctrlSpec != nil {
		changes = append(changes, ctrlSpec)
	}
	if err := s.reconfigure(ctx, op, vm, types.VirtualMachineConfigSpec{DeviceChange: changes}); err != nil {
		return VolumeDisk{}, wrapVMErr(op, err)
	}
	after, err := s.devices(ctx, op, vm)
	if err != nil {
		return VolumeDisk{}, err
	}
	for _, dev := range after {
		if vd, ok := dev.(*types.VirtualDisk); ok {
			if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.FileName == d.Path {
				return volumeDiskFrom(vd, after), nil
			}
		}
	}
	return VolumeDisk{}, wrapErr(op, errors.New("disk not found after reconfiguration"))
}
