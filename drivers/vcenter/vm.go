package vcenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// More sentinel errors (see errors.go).
var (
	// ErrInvalidArgument reports an argument this package rejects before
	// calling vCenter.
	ErrInvalidArgument = errors.New("invalid argument")

	// ErrToolsNotRunning reports that a guest operation (ShutdownGuest)
	// needs VMware Tools running in the guest and they are not (vSphere
	// fault ToolsUnavailable). Callers fall back to a hard operation.
	ErrToolsNotRunning = errors.New("vmware tools not running in the guest")
)

// VM power states as vSphere reports them.
const (
	PowerStateOn        = string(types.VirtualMachinePowerStatePoweredOn)
	PowerStateOff       = string(types.VirtualMachinePowerStatePoweredOff)
	PowerStateSuspended = string(types.VirtualMachinePowerStateSuspended)
)

// SCSI controller types for VMSpec.SCSIController.
const (
	SCSILsiLogic    = "lsiLogic"
	SCSILsiLogicSAS = "lsiLogicsas"
	SCSIParaVirtual = "paraVirtual"
	SCSIBusLogic    = "busLogic"
)

// scsiTypes maps the SCSI* constants to govmomi's controller names.
var scsiTypes = map[string]string{
	SCSILsiLogic:    "lsilogic",
	SCSILsiLogicSAS: "lsilogic-sas",
	SCSIParaVirtual: "pvscsi",
	SCSIBusLogic:    "buslogic",
}

// VMSpec describes a virtual machine to create.
type VMSpec struct {
	// Name is the VM's name in the inventory.
	Name string
	// InstanceUUID becomes config.instanceUuid, the VM's vCenter-wide
	// identity; empty lets vCenter pick one.
	InstanceUUID string
	NumCPUs      int32
	MemoryMB     int64
	// GuestID is the guest OS identifier, e.g. "otherGuest64".
	GuestID    string
	Annotation string
	// ExtraConfig is written to config.extraConfig.
	ExtraConfig map[string]string
	// ManagedByKey and ManagedByType set config.managedBy (the extension
	// key, see EnsureExtension, and the entity type); unset when
	// ManagedByKey is empty.
	ManagedByKey  string
	ManagedByType string
	// Folder is the VM folder to create the VM in (see EnsureFolderPath);
	// ResourcePool is normally a cluster's root resource pool (DRS then
	// picks the host).
	Folder       Ref
	ResourcePool Ref
	// Datastore holds the VM's files. DatastorePath, e.g. "[ds] uuid/", is
	// the directory for them, or the .vmx file itself ("[ds] uuid/uuid.vmx")
	// to put the VM in a directory that exists already (given the bare
	// directory, vCenter then makes a new one beside it); when empty the
	// path is "[<datastore name>]" and vCenter names the directory after
	// the VM (1 more round trip to read the datastore's name).
	Datastore     Ref
	DatastorePath string
	// SCSIController, if set, adds one SCSI controller of that type
	// (SCSILsiLogic, SCSILsiLogicSAS, SCSIParaVirtual, SCSIBusLogic) on bus
	// 0, for AttachDisk.
	SCSIController string
	// Disks are existing virtual disk files (e.g. "[ds] uuid/uuid.vmdk")
	// attached at creation to the SCSI controller, at unit numbers 0, 1, …
	// in order, which saves an AttachDisk (4 round trips) per disk. They
	// need SCSIController.
	Disks []string
	// NICs are the VM's network cards, in order (nvp.iface-id.0, .1, …).
	NICs []NIC
}

// Disk is a virtual disk of a VM.
type Disk struct {
	Key int32
	// FileName is the backing file, e.g. "[ds] uuid/uuid.vmdk".
	FileName      string
	CapacityKB    int64
	ControllerKey int32
	UnitNumber    int32
}

// VM is a virtual machine as read from vCenter.
type VM struct {
	Ref  Ref
	Name string
	// InstanceUUID is config.instanceUuid.
	InstanceUUID string
	// PowerState is PowerStateOn, PowerStateOff or PowerStateSuspended.
	PowerState string
	// Host is the ESXi host the VM is registered on.
	Host     Ref
	NumCPUs  int32
	MemoryMB int64
	GuestID  string
	// Annotation is config.annotation.
	Annotation    string
	ExtraConfig   map[string]string
	ManagedByKey  string
	ManagedByType string
	// Folder is the VM's parent folder, ResourcePool its resource pool and
	// Datacenter the datacenter above the folder (zero if not found).
	Folder       Ref
	ResourcePool Ref
	Datacenter   Ref
	// DatacenterName is the name of Datacenter (read in the same
	// retrieval), so callers that need the datacenter by name (datastore
	// paths, disk copies) need not read the inventory for it.
	DatacenterName string
	// VMPathName is the .vmx file, e.g. "[ds] uuid/uuid.vmx".
	VMPathName string
	// Disks are sorted by key.
	Disks []Disk
	// Controllers are the keys of the VM's SCSI controllers, sorted.
	Controllers []int32
	// NICs are the VM's network cards in device order, IfaceID taken from
	// nvp.iface-id.<position>.
	NICs []NIC
}

// vmProperties are the VirtualMachine properties read into a VM.
var vmProperties = []string{
	"name", "parent", "resourcePool", "runtime.powerState", "runtime.host",
	"config.instanceUuid", "config.hardware.numCPU", "config.hardware.memoryMB",
	"config.hardware.device", "config.guestId", "config.annotation",
	"config.extraConfig", "config.managedBy", "config.files.vmPathName",
}

