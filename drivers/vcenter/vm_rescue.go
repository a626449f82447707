package vcenter

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// SetBootDisk makes the VM boot from the virtual disk diskKey first: its
// boot order becomes that one disk, as nova's VMware driver sets it for a
// rescue (vm_util.get_vm_boot_spec). It takes effect at the next power on.
//
// Cost: 2 SOAP round trips (ReconfigVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) SetBootDisk(ctx context.Context, vm Ref, diskKey int32) error {
	op := fmt.Sprintf("set boot disk of vm %s to %d", vm.Value, diskKey)
	spec := types.VirtualMachineConfigSpec{BootOptions: &types.VirtualMachineBootOptions{
		BootOrder: []types.BaseVirtualMachineBootOptionsBootableDevice{
			&types.VirtualMachineBootOptionsBootableDiskDevice{DeviceKey: diskKey},
		},
	}}
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, spec))
}

// BootDisks returns the keys of the disks in the VM's boot order, in order
// (empty when the VM boots in the firmware's default order).
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) BootDisks(ctx context.Context, vm Ref) ([]int32, error) {
	op := "read boot order of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.bootOptions"}, &m); err != nil {
		return nil, wrapVMErr(op, err)
	}
	if m.Config == nil || m.Config.BootOptions == nil {
		return nil, nil
	}
	return bootDiskKeys(m.Config.BootOptions.BootOrder), nil
}

func bootDiskKeys(order []types.BaseVirtualMachineBootOptionsBootableDevice) []int32 {
	var keys []int32
	for _, d := range order {
		if disk, ok := d.(*types.VirtualMachineBootOptionsBootableDiskDevice); ok {
			keys = append(keys, disk.DeviceKey)
		}
	}
	return keys
}

// DetachDisk removes the virtual disk diskKey from the VM and, with
// destroy, deletes its files, as nova's VMware driver detaches the rescue
// disk (volumeops.detach_disk_from_vm with destroy_disk=True). When the
// VM's boot order names that disk, the same reconfiguration restores it to
// the VM's first remaining disk, so the VM boots its root disk again. A
// disk the VM does not have fails with an error wrapping ErrNotFound.
//
// Cost: 3 SOAP round trips (RetrievePropertiesEx, ReconfigVM_Task, usually
// 1 task poll). Safe for concurrent use on different VMs.
func (s *Session) DetachDisk(ctx context.Context, vm Ref, diskKey int32, destroy bool) error {
	op := fmt.Sprintf("detach disk %d from vm %s", diskKey, vm.Value)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device", "config.bootOptions"}, &m); err != nil {
		return wrapVMErr(op, err)
	}
	if m.Config == nil {
		return wrapErr(op, errors.New("vm has no configuration"))
	}
	var (
		disk *types.VirtualDisk
		rest []int32
	)
	for _, d := range m.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			if vd.Key == diskKey {
				disk = vd
			} else {
				rest = append(rest, vd.Key)
			}
		}
	}
	if disk == nil {
		return wrapErr(op, fmt.Errorf("%w: the vm has no disk %d", ErrNotFound, diskKey))
	}
	change := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: disk}
	if destroy {
		change.FileOperation = types.VirtualDeviceConfigSpecFileOperationDestroy
	}
	spec := types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{change}}
	if bo := m.Config.BootOptions; bo != nil {
		var order []types.BaseVirtualMachineBootOptionsBootableDevice
		named := false
		for _, d := range bo.BootOrder {
			if dd, ok := d.(*types.VirtualMachineBootOptionsBootableDiskDevice); ok && dd.DeviceKey == diskKey {
				named = true
				continue
			}
			order = append(order, d)
		}
		if named {
			if len(order) == 0 && len(rest) > 0 {
				order = append(order, &types.VirtualMachineBootOptionsBootableDiskDevice{DeviceKey: rest[0]})
			}
			// An empty boot order cannot be sent (vSphere then keeps the
			// old one); a VM without another disk keeps a dangling entry.
			if len(order) > 0 {
				spec.BootOptions = &types.VirtualMachineBootOptions{BootOrder: order}
			}
		}
	}
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, spec))
}
