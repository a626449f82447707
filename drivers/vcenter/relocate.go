package vcenter

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// ErrDiskShrink is returned by ResizeVM when the new capacity of a disk is
// smaller than its current one: vSphere cannot shrink a virtual disk.
var ErrDiskShrink = errors.New("vcenter: a virtual disk cannot shrink")

// RelocateSpec says where RelocateVM moves a VM.
type RelocateSpec struct {
	// ResourcePool is the destination resource pool, normally a cluster's
	// root pool (required). In a DRS cluster vCenter picks the host.
	ResourcePool Ref
	// Datastore, if set, moves the VM's files there (storage vMotion);
	// zero keeps them where they are.
	Datastore Ref
	// Host, if set, is the destination ESXi host; vCenter needs one when
	// the destination cluster has DRS disabled.
	Host Ref
}

// RelocateVM moves a VM, powered on (vMotion) or off, to another resource
// pool, host or datastore (RelocateVM_Task) and returns it as read back.
// A VM that no longer exists fails with an error wrapping ErrNotFound.
//
// Cost: 3 SOAP round trips (RelocateVM_Task, usually 1 task poll,
// RetrievePropertiesEx) plus the task's duration. Safe for concurrent use.
func (s *Session) RelocateVM(ctx context.Context, vm Ref, spec RelocateSpec) (VM, error) {
	op := fmt.Sprintf("relocate vm %s to pool %s", vm.Value, spec.ResourcePool.Value)
	if spec.ResourcePool.IsZero() {
		return VM{}, wrapErr(op, errors.New("no destination resource pool"))
	}
	rs := types.VirtualMachineRelocateSpec{}
	pool := spec.ResourcePool.Reference()
	rs.Pool = &pool
	if !spec.Datastore.IsZero() {
		ds := spec.Datastore.Reference()
		rs.Datastore = &ds
	}
	if !spec.Host.IsZero() {
		h := spec.Host.Reference()
		rs.Host = &h
	}
	var c *vim25.Client
	err := s.vmTask(ctx, op, func(cl *vim25.Client) (types.ManagedObjectReference, error) {
		c = cl
		r, err := methods.RelocateVM_Task(ctx, cl, &types.RelocateVM_Task{This: vm.Reference(), Spec: rs})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return VM{}, wrapVMErr(op, err)
	}
	out, err := s.readVM(ctx, c, vm.Reference())
	if err != nil {
		return VM{}, wrapVMErr(op, err)
	}
	return out, nil
}

// ResizeVM sets a VM's CPU count and memory and, when diskKey is not 0,
// grows that virtual disk to capacityKB, in one ReconfigVM_Task. A disk
// capacity below the current one fails with ErrDiskShrink before anything
// changes; an equal one leaves the disk alone.
//
// Cost: 3 SOAP round trips (RetrievePropertiesEx of the devices when a
// disk grows, ReconfigVM_Task, usually 1 task poll). Safe for concurrent
// use.
func (s *Session) ResizeVM(ctx context.Context, vm Ref, numCPUs int32, memoryMB int64, diskKey int32, capacityKB int64) error {
	op := fmt.Sprintf("resize vm %s to %d CPUs, %d MB", vm.Value, numCPUs, memoryMB)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	spec := types.VirtualMachineConfigSpec{NumCPUs: numCPUs, MemoryMB: memoryMB}
	if diskKey != 0 {
		var m mo.VirtualMachine
		if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
			return wrapVMErr(op, err)
		}
		var disk *types.VirtualDisk
		if m.Config != nil {
			for _, d := range m.Config.Hardware.Device {
				if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == diskKey {
					disk = vd
				}
			}
		}
		if disk == nil {
			return wrapErr(op, fmt.Errorf("disk %d: %w", diskKey, ErrNotFound))
		}
		switch {
		case capacityKB < disk.CapacityInKB:
			return wrapErr(op, fmt.Errorf("disk %d from %d KiB to %d KiB: %w", diskKey, disk.CapacityInKB, capacityKB, ErrDiskShrink))
		case capacityKB > disk.CapacityInKB:
			disk.CapacityInKB = capacityKB
			disk.CapacityInBytes = capacityKB * 1024
			spec.DeviceChange = []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: disk,
			}}
		}
	}
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, spec))
}