// CreateVM creates a powered-off VM from spec and returns it as read back.
//
// spec.NICs are added in the same configuration (see NIC), each with its
// nvp.iface-id.<index> extraConfig entry; a NIC whose Network names no
// port group (only NetworkName) costs one round trip for all of them to find
// the networks by name.
//
// Cost: 3 SOAP round trips (CreateVM_Task, task polls (usually 1-2),
// RetrievePropertiesEx), plus 1 when spec.DatastorePath is empty and 1 when
// a NIC's network is found by name. Safe for concurrent use.
func (s *Session) CreateVM(ctx context.Context, spec VMSpec) (VM, error) {
	op := fmt.Sprintf("create vm %q", spec.Name)
	c := s.activeClient()
	if c == nil {
		return VM{}, wrapErr(op, ErrNotLoggedIn)
	}
	switch {
	case spec.Name == "":
		return VM{}, wrapErr(op, fmt.Errorf("%w: empty name", ErrInvalidArgument))
	case spec.Folder.IsZero(), spec.ResourcePool.IsZero():
		return VM{}, wrapErr(op, fmt.Errorf("%w: folder and resource pool are required", ErrInvalidArgument))
	case spec.DatastorePath == "" && spec.Datastore.IsZero():
		return VM{}, wrapErr(op, fmt.Errorf("%w: datastore or datastore path is required", ErrInvalidArgument))
	}
	dsPath := spec.DatastorePath
	if dsPath == "" {
		var ds mo.Datastore
		if err := s.retrieveOne(ctx, c, spec.Datastore, []string{"name"}, &ds); err != nil {
			return VM{}, wrapErr(op, err)
		}
		dsPath = "[" + ds.Name + "]"
	}

	cs := types.VirtualMachineConfigSpec{
		Name:         spec.Name,
		InstanceUuid: spec.InstanceUUID,
		NumCPUs:      spec.NumCPUs,
		MemoryMB:     spec.MemoryMB,
		GuestId:      spec.GuestID,
		Annotation:   spec.Annotation,
		ExtraConfig:  extraConfig(spec.ExtraConfig),
		Files:        &types.VirtualMachineFileInfo{VmPathName: dsPath},
	}
	if spec.ManagedByKey != "" {
		cs.ManagedBy = &types.ManagedByInfo{ExtensionKey: spec.ManagedByKey, Type: spec.ManagedByType}
	}
	if len(spec.Disks) > 0 && spec.SCSIController == "" {
		return VM{}, wrapErr(op, fmt.Errorf("%w: disks need a SCSI controller", ErrInvalidArgument))
	}
	if spec.SCSIController != "" {
		ctrl, err := object.SCSIControllerTypes().CreateSCSIController(scsiTypes[spec.SCSIController])
		if err != nil {
			return VM{}, wrapErr(op, fmt.Errorf("%w: %w", ErrInvalidArgument, err))
		}
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    ctrl,
		})
		ctrlKey := ctrl.GetVirtualDevice().Key
		for i, file := range spec.Disks {
			unit := int32(i)
			cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationAdd,
				Device: &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
					Key:           ctrlKey - 1 - unit, // new devices take distinct negative keys
					ControllerKey: ctrlKey,
					UnitNumber:    &unit,
					Backing: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
						DiskMode:                     string(types.VirtualDiskModePersistent),
						ThinProvisioned:              types.NewBool(true),
					},
				}},
			})
		}
	}

	if len(spec.NICs) > 0 {
		changes, extra, err := s.nicChanges(ctx, c, spec.ResourcePool, spec.NICs, 0)
		if err != nil {
			return VM{}, wrapErr(op, err)
		}
		cs.DeviceChange = append(cs.DeviceChange, changes...)
		cs.ExtraConfig = append(cs.ExtraConfig, extra...)
	}

	res, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.CreateVM_Task(ctx, c, &types.CreateVM_Task{
			This:   spec.Folder.Reference(),
			Config: cs,
			Pool:   spec.ResourcePool.Reference(),
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return VM{}, wrapErr(op, err)
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return VM{}, wrapErr(op, fmt.Errorf("unexpected CreateVM_Task result %T", res))
	}
	vm, err := s.readVM(ctx, c, ref)
	if err != nil {
		return VM{}, wrapErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Str("name", spec.Name).Str("instance_uuid", vm.InstanceUUID).
		Str("host", vm.Host.Value).Msg("created vm")
	return vm, nil
}

// FindVMByInstanceUUID returns the VM whose config.instanceUuid is uuid, or
// an error wrapping ErrNotFound.
//
// Cost: 2 SOAP round trips (FindAllByUuid, RetrievePropertiesEx); 1 when
// there is no such VM. Safe for concurrent use.
func (s *Session) FindVMByInstanceUUID(ctx context.Context, uuid string) (VM, error) {
	op := fmt.Sprintf("find vm by instance uuid %q", uuid)
	c := s.activeClient()
	if c == nil {
		return VM{}, wrapErr(op, ErrNotLoggedIn)
	}
	if uuid == "" {
		return VM{}, wrapErr(op, fmt.Errorf("%w: empty uuid", ErrInvalidArgument))
	}
	res, err := methods.FindAllByUuid(ctx, c, &types.FindAllByUuid{
		This:         *c.ServiceContent.SearchIndex,
		Uuid:         uuid,
		VmSearch:     true,
		InstanceUuid: types.NewBool(true),
	})
	if err != nil {
		return VM{}, wrapErr(op, err)
	}
	switch n := len(res.Returnval); {
	case n == 0:
		return VM{}, wrapErr(op, ErrNotFound)
	case n > 1:
		s.logFor(ctx).Warn().Str("instance_uuid", uuid).Int("vms", n).Msg("several vms share an instance uuid; using the first")
	}
	vm, err := s.readVM(ctx, c, res.Returnval[0])
	if err != nil {
		return VM{}, wrapErr(op, err)
	}
	return vm, nil
}

// GetVM reads the VM ref, or fails with an error wrapping ErrNotFound.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) GetVM(ctx context.Context, ref Ref) (VM, error) {
	op := "read vm " + ref.Value
	c := s.activeClient()
	if c == nil {
		return VM{}, wrapErr(op, ErrNotLoggedIn)
	}
	vm, err := s.readVM(ctx, c, ref.Reference())
	if err != nil {
		return VM{}, wrapErr(op, err)
	}
	return vm, nil
}

// PowerOn powers the VM on; a VM that is already on counts as success.
//
// Cost: 2 SOAP round trips (PowerOnVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) PowerOn(ctx context.Context, vm Ref) error {
	op := "power on vm " + vm.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.PowerOnVM_Task(ctx, c, &types.PowerOnVM_Task{This: vm.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if inPowerState(err, PowerStateOn) {
		return nil
	}
	return wrapVMErr(op, err)
}

// PowerOff powers the VM off hard; a VM that is already off counts as
// success.
//
// Cost: 2 SOAP round trips (PowerOffVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) PowerOff(ctx context.Context, vm Ref) error {
	op := "power off vm " + vm.Value
	err := s.powerOff(ctx, op, vm)
	if inPowerState(err, PowerStateOff) {
		return nil
	}
	return wrapVMErr(op, err)
}

func (s *Session) powerOff(ctx context.Context, op string, vm Ref) error {
	return s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.PowerOffVM_Task(ctx, c, &types.PowerOffVM_Task{This: vm.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
}

// Reset resets a powered-on VM (hard reboot). A VM that is not powered on
// fails with a fault InvalidPowerState (a *TaskError or a SOAP fault).
//
// Cost: 2 SOAP round trips (ResetVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) Reset(ctx context.Context, vm Ref) error {
	op := "reset vm " + vm.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.ResetVM_Task(ctx, c, &types.ResetVM_Task{This: vm.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	return wrapVMErr(op, err)
}

// ShutdownGuest asks the guest OS to shut down through VMware Tools and
// returns without waiting for the VM to power off (poll GetVM for that). A
// VM that is already off counts as success. When Tools are not running the
// error wraps ErrToolsNotRunning, so that the caller can fall back to
// PowerOff or Reset.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) ShutdownGuest(ctx context.Context, vm Ref) error {
	op := "shut down guest of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	_, err := methods.ShutdownGuest(ctx, c, &types.ShutdownGuest{This: vm.Reference()})
	if inPowerState(err, PowerStateOff) {
		return nil
	}
	return wrapVMErr(op, err)
}

// RebootGuest asks VMware Tools in the guest to restart it (nova's soft
// reboot). Without running Tools the error wraps ErrToolsNotRunning, so
// that the caller can fall back to Reset as nova's VMware driver does.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) RebootGuest(ctx context.Context, vm Ref) error {
	op := "reboot guest of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	_, err := methods.RebootGuest(ctx, c, &types.RebootGuest{This: vm.Reference()})
	return wrapVMErr(op, err)
}

// Rename renames the VM; renaming to its current name succeeds.
//
// Cost: 2 SOAP round trips (Rename_Task, usually 1 task poll); 1 more
// when the name is taken, to check whether the VM itself holds it. Safe for
// concurrent use.
func (s *Session) Rename(ctx context.Context, vm Ref, name string) error {
	op := fmt.Sprintf("rename vm %s to %q", vm.Value, name)
	if name == "" {
		return wrapErr(op, fmt.Errorf("%w: empty name", ErrInvalidArgument))
	}
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.Rename_Task(ctx, c, &types.Rename_Task{This: vm.Reference(), NewName: name})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil && (fault.Is(err, &types.DuplicateName{}) || fault.Is(err, &types.InvalidArgument{})) {
		// The name may be taken by the VM itself: an earlier Rename
		// succeeded (some servers refuse renaming to the current name).
		if c := s.activeClient(); c != nil {
			var m mo.VirtualMachine
			if rerr := s.retrieveOne(ctx, c, vm, []string{"name"}, &m); rerr == nil && (m.Name == name || m.Name == escapeName(name)) {
				return nil
			}
		}
	}
	return wrapVMErr(op, err)
}

// Reconfigure applies spec to the VM (ReconfigVM_Task).
//
// Cost: 2 SOAP round trips (ReconfigVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) Reconfigure(ctx context.Context, vm Ref, spec types.VirtualMachineConfigSpec) error {
	op := "reconfigure vm " + vm.Value
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, spec))
}

func (s *Session) reconfigure(ctx context.Context, op string, vm Ref, spec types.VirtualMachineConfigSpec) error {
	return s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.ReconfigVM_Task(ctx, c, &types.ReconfigVM_Task{This: vm.Reference(), Spec: spec})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
}

// AttachDisk adds a thin-provisioned virtual disk backed by datastorePath
// (e.g. "[ds] uuid/uuid_1.vmdk") to the controller controllerKey (0 = the
// VM's first SCSI controller) at its first free unit number. With
// capacityKB > 0 the disk file is created with that size; with 0 an
// existing disk file is attached. It returns the disk as attached.
//
// Cost: 4 SOAP round trips (RetrievePropertiesEx of the devices,
// ReconfigVM_Task, usually 1 task poll, RetrievePropertiesEx of the devices).
// Concurrent AttachDisk calls on one VM may pick the same unit number; the
// loser fails. Safe for concurrent use on different VMs.
func (s *Session) AttachDisk(ctx context.Context, vm Ref, datastorePath string, capacityKB int64, controllerKey int32) (Disk, error) {
	op := fmt.Sprintf("attach disk %q to vm %s", datastorePath, vm.Value)
	c := s.activeClient()
	if c == nil {
		return Disk{}, wrapErr(op, ErrNotLoggedIn)
	}
	if datastorePath == "" || capacityKB < 0 {
		return Disk{}, wrapErr(op, fmt.Errorf("%w: datastore path and a non-negative capacity are required", ErrInvalidArgument))
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
		return Disk{}, wrapVMErr(op, err)
	}
	if m.Config == nil {
		return Disk{}, wrapErr(op, errors.New("vm has no configuration"))
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	var ctrl types.BaseVirtualController
	if controllerKey == 0 {
		for _, d := range devices {
			if scsi, ok := d.(types.BaseVirtualSCSIController); ok {
				if c, ok := scsi.(types.BaseVirtualController); ok && (ctrl == nil || c.GetVirtualController().Key < ctrl.GetVirtualController().Key) {
					ctrl = c
				}
			}
		}
	} else if d, ok := devices.FindByKey(controllerKey).(types.BaseVirtualController); ok {
		ctrl = d
	}
	if ctrl == nil {
		return Disk{}, wrapErr(op, fmt.Errorf("%w: no usable controller (key %d)", ErrNotFound, controllerKey))
	}

	disk := &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: datastorePath},
				DiskMode:                     string(types.VirtualDiskModePersistent),
				ThinProvisioned:              types.NewBool(true),
			},
		},
		CapacityInKB: capacityKB,
	}
	devices.AssignController(disk, ctrl)
	change := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk}
	if capacityKB > 0 {
		change.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
	}
	spec := types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{change}}
	if err := s.reconfigure(ctx, op, vm, spec); err != nil {
		return Disk{}, wrapVMErr(op, err)
	}

	m = mo.VirtualMachine{}
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
		return Disk{}, wrapVMErr(op, err)
	}
	if m.Config != nil {
		for _, d := range disksFrom(m.Config.Hardware.Device) {
			if d.ControllerKey == disk.ControllerKey && disk.UnitNumber != nil && d.UnitNumber == *disk.UnitNumber {
				return d, nil
			}
		}
	}
	return Disk{}, wrapErr(op, errors.New("disk not found after reconfiguration"))
}

// Destroy removes the VM from the inventory and deletes its directory on the
// datastore (the directory of its .vmx file), as nova does: the VM is powered
// off if it is on, unregistered (which leaves disks of other directories,
// such as attached volumes, alone) and its directory deleted. A VM that no
// longer exists counts as destroyed.
//
// Cost: 4 SOAP round trips for a powered-off VM (RetrievePropertiesEx,
// UnregisterVM, DeleteDatastoreFile_Task, usually 1 task poll), 6 for a
// powered-on one (plus PowerOffVM_Task and its poll), 1 for a VM that is gone.
// Safe for concurrent use.
func (s *Session) Destroy(ctx context.Context, vm Ref) error {
	op := "destroy vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	v, err := s.readVM(ctx, c, vm.Reference())
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return wrapErr(op, err)
	}
	if v.PowerState != PowerStateOff {
		if err := s.powerOff(ctx, op, vm); err != nil && !inPowerState(err, PowerStateOff) {
			if isGone(err) {
				return nil
			}
			return wrapVMErr(op, err)
		}
	}
	_, err = methods.UnregisterVM(ctx, c, &types.UnregisterVM{This: vm.Reference()})
	if err != nil {
		if isGone(err) {
			return nil
		}
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", vm.Value).Str("name", v.Name).Msg("unregistered vm")

	dir, ok := vmDirectory(v.VMPathName)
	if !ok {
		s.logFor(ctx).Warn().Str("vm", vm.Value).Str("path", v.VMPathName).Msg("vm files are not in a directory of their own; not deleting them")
		return nil
	}
	req := &types.DeleteDatastoreFile_Task{This: *c.ServiceContent.FileManager, Name: dir}
	if !v.Datacenter.IsZero() {
		dc := v.Datacenter.Reference()
		req.Datacenter = &dc
	}
	_, err = s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.DeleteDatastoreFile_Task(ctx, c, req)
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil && !fault.Is(err, &types.FileNotFound{}) {
		return wrapErr(fmt.Sprintf("%s: delete %q", op, dir), err)
	}
	return nil
}

// vmDirectory returns the datastore directory of a .vmx path, e.g.
// "[ds] uuid" for "[ds] uuid/uuid.vmx"; false when the file is at the root
// of the datastore (the whole datastore must never be deleted).
func vmDirectory(vmx string) (string, bool) {
	var p object.DatastorePath
	if !p.FromString(vmx) || p.Datastore == "" {
		return "", false
	}
	i := strings.LastIndex(p.Path, "/")
	if i <= 0 {
		return "", false
	}
	p.Path = p.Path[:i]
	return p.String(), true
}

// EnsureExtension registers the vCenter extension key (e.g.
// "org.openstack.compute") with the given label and company unless it is
// registered already, so that VMs can name it in config.managedBy. A
// registration racing with another client's counts as success.
//
// Cost: 1 SOAP round trip when registered (FindExtension), else 2
// (RegisterExtension). Safe for concurrent use.
func (s *Session) EnsureExtension(ctx context.Context, key, label, company string) error {
	op := fmt.Sprintf("ensure extension %q", key)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	if key == "" {
		return wrapErr(op, fmt.Errorf("%w: empty key", ErrInvalidArgument))
	}
	if c.ServiceContent.ExtensionManager == nil {
		return wrapErr(op, errors.New("endpoint has no ExtensionManager"))
	}
	em := *c.ServiceContent.ExtensionManager
	found, err := methods.FindExtension(ctx, c, &types.FindExtension{This: em, ExtensionKey: key})
	if err != nil {
		return wrapErr(op, err)
	}
	if found.Returnval != nil {
		return nil
	}
	_, err = methods.RegisterExtension(ctx, c, &types.RegisterExtension{This: em, Extension: types.Extension{
		Key:                    key,
		Version:                "1.0",
		Company:                company,
		Description:            &types.Description{Label: label, Summary: label},
		LastHeartbeatTime:      time.Now().UTC(),
		ShownInSolutionManager: types.NewBool(true),
	}})
	if err != nil {
		// Another client may have registered it meanwhile.
		if again, ferr := methods.FindExtension(ctx, c, &types.FindExtension{This: em, ExtensionKey: key}); ferr == nil && again.Returnval != nil {
			return nil
		}
		return wrapErr(op, err)
	}
	s.logFor(ctx).Info().Str("extension", key).Msg("registered vCenter extension")
	return nil
}

// vmTask starts a VM task with start and waits for it.
func (s *Session) vmTask(ctx context.Context, op string, start func(*vim25.Client) (types.ManagedObjectReference, error)) error {
	c := s.activeClient()
	if c == nil {
		return ErrNotLoggedIn
	}
	_, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) { return start(c) })
	return err
}

// inPowerState reports whether err is an InvalidPowerState fault saying the
// VM is already in state.
func inPowerState(err error, state string) bool {
	var ips *types.InvalidPowerState
	if _, ok := fault.As(err, &ips); !ok {
		return false
	}
	return string(ips.ExistingState) == state
}

// isGone reports whether err says that the object no longer exists.
func isGone(err error) bool {
	return errors.Is(err, ErrNotFound) || fault.Is(err, &types.ManagedObjectNotFound{})
}

// wrapVMErr is wrapErr that also maps a vanished VM to ErrNotFound and
// missing VMware Tools to ErrToolsNotRunning.
func wrapVMErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrToolsNotRunning):
		return wrapErr(op, err)
	case fault.Is(err, &types.ManagedObjectNotFound{}):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrNotFound, err)
	case fault.Is(err, &types.ToolsUnavailable{}):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrToolsNotRunning, err)
	default:
		return wrapErr(op, err)
	}
}

// retrieveOne reads properties of one object; a vanished object fails with
// an error wrapping ErrNotFound.
func (s *Session) retrieveOne(ctx context.Context, c *vim25.Client, ref Ref, props []string, dst any) error {
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This: c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{{
			ObjectSet: []types.ObjectSpec{{Obj: ref.Reference()}},
			PropSet:   []types.PropertySpec{{Type: ref.Type, PathSet: props}},
		}},
	})
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return fmt.Errorf("%s: %w: %w", ref, ErrNotFound, err)
		}
		return fmt.Errorf("retrieve %s: %w", ref, err)
	}
	if len(objects) == 0 {
		return fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	if missingNotAuthenticated(objects[0]) {
		return fmt.Errorf("%s: %w", ref, ErrNotAuthenticated)
	}
	objects[0].MissingSet = nil
	return mo.LoadObjectContent(objects[:1], dst)
}

// readVM reads a VM and, in the same retrieval, the folders above it up to
// its datacenter. A VM that does not exist fails with ErrNotFound.
func (s *Session) readVM(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) (VM, error) {
	folderUp := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "folderUp"},
		Type:          "Folder",
		Path:          "parent",
		Skip:          types.NewBool(false),
		SelectSet:     []types.BaseSelectionSpec{&types.SelectionSpec{Name: "folderUp"}},
	}
	spec := types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  ref,
			Skip: types.NewBool(false),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
				Type:      "VirtualMachine",
				Path:      "parent",
				Skip:      types.NewBool(false),
				SelectSet: []types.BaseSelectionSpec{folderUp},
			}},
		}},
		PropSet: []types.PropertySpec{
			{Type: "VirtualMachine", PathSet: vmProperties},
			{Type: "Folder", PathSet: []string{"parent"}},
			{Type: "Datacenter", PathSet: []string{"name"}},
		},
	}
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This:    c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{spec},
	})
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return VM{}, fmt.Errorf("%s: %w: %w", ref, ErrNotFound, err)
		}
		return VM{}, fmt.Errorf("retrieve %s: %w", ref, err)
	}
	var (
		vm     *mo.VirtualMachine
		dc     Ref
		dcName string
	)
	for _, oc := range objects {
		if missingNotAuthenticated(oc) {
			return VM{}, fmt.Errorf("%s: %w", oc.Obj, ErrNotAuthenticated)
		}
		oc.MissingSet = nil
		obj, err := mo.ObjectContentToType(oc)
		if err != nil {
			return VM{}, fmt.Errorf("decode %s: %w", oc.Obj, err)
		}
		switch o := obj.(type) {
		case mo.VirtualMachine:
			if oc.Obj == ref {
				vm = &o
			}
		case mo.Datacenter:
			dc, dcName = refFrom(oc.Obj), o.Name
		}
	}
	if vm == nil {
		return VM{}, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	out := vmFrom(*vm)
	out.Datacenter, out.DatacenterName = dc, dcName
	return out, nil
}

// vmFrom converts a retrieved VirtualMachine.
func vmFrom(m mo.VirtualMachine) VM {
	out := VM{
		Ref:          refFrom(m.Self),
		Name:         m.Name,
		PowerState:   string(m.Runtime.PowerState),
		Host:         refFromPtr(m.Runtime.Host),
		Folder:       refFromPtr(m.Parent),
		ResourcePool: refFromPtr(m.ResourcePool),
		ExtraConfig:  map[string]string{},
	}
	if cfg := m.Config; cfg != nil {
		out.InstanceUUID = cfg.InstanceUuid
		out.NumCPUs = cfg.Hardware.NumCPU
		out.MemoryMB = int64(cfg.Hardware.MemoryMB)
		out.GuestID = cfg.GuestId
		out.Annotation = cfg.Annotation
		out.VMPathName = cfg.Files.VmPathName
		if mb := cfg.ManagedBy; mb != nil {
			out.ManagedByKey, out.ManagedByType = mb.ExtensionKey, mb.Type
		}
		for _, o := range cfg.ExtraConfig {
			if ov := o.GetOptionValue(); ov != nil {
				out.ExtraConfig[ov.Key] = fmt.Sprint(ov.Value)
			}
		}
		out.Disks = disksFrom(cfg.Hardware.Device)
		for _, d := range cfg.Hardware.Device {
			if c, ok := d.(types.BaseVirtualSCSIController); ok {
				out.Controllers = append(out.Controllers, c.GetVirtualSCSIController().Key)
			}
		}
		slices.Sort(out.Controllers)
		out.NICs = nicsFrom(cfg.Hardware.Device, out.ExtraConfig)
	}
	return out
}

// nicsFrom lists the network cards among devices, in device order.
func nicsFrom(devices []types.BaseVirtualDevice, extra map[string]string) []NIC {
	var out []NIC
	for _, d := range devices {
		card, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		ec := card.GetVirtualEthernetCard()
		nic := NIC{Model: nicModel(card), MAC: ec.MacAddress, IfaceID: extra[ifaceIDKey(len(out))]}
		switch b := ec.Backing.(type) {
		case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
			nic.Network = NetworkRef{SwitchUUID: b.Port.SwitchUuid, PortgroupKey: b.Port.PortgroupKey, PortKey: b.Port.PortKey}
		case *types.VirtualEthernetCardNetworkBackingInfo:
			nic.Network = NetworkRef{NetworkName: b.DeviceName}
		}
		out = append(out, nic)
	}
	return out
}

// nicModel names the model of card (NICModel*), "" if unknown.
func nicModel(card types.BaseVirtualEthernetCard) string {
	switch card.(type) {
	case *types.VirtualE1000:
		return NICModelE1000
	case *types.VirtualE1000e:
		return NICModelE1000e
	case *types.VirtualVmxnet:
		return NICModelVmxnet
	case *types.VirtualVmxnet3:
		return NICModelVmxnet3
	case *types.VirtualPCNet32:
		return NICModelPCNet32
	case *types.VirtualSriovEthernetCard:
		return NICModelSriov
	}
	return ""
}

// disksFrom lists the virtual disks among devices, sorted by key.
func disksFrom(devices []types.BaseVirtualDevice) []Disk {
	var out []Disk
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		dk := Disk{Key: disk.Key, CapacityKB: disk.CapacityInKB, ControllerKey: disk.ControllerKey}
		if disk.UnitNumber != nil {
			dk.UnitNumber = *disk.UnitNumber
		}
		if fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			dk.FileName = fb.GetVirtualDeviceFileBackingInfo().FileName
		}
		out = append(out, dk)
	}
	slices.SortFunc(out, func(a, b Disk) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// extraConfig converts a map to option values sorted by key.
func extraConfig(m map[string]string) []types.BaseOptionValue {
	keys := slices.Sorted(maps.Keys(m))
	out := make([]types.BaseOptionValue, 0, len(keys))
	for _, k := range keys {
		out = append(out, &types.OptionValue{Key: k, Value: m[k]})
	}
	return out
}

// NIC models (NIC.Model); empty is NICModelE1000, nova's default.
const (
	NICModelE1000   = "e1000"
	NICModelE1000e  = "e1000e"
	NICModelVmxnet  = "vmxnet"
	NICModelVmxnet3 = "vmxnet3"
	NICModelPCNet32 = "pcnet32"
	NICModelSriov   = "sriov"
)

// ifaceIDKey is the extraConfig key naming the neutron port of NIC index
// i, which NSX and the DVS agent read.
func ifaceIDKey(i int) string { return fmt.Sprintf("nvp.iface-id.%d", i) }

// ifaceFree is what nova writes to nvp.iface-id.<i> when it detaches the NIC.
const ifaceFree = "free"

// nicKeyBase is the (negative) device key of the first NIC added in one
// configuration; SCSI controllers and disks take keys from -200 down.
const nicKeyBase = -1000

// nicCard returns an empty card of model.
func nicCard(model string) (types.BaseVirtualEthernetCard, error) {
	switch model {
	case "", NICModelE1000:
		return &types.VirtualE1000{}, nil
	case NICModelE1000e:
		return &types.VirtualE1000e{}, nil
	case NICModelVmxnet:
		return &types.VirtualVmxnet{}, nil
	case NICModelVmxnet3:
		return &types.VirtualVmxnet3{}, nil
	case NICModelPCNet32:
		return &types.VirtualPCNet32{}, nil
	case NICModelSriov:
		return &types.VirtualSriovEthernetCard{}, nil
	default:
		return nil, fmt.Errorf("%w: unknown NIC model %q", ErrInvalidArgument, model)
	}
}

// nicChanges returns the device changes adding nics and their extraConfig
// entries nvp.iface-id.<first+i>. NICs with a port group need no lookup;
// the others' networks are found by name among the networks of the compute
// resource owning pool (one round trip for all of them).
func (s *Session) nicChanges(ctx context.Context, c *vim25.Client, pool Ref, nics []NIC, first int) ([]types.BaseVirtualDeviceConfigSpec, []types.BaseOptionValue, error) {
	var nets *namedNetworks
	var changes []types.BaseVirtualDeviceConfigSpec
	var extra []types.BaseOptionValue
	for i, nic := range nics {
		card, err := nicCard(nic.Model)
		if err != nil {
			return nil, nil, err
		}
		ref := nic.Network
		var backing types.BaseVirtualDeviceBackingInfo
		switch {
		case ref.SwitchUUID != "" && ref.PortgroupKey != "":
		case ref.NetworkName != "":
			if nets == nil {
				if nets, err = s.readNetworks(ctx, c, pool); err != nil {
					return nil, nil, err
				}
			}
			found, ok := nets.find(ref.NetworkName)
			if !ok {
				return nil, nil, fmt.Errorf("network %q: %w", ref.NetworkName, ErrNotFound)
			}
			ref, backing = found.ref, found.backing
		default:
			return nil, nil, fmt.Errorf("%w: NIC %d has neither a port group nor a network name", ErrInvalidArgument, i)
		}
		if backing == nil {
			backing = &types.VirtualEthernetCardDistributedVirtualPortBackingInfo{
				Port: types.DistributedVirtualSwitchPortConnection{
					SwitchUuid:   ref.SwitchUUID,
					PortgroupKey: ref.PortgroupKey,
					PortKey:      ref.PortKey,
				},
			}
		}
		ec := card.GetVirtualEthernetCard()
		ec.Key = int32(nicKeyBase - i)
		ec.Backing = backing
		ec.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: true, AllowGuestControl: true, Connected: true}
		if nic.MAC != "" {
			ec.AddressType = string(types.VirtualEthernetCardMacTypeManual)
			ec.MacAddress = nic.MAC
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    card.(types.BaseVirtualDevice),
		})
		if nic.IfaceID != "" {
			extra = append(extra, &types.OptionValue{Key: ifaceIDKey(first + i), Value: nic.IfaceID})
		}
	}
	return changes, extra, nil
}

// namedNetwork is a network found by name, with the backing a NIC on it
// takes.
type namedNetwork struct {
	name    string
	ref     NetworkRef
	backing types.BaseVirtualDeviceBackingInfo // nil: a DV port backing from ref
}

// namedNetworks are the networks a NIC can be attached to by name.
type namedNetworks struct {
	portgroups []namedNetwork // sorted by name
	standard   []namedNetwork
}

// find returns the DV port group whose name contains name, else the
// standard network called name, as nova's
// network_util.get_network_with_the_name does.
func (n *namedNetworks) find(name string) (namedNetwork, bool) {
	for _, pg := range n.portgroups {
		if strings.Contains(pg.name, name) {
			return pg, true
		}
	}
	for _, net := range n.standard {
		if net.name == name {
			return net, true
		}
	}
	return namedNetwork{}, false
}

// readNetworks reads, in one retrieval, the networks of the compute
// resource owning pool and, for its DV port groups, the switches beside
// them in their network folder (for the switch uuid a backing needs).
func (s *Session) readNetworks(ctx context.Context, c *vim25.Client, pool Ref) (*namedNetworks, error) {
	if pool.IsZero() {
		return nil, fmt.Errorf("%w: a resource pool is needed to find networks by name", ErrInvalidArgument)
	}
	siblings := &types.TraversalSpec{
		Type:      "DistributedVirtualPortgroup",
		Path:      "parent",
		Skip:      types.NewBool(true),
		SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{Type: "Folder", Path: "childEntity", Skip: types.NewBool(false)}},
	}
	objects, err := s.retrieve(ctx, c, types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  pool.Reference(),
			Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
				Type: "ResourcePool",
				Path: "owner",
				Skip: types.NewBool(true),
				SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
					Type:      "ComputeResource",
					Path:      "network",
					Skip:      types.NewBool(false),
					SelectSet: []types.BaseSelectionSpec{siblings},
				}},
			}},
		}},
		PropSet: []types.PropertySpec{
			{Type: "Network", PathSet: []string{"name"}},
			{Type: "DistributedVirtualPortgroup", PathSet: []string{"key", "config.distributedVirtualSwitch"}},
			{Type: "DistributedVirtualSwitch", PathSet: []string{"uuid"}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("read networks: %w", err)
	}
	uuids := map[types.ManagedObjectReference]string{}
	type dvpg struct {
		name, key string
		dvs       types.ManagedObjectReference
	}
	var pgs []dvpg
	out := &namedNetworks{}
	for _, oc := range objects {
		switch {
		case isSwitch(oc.Obj.Type):
			var d mo.DistributedVirtualSwitch
			if err := mo.LoadObjectContent([]types.ObjectContent{oc}, &d); err != nil {
				return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
			}
			uuids[oc.Obj] = d.Uuid
		case oc.Obj.Type == "DistributedVirtualPortgroup":
			var p mo.DistributedVirtualPortgroup
			if err := mo.LoadObjectContent([]types.ObjectContent{oc}, &p); err != nil {
				return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
			}
			if p.Config.DistributedVirtualSwitch != nil && (p.Config.Uplink == nil || !*p.Config.Uplink) {
				pgs = append(pgs, dvpg{name: p.Name, key: cmp.Or(p.Key, oc.Obj.Value), dvs: *p.Config.DistributedVirtualSwitch})
			}
		case oc.Obj.Type == "Network":
			var n mo.Network
			if err := mo.LoadObjectContent([]types.ObjectContent{oc}, &n); err != nil {
				return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
			}
			net := oc.Obj
			out.standard = append(out.standard, namedNetwork{
				name:    n.Name,
				ref:     NetworkRef{NetworkName: n.Name},
				backing: &types.VirtualEthernetCardNetworkBackingInfo{VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: n.Name}, Network: &net},
			})
		}
	}
	for _, p := range pgs {
		if uuid, ok := uuids[p.dvs]; ok {
			out.portgroups = append(out.portgroups, namedNetwork{
				name: p.name,
				ref:  NetworkRef{SwitchUUID: uuid, PortgroupKey: p.key, NetworkName: p.name},
			})
		}
	}
	slices.SortFunc(out.portgroups, func(a, b namedNetwork) int { return cmp.Compare(a.name, b.name) })
	slices.SortFunc(out.standard, func(a, b namedNetwork) int { return cmp.Compare(a.name, b.name) })
	return out, nil
}

// AddNIC adds a network card to the VM and writes nvp.iface-id.<index> =
// nic.IfaceID to its extraConfig (nova's attach_interface). The card is
// connected at power-on and while running.
//
// Cost: 2-3 SOAP round trips (ReconfigVM_Task, task polls), plus 2 when the
// network is found by name (the VM's resource pool, then the networks).
// Safe for concurrent use.
func (s *Session) AddNIC(ctx context.Context, vm Ref, nic NIC, index int) error {
	op := fmt.Sprintf("add nic %s to vm %s", nic.MAC, vm.Value)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	if index < 0 {
		return wrapErr(op, fmt.Errorf("%w: negative NIC index %d", ErrInvalidArgument, index))
	}
	var pool Ref
	if nic.Network.SwitchUUID == "" || nic.Network.PortgroupKey == "" {
		var m mo.VirtualMachine
		if err := s.retrieveOne(ctx, c, vm, []string{"resourcePool"}, &m); err != nil {
			return wrapVMErr(op, err)
		}
		pool = refFromPtr(m.ResourcePool)
	}
	changes, extra, err := s.nicChanges(ctx, c, pool, []NIC{nic}, index)
	if err != nil {
		return wrapErr(op, err)
	}
	if nic.IfaceID == "" {
		extra = nil
	}
	spec := types.VirtualMachineConfigSpec{DeviceChange: changes, ExtraConfig: extra}
	if err := s.reconfigure(ctx, op, vm, spec); err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", vm.Value).Str("mac", nic.MAC).Str("iface_id", nic.IfaceID).Int("index", index).Msg("added nic")
	return nil
}

// RemoveNIC removes the VM's network card with MAC address mac (compared
// case-insensitively) and sets nvp.iface-id.<index> to "free", as nova's
// detach_interface does. A card that is already gone only has its
// extraConfig entry freed.
//
// Cost: 3-4 SOAP round trips (RetrievePropertiesEx, ReconfigVM_Task, task
// polls). Safe for concurrent use.
func (s *Session) RemoveNIC(ctx context.Context, vm Ref, mac string, index int) error {
	op := fmt.Sprintf("remove nic %s from vm %s", mac, vm.Value)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	if mac == "" || index < 0 {
		return wrapErr(op, fmt.Errorf("%w: a MAC address and a non-negative index are required", ErrInvalidArgument))
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
		return wrapVMErr(op, err)
	}
	spec := types.VirtualMachineConfigSpec{
		ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: ifaceIDKey(index), Value: ifaceFree}},
	}
	if m.Config != nil {
		for _, d := range m.Config.Hardware.Device {
			if card, ok := d.(types.BaseVirtualEthernetCard); ok && strings.EqualFold(card.GetVirtualEthernetCard().MacAddress, mac) {
				spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
					Operation: types.VirtualDeviceConfigSpecOperationRemove,
					Device:    d,
				})
			}
		}
	}
	if err := s.reconfigure(ctx, op, vm, spec); err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", vm.Value).Str("mac", mac).Int("index", index).Int("removed", len(spec.DeviceChange)).Msg("removed nic")
	return nil
}
