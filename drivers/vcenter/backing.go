package vcenter

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// A volume backing is the shadow VM cinder's VMDK driver keeps per volume
// (cinder/volume/drivers/vmware/volumeops.py): never powered on, named
// volume-<id>, config.instanceUuid the volume id, extraConfig
// cinder.volume.id, managed by the extension org.openstack.storage, with
// one disk holding the volume's data.
const (
	// BackingExtensionKey and BackingExtensionType are the backings'
	// config.managedBy.
	BackingExtensionKey  = "org.openstack.storage"
	BackingExtensionType = "volume"
	// BackingVolumeIDKey is the extraConfig key holding the volume id.
	BackingVolumeIDKey = "cinder.volume.id"
	// backingVMXVersion is the hardware version the driver gives backings
	// (vmx-08 runs on every ESXi from 5.0).
	backingVMXVersion = "vmx-08"
)

// Backing disk types: the values of the vmware:vmdk_type extra spec.
const (
	BackingDiskThin             = "thin"
	BackingDiskThick            = "thick" // lazily zeroed
	BackingDiskEagerZeroedThick = "eagerZeroedThick"
)

// Backing disk adapter types: the values of vmware_adapter_type and the
// vmware:adapter_type extra spec.
const (
	BackingAdapterLsiLogic    = "lsiLogic"
	BackingAdapterBusLogic    = "busLogic"
	BackingAdapterLsiLogicSAS = "lsiLogicsas"
	BackingAdapterParaVirtual = "paraVirtual"
	BackingAdapterIDE         = "ide"
)

// ValidBackingDiskType reports whether t is a vmware:vmdk_type value.
func ValidBackingDiskType(t string) bool {
	switch t {
	case BackingDiskThin, BackingDiskThick, BackingDiskEagerZeroedThick:
		return true
	}
	return false
}

// ValidBackingAdapterType reports whether t is a vmware:adapter_type value.
func ValidBackingAdapterType(t string) bool {
	switch t {
	case BackingAdapterLsiLogic, BackingAdapterBusLogic, BackingAdapterLsiLogicSAS, BackingAdapterParaVirtual, BackingAdapterIDE:
		return true
	}
	return false
}

// BackingSpec describes a volume backing to create.
type BackingSpec struct {
	// Name is the backing's name, volume-<volume id>.
	Name string
	// VolumeID becomes config.instanceUuid, extraConfig cinder.volume.id
	// and the disk's UUID.
	VolumeID string
	// SizeGB is the disk's capacity (at least 1 MiB, as the driver).
	SizeGB int64
	// DiskType is BackingDiskThin (default), BackingDiskThick or
	// BackingDiskEagerZeroedThick.
	DiskType string
	// AdapterType is the disk's controller (BackingAdapter*; default
	// lsiLogic).
	AdapterType string
	// Folder is the backing's VM folder (OpenStack/Project (<id>)/Volumes),
	// ResourcePool a cluster's root pool, Host (optional) the host to
	// register it on, Datastore the name of the datastore for its files.
	Folder       Ref
	ResourcePool Ref
	Host         Ref
	Datastore    string
	// DiskPath, when set, is an existing virtual disk (e.g. a copied image,
	// "[ds] volume-<id>/volume-<id>.vmdk") the backing is created with, in
	// that disk's directory, instead of a new empty disk.
	DiskPath string
	// DiskCapacityKB, when set, is the disk's capacity instead of SizeGB
	// (an existing disk of any size).
	DiskCapacityKB int64
	// ProfileID, when set, is the storage profile the backing and its disk
	// are associated with (the driver's profileId).
	ProfileID string
}

// Backing is a volume backing as read from vCenter.
type Backing struct {
	Ref  Ref
	Name string
	// InstanceUUID is config.instanceUuid; VolumeID is extraConfig
	// cinder.volume.id.
	InstanceUUID string
	VolumeID     string
	// Template reports a backing marked as template (a snapshot in the
	// driver's template format).
	Template bool
	// HasSnapshots reports VM snapshots on the backing (the driver's
	// snapshot_exists).
	HasSnapshots bool
	// Host is the host the backing is registered on, Folder its parent.
	Host   Ref
	Folder Ref
	// Datastores are the datastores holding its files.
	Datastores []Ref
	// VMPathName is its .vmx file.
	VMPathName string
	// DiskPath and DiskCapacityKB describe its (first) disk; empty for a
	// disk-less backing. DiskUUID is the disk's UUID.
	DiskPath       string
	DiskCapacityKB int64
	DiskUUID       string
	// DiskType is the disk's provisioning (BackingDisk*), "" when unknown.
	DiskType      string
	ManagedByKey  string
	ManagedByType string

	disk *types.VirtualDisk
}

// backingProperties are read for a Backing.
var backingProperties = []string{
	"name", "parent", "runtime.host", "datastore", "config.instanceUuid", "config.template",
	"config.extraConfig", "config.managedBy", "config.files.vmPathName", "config.hardware.device", "snapshot",
}

// controllerFor returns the controller device for an adapter type (nil
// for ide: the VM's default IDE controller 200 is used).
func controllerFor(adapter string) (types.BaseVirtualDevice, error) {
	var name string
	switch adapter {
	case "", BackingAdapterLsiLogic:
		name = "lsilogic"
	case BackingAdapterBusLogic:
		name = "buslogic"
	case BackingAdapterLsiLogicSAS:
		name = "lsilogic-sas"
	case BackingAdapterParaVirtual:
		name = "pvscsi"
	case BackingAdapterIDE:
		return nil, nil
	default:
		return nil, fmt.Errorf("%w: adapter type %q", ErrInvalidArgument, adapter)
	}
	return object.SCSIControllerTypes().CreateSCSIController(name)
}

// CreateBacking creates a volume backing as the VMDK driver's
// create_backing does (guest otherGuest, 1 vCPU, 128 MB, vmx-08, one
// controller and one disk created with the VM), with the disk's UUID set
// to the volume id in the same call (the driver needs a second
// reconfiguration for it). It returns the backing's reference.
//
// Cost: 2 SOAP round trips (CreateVM_Task, usually 1 task poll).
func (s *Session) CreateBacking(ctx context.Context, spec BackingSpec) (Ref, error) {
	op := fmt.Sprintf("create volume backing %q", spec.Name)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	switch {
	case spec.Name == "" || spec.VolumeID == "":
		return Ref{}, wrapErr(op, fmt.Errorf("%w: name and volume id are required", ErrInvalidArgument))
	case spec.Folder.IsZero(), spec.ResourcePool.IsZero(), spec.Datastore == "":
		return Ref{}, wrapErr(op, fmt.Errorf("%w: folder, resource pool and datastore are required", ErrInvalidArgument))
	case spec.DiskType != "" && !ValidBackingDiskType(spec.DiskType):
		return Ref{}, wrapErr(op, fmt.Errorf("%w: disk type %q", ErrInvalidArgument, spec.DiskType))
	}
	ctrl, err := controllerFor(spec.AdapterType)
	if err != nil {
		return Ref{}, wrapErr(op, err)
	}
	cs := backingConfigSpec(spec.Name, spec.VolumeID, spec.Datastore)
	if spec.DiskPath != "" {
		p, err := ParseDatastorePath(spec.DiskPath)
		if err != nil || p.Dir().Path == "" {
			return Ref{}, wrapErr(op, fmt.Errorf("%w: disk path %q is not in a directory", ErrInvalidArgument, spec.DiskPath))
		}
		// the .vmx named in full: given the directory, vCenter would make a new one beside it
		cs.Files.VmPathName = p.Dir().Join(spec.Name + ".vmx").String()
	}
	ctrlKey := int32(200) // the default IDE controller
	if ctrl != nil {
		ctrl.GetVirtualDevice().Key = -100
		if scsi, ok := ctrl.(types.BaseVirtualSCSIController); ok {
			sc := scsi.GetVirtualSCSIController()
			sc.BusNumber = 0
			sc.SharedBus = types.VirtualSCSISharingNoSharing
		}
		ctrlKey = -100
	}
	unit := int32(0)
	backing := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: spec.DiskPath},
		DiskMode:                     string(types.VirtualDiskModePersistent),
		Uuid:                         spec.VolumeID,
	}
	switch spec.DiskType {
	case "", BackingDiskThin:
		backing.ThinProvisioned = types.NewBool(true)
	case BackingDiskEagerZeroedThick:
		backing.EagerlyScrub = types.NewBool(true)
	}
	diskKey := int32(-101)
	if ctrlKey < 0 {
		diskKey = ctrlKey - 1
	}
	disk := &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{Key: diskKey, ControllerKey: ctrlKey, UnitNumber: &unit, Backing: backing},
		CapacityInKB:  max(1024, spec.SizeGB<<20),
	}
	if spec.DiskCapacityKB > 0 {
		disk.CapacityInKB = spec.DiskCapacityKB
	}
	diskChange := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk}
	if spec.DiskPath == "" {
		diskChange.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
	}
	if spec.ProfileID != "" {
		cs.VmProfile = vmProfileSpec(spec.ProfileID)
		diskChange.Profile = vmProfileSpec(spec.ProfileID)
	}
	cs.DeviceChange = append(cs.DeviceChange, diskChange)
	if ctrl != nil {
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: ctrl})
	}
	req := &types.CreateVM_Task{This: spec.Folder.Reference(), Config: cs, Pool: spec.ResourcePool.Reference()}
	if !spec.Host.IsZero() {
		h := spec.Host.Reference()
		req.Host = &h
	}
	res, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.CreateVM_Task(ctx, c, req)
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return Ref{}, wrapErr(op, err)
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return Ref{}, wrapErr(op, fmt.Errorf("unexpected CreateVM_Task result %T", res))
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Str("name", spec.Name).Str("datastore", spec.Datastore).
		Int64("size_gb", spec.SizeGB).Str("disk_type", spec.DiskType).Msg("created volume backing")
	return refFrom(ref), nil
}

// backingConfigSpec is the driver's _get_create_spec_disk_less.
func backingConfigSpec(name, volumeID, datastore string) types.VirtualMachineConfigSpec {
	return types.VirtualMachineConfigSpec{
		Name:         name,
		GuestId:      "otherGuest",
		NumCPUs:      1,
		MemoryMB:     128,
		Version:      backingVMXVersion,
		InstanceUuid: volumeID,
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + datastore + "]"},
		ExtraConfig:  []types.BaseOptionValue{&types.OptionValue{Key: BackingVolumeIDKey, Value: volumeID}},
		ManagedBy:    &types.ManagedByInfo{ExtensionKey: BackingExtensionKey, Type: BackingExtensionType},
	}
}

// FindBacking returns the backing of a volume, found as the driver does by
// its instance UUID; a volume without a backing fails with ErrNotFound.
//
// Cost: 2 SOAP round trips (FindAllByUuid, RetrievePropertiesEx); 1 when
// there is none.
func (s *Session) FindBacking(ctx context.Context, volumeID string) (Backing, error) {
	ref, err := s.FindBackingRef(ctx, volumeID)
	if err != nil {
		return Backing{}, err
	}
	c := s.activeClient()
	if c == nil {
		return Backing{}, wrapErr(fmt.Sprintf("find backing of volume %s", volumeID), ErrNotLoggedIn)
	}
	b, err := s.readBacking(ctx, c, ref)
	if err != nil {
		return Backing{}, wrapVMErr(fmt.Sprintf("find backing of volume %s", volumeID), err)
	}
	return b, nil
}

// FindBackingRef returns the reference of a volume's backing, found as
// FindBacking finds it but without reading the backing: for the callers
// that need only the reference (delete_volume). A volume without a backing
// fails with ErrNotFound.
//
// Cost: 1 SOAP round trip (FindAllByUuid).
func (s *Session) FindBackingRef(ctx context.Context, volumeID string) (Ref, error) {
	op := fmt.Sprintf("find backing of volume %s", volumeID)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	if volumeID == "" {
		return Ref{}, wrapErr(op, fmt.Errorf("%w: empty volume id", ErrInvalidArgument))
	}
	ref, err := findBackingRef(ctx, c, volumeID)
	if err != nil {
		return Ref{}, wrapErr(op, err)
	}
	return ref, nil
}

// findBackingRef looks a backing up by its instance UUID (the volume id).
func findBackingRef(ctx context.Context, c *vim25.Client, volumeID string) (Ref, error) {
	res, err := methods.FindAllByUuid(ctx, c, &types.FindAllByUuid{
		This: *c.ServiceContent.SearchIndex, Uuid: volumeID, VmSearch: true, InstanceUuid: types.NewBool(true),
	})
	if err != nil {
		return Ref{}, err
	}
	if len(res.Returnval) == 0 {
		return Ref{}, ErrNotFound
	}
	return refFrom(res.Returnval[0]), nil
}

// GetBacking reads the backing (or any VM) ref.
//
// Cost: 1 SOAP round trip.
func (s *Session) GetBacking(ctx context.Context, ref Ref) (Backing, error) {
	op := "read backing " + ref.Value
	c := s.activeClient()
	if c == nil {
		return Backing{}, wrapErr(op, ErrNotLoggedIn)
	}
	b, err := s.readBacking(ctx, c, ref)
	if err != nil {
		return Backing{}, wrapVMErr(op, err)
	}
	return b, nil
}

func (s *Session) readBacking(ctx context.Context, c *vim25.Client, ref Ref) (Backing, error) {
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, ref, backingProperties, &m); err != nil {
		return Backing{}, err
	}
	b := Backing{Ref: refFrom(m.Self), Name: m.Name, Host: refFromPtr(m.Runtime.Host), Folder: refFromPtr(m.Parent)}
	b.HasSnapshots = m.Snapshot != nil && len(m.Snapshot.RootSnapshotList) > 0
	for _, ds := range m.Datastore {
		b.Datastores = append(b.Datastores, refFrom(ds))
	}
	if cfg := m.Config; cfg != nil {
		b.InstanceUUID, b.Template, b.VMPathName = cfg.InstanceUuid, cfg.Template, cfg.Files.VmPathName
		if mb := cfg.ManagedBy; mb != nil {
			b.ManagedByKey, b.ManagedByType = mb.ExtensionKey, mb.Type
		}
		for _, o := range cfg.ExtraConfig {
			if ov := o.GetOptionValue(); ov != nil && ov.Key == BackingVolumeIDKey {
				b.VolumeID = fmt.Sprint(ov.Value)
			}
		}
		for _, d := range cfg.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok {
				b.disk = disk
				b.DiskCapacityKB = disk.CapacityInKB
				if fb, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					b.DiskPath, b.DiskUUID = fb.FileName, fb.Uuid
					switch {
					case fb.ThinProvisioned != nil && *fb.ThinProvisioned:
						b.DiskType = BackingDiskThin
					case fb.EagerlyScrub != nil && *fb.EagerlyScrub:
						b.DiskType = BackingDiskEagerZeroedThick
					default:
						b.DiskType = BackingDiskThick
					}
				} else if fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
					b.DiskPath = fb.GetVirtualDeviceFileBackingInfo().FileName
				}
				break
			}
		}
	}
	return b, nil
}

// DeleteBacking destroys a backing (Destroy_Task: the VM and its files);
// a backing that is gone counts as deleted.
//
// Cost: 2 SOAP round trips (Destroy_Task, usually 1 task poll).
func (s *Session) DeleteBacking(ctx context.Context, ref Ref) error {
	op := "delete backing " + ref.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.Destroy_Task(ctx, c, &types.Destroy_Task{This: ref.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil && isGone(err) {
		return nil
	}
	if err == nil {
		s.logFor(ctx).Info().Str("vm", ref.Value).Msg("deleted volume backing")
	}
	return wrapVMErr(op, err)
}

// ExtendBacking grows the backing's disk to newSizeGB (ReconfigVM_Task
// editing the disk's capacity; the driver's ExtendVirtualDisk_Task does
// the same to the file). A disk already that large is left alone.
//
// Cost: 2 SOAP round trips (ReconfigVM_Task, usually 1 task poll), none
// when there is nothing to do.
func (s *Session) ExtendBacking(ctx context.Context, b Backing, newSizeGB int64) error {
	op := fmt.Sprintf("extend backing %s to %d GB", b.Ref.Value, newSizeGB)
	if b.disk == nil {
		return wrapErr(op, fmt.Errorf("%w: the backing has no disk", ErrNotFound))
	}
	want := newSizeGB << 20
	if b.disk.CapacityInKB >= want {
		return nil
	}
	disk := *b.disk
	disk.CapacityInKB = want
	disk.CapacityInBytes = want << 10
	spec := types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: &disk},
	}}
	if err := s.reconfigure(ctx, op, b.Ref, spec); err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", b.Ref.Value).Int64("size_gb", newSizeGB).Msg("extended volume backing")
	return nil
}

// CloneSpec describes a clone of a backing.
type CloneSpec struct {
	// Name of the clone; VolumeID, when set, becomes its instance UUID and
	// extraConfig cinder.volume.id (unset for a snapshot template).
	Name     string
	VolumeID string
	// Folder, ResourcePool, Host and Datastore place the clone; an empty
	// Datastore keeps the source's (a linked clone must).
	Folder       Ref
	ResourcePool Ref
	Host         Ref
	Datastore    Ref
	// Snapshot, when set, is the source's snapshot to clone from; Linked
	// makes a linked clone (child disks on the snapshot's).
	Snapshot Ref
	Linked   bool
	// Template marks the clone as a template (the driver's template-format
	// snapshot).
	Template bool
	// DiskType, when set, converts the clone's disk (thin, thick,
	// eagerZeroedThick).
	DiskType string
}

// CloneBacking clones a backing (CloneVM_Task) as the driver's
// clone_backing does, and returns the clone's reference.
//
// Cost: 2 SOAP round trips (CloneVM_Task, task polls), +1 with DiskType
// (the source's disk is read).
func (s *Session) CloneBacking(ctx context.Context, src Ref, spec CloneSpec) (Ref, error) {
	op := fmt.Sprintf("clone backing %s as %q", src.Value, spec.Name)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	if spec.Name == "" || spec.Folder.IsZero() {
		return Ref{}, wrapErr(op, fmt.Errorf("%w: name and folder are required", ErrInvalidArgument))
	}
	loc := types.VirtualMachineRelocateSpec{DiskMoveType: string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndDisallowSharing)}
	if spec.Linked {
		loc.DiskMoveType = string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)
	}
	if !spec.Datastore.IsZero() {
		ds := spec.Datastore.Reference()
		loc.Datastore = &ds
	}
	if !spec.ResourcePool.IsZero() {
		p := spec.ResourcePool.Reference()
		loc.Pool = &p
	}
	if !spec.Host.IsZero() {
		h := spec.Host.Reference()
		loc.Host = &h
	}
	if spec.DiskType != "" && !spec.Datastore.IsZero() {
		if !ValidBackingDiskType(spec.DiskType) {
			return Ref{}, wrapErr(op, fmt.Errorf("%w: disk type %q", ErrInvalidArgument, spec.DiskType))
		}
		b, err := s.readBacking(ctx, c, src)
		if err != nil {
			return Ref{}, wrapVMErr(op, err)
		}
		if b.disk != nil {
			bk := &types.VirtualDiskFlatVer2BackingInfo{DiskMode: string(types.VirtualDiskModePersistent)}
			switch spec.DiskType {
			case BackingDiskThin:
				bk.ThinProvisioned = types.NewBool(true)
			case BackingDiskEagerZeroedThick:
				bk.EagerlyScrub = types.NewBool(true)
			default:
				bk.ThinProvisioned = types.NewBool(false)
			}
			loc.Disk = []types.VirtualMachineRelocateSpecDiskLocator{{DiskId: b.disk.Key, Datastore: *loc.Datastore, DiskBackingInfo: bk}}
		}
	}
	cfg := &types.VirtualMachineConfigSpec{ManagedBy: &types.ManagedByInfo{ExtensionKey: BackingExtensionKey, Type: BackingExtensionType}}
	if spec.VolumeID != "" {
		cfg.InstanceUuid = spec.VolumeID
		cfg.ExtraConfig = []types.BaseOptionValue{&types.OptionValue{Key: BackingVolumeIDKey, Value: spec.VolumeID}}
	}
	cs := types.VirtualMachineCloneSpec{Location: loc, PowerOn: false, Template: spec.Template, Config: cfg}
	if !spec.Snapshot.IsZero() {
		snap := spec.Snapshot.Reference()
		cs.Snapshot = &snap
	}
	res, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.CloneVM_Task(ctx, c, &types.CloneVM_Task{This: src.Reference(), Folder: spec.Folder.Reference(), Name: spec.Name, Spec: cs})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return Ref{}, wrapVMErr(op, err)
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return Ref{}, wrapErr(op, fmt.Errorf("unexpected CloneVM_Task result %T", res))
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Str("name", spec.Name).Str("source", src.Value).Bool("linked", spec.Linked).
		Bool("template", spec.Template).Msg("cloned volume backing")
	return refFrom(ref), nil
}

// CreateBackingSnapshot takes a VM snapshot of a backing (no memory, no
// quiescing) and returns it.
//
// Cost: 2 SOAP round trips (CreateSnapshot_Task, usually 1 task poll).
func (s *Session) CreateBackingSnapshot(ctx context.Context, vm Ref, name, description string) (Ref, error) {
	op := fmt.Sprintf("snapshot backing %s as %q", vm.Value, name)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	res, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.CreateSnapshot_Task(ctx, c, &types.CreateSnapshot_Task{This: vm.Reference(), Name: name, Description: description, Memory: false, Quiesce: false})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return Ref{}, wrapVMErr(op, err)
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return Ref{}, wrapErr(op, fmt.Errorf("CreateSnapshot_Task returned %T, not a snapshot", res))
	}
	return refFrom(ref), nil
}

// RemoveBackingSnapshot deletes a VM snapshot without its children, as the
// driver does; a snapshot that is gone counts as removed.
//
// Cost: 2 SOAP round trips.
func (s *Session) RemoveBackingSnapshot(ctx context.Context, snap Ref) error {
	op := "remove snapshot " + snap.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.RemoveSnapshot_Task(ctx, c, &types.RemoveSnapshot_Task{This: snap.Reference(), RemoveChildren: false})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil && isGone(err) {
		return nil
	}
	return wrapVMErr(op, err)
}

// InventoryPath returns an entity's inventory path as oslo.vmware's
// get_inventory_path writes it (the driver's snapshot provider_location):
// "/<datacenter>/vm/<folders>/<name>", without the root folder.
//
// Cost: 1 SOAP round trip.
func (s *Session) InventoryPath(ctx context.Context, ref Ref) (string, error) {
	op := "inventory path of " + ref.String()
	c := s.activeClient()
	if c == nil {
		return "", wrapErr(op, ErrNotLoggedIn)
	}
	up := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "up"}, Type: "ManagedEntity", Path: "parent", Skip: types.NewBool(false),
		SelectSet: []types.BaseSelectionSpec{&types.SelectionSpec{Name: "up"}},
	}
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This: c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{{
			ObjectSet: []types.ObjectSpec{{Obj: ref.Reference(), Skip: types.NewBool(false), SelectSet: []types.BaseSelectionSpec{up}}},
			PropSet:   []types.PropertySpec{{Type: "ManagedEntity", PathSet: []string{"name", "parent"}}},
		}},
	})
	if err != nil {
		return "", wrapVMErr(op, err)
	}
	type node struct {
		name   string
		parent *types.ManagedObjectReference
	}
	nodes := map[types.ManagedObjectReference]node{}
	for _, oc := range objects {
		var n node
		for _, p := range oc.PropSet {
			switch p.Name {
			case "name":
				n.name, _ = p.Val.(string)
			case "parent":
				if r, ok := p.Val.(types.ManagedObjectReference); ok {
					n.parent = &r
				}
			}
		}
		nodes[oc.Obj] = n
	}
	self, ok := nodes[ref.Reference()]
	if !ok {
		return "", wrapErr(op, ErrNotFound)
	}
	var parts []string
	for p := self.parent; p != nil; {
		n, ok := nodes[*p]
		if !ok || n.parent == nil { // the root folder is left out
			break
		}
		parts = append([]string{n.name}, parts...)
		p = n.parent
	}
	return "/" + strings.Join(append(parts, self.name), "/"), nil
}

// VMInventoryPath returns the inventory path InventoryPath reads for an
// entity named name in the VM folder EnsureFolderPath(datacenter,
// folders...) returns: "/<datacenter>/vm/<folders>/<name>", the folder
// names and name escaped as vCenter stores them ("/" as %2f, "%" as %25).
// It lets a caller that created the entity there know its path without
// asking vCenter.
func VMInventoryPath(datacenter string, folders []string, name string) string {
	parts := []string{"", strings.Trim(datacenter, "/"), "vm"}
	for _, f := range folders {
		parts = append(parts, escapeName(f))
	}
	return strings.Join(append(parts, escapeName(name)), "/")
}

// FindByInventoryPath returns the entity at an inventory path (with or
// without the leading "/"), or an error wrapping ErrNotFound.
//
// Cost: 1 SOAP round trip.
func (s *Session) FindByInventoryPath(ctx context.Context, path string) (Ref, error) {
	op := fmt.Sprintf("find %q", path)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	ref, err := findByInventoryPath(ctx, c, strings.TrimPrefix(path, "/"))
	if err != nil {
		return Ref{}, wrapErr(op, err)
	}
	if ref == nil {
		return Ref{}, wrapErr(op, ErrNotFound)
	}
	return refFrom(*ref), nil
}

// FindBackingSnapshot returns the VM snapshot of vm named name, or an
// error wrapping ErrNotFound.
//
// Cost: 1 SOAP round trip.
func (s *Session) FindBackingSnapshot(ctx context.Context, vm Ref, name string) (Ref, error) {
	op := fmt.Sprintf("find snapshot %q of %s", name, vm.Value)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"snapshot"}, &m); err != nil {
		return Ref{}, wrapVMErr(op, err)
	}
	if m.Snapshot != nil {
		if r := findSnapshotTree(m.Snapshot.RootSnapshotList, name); r != nil {
			return refFrom(*r), nil
		}
	}
	return Ref{}, wrapErr(op, ErrNotFound)
}

func findSnapshotTree(list []types.VirtualMachineSnapshotTree, name string) *types.ManagedObjectReference {
	for i := range list {
		if list[i].Name == name {
			return &list[i].Snapshot
		}
		if r := findSnapshotTree(list[i].ChildSnapshotList, name); r != nil {
			return r
		}
	}
	return nil
}

// MoveBacking moves a backing into folder (MoveIntoFolder_Task), as the
// driver's move_backing_to_folder does.
//
// Cost: 2 SOAP round trips.
func (s *Session) MoveBacking(ctx context.Context, vm, folder Ref) error {
	op := fmt.Sprintf("move backing %s into %s", vm.Value, folder.Value)
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.MoveIntoFolder_Task(ctx, c, &types.MoveIntoFolder_Task{This: folder.Reference(), List: []types.ManagedObjectReference{vm.Reference()}})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	return wrapVMErr(op, err)
}

// IsDuplicateName reports a DuplicateName fault (an entity of that name
// exists in the folder).
func IsDuplicateName(err error) bool {
	return fault.Is(err, &types.DuplicateName{})
}

// RevertBackingSnapshot reverts a backing to one of its VM snapshots
// (RevertToSnapshot_Task), as the driver's revert_to_snapshot does.
//
// Cost: 2 SOAP round trips.
func (s *Session) RevertBackingSnapshot(ctx context.Context, snap Ref) error {
	op := "revert to snapshot " + snap.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.RevertToSnapshot_Task(ctx, c, &types.RevertToSnapshot_Task{This: snap.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	return wrapVMErr(op, err)
}

// ReleaseBacking is the driver's unmanage: the backing stays, but no
// longer names its volume (extraConfig cinder.volume.id emptied, and a
// new instance UUID in place of the volume id, which the driver empties
// for vCenter to replace).
//
// Cost: 2 SOAP round trips.
func (s *Session) ReleaseBacking(ctx context.Context, ref Ref, newInstanceUUID string) error {
	op := "release backing " + ref.Value
	spec := types.VirtualMachineConfigSpec{
		InstanceUuid: newInstanceUUID,
		ExtraConfig:  []types.BaseOptionValue{&types.OptionValue{Key: BackingVolumeIDKey, Value: ""}},
	}
	if err := s.reconfigure(ctx, op, ref, spec); err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Msg("released volume backing")
	return nil
}

// diskLocator is a relocate spec's disk locator converting disk to
// diskType on datastore (the driver's _create_relocate_spec_disk_locator).
func diskLocator(disk *types.VirtualDisk, datastore types.ManagedObjectReference, diskType string) types.VirtualMachineRelocateSpecDiskLocator {
	bk := &types.VirtualDiskFlatVer2BackingInfo{DiskMode: string(types.VirtualDiskModePersistent)}
	switch diskType {
	case BackingDiskThin:
		bk.ThinProvisioned = types.NewBool(true)
	case BackingDiskEagerZeroedThick:
		bk.EagerlyScrub = types.NewBool(true)
	default:
		bk.ThinProvisioned = types.NewBool(false)
	}
	return types.VirtualMachineRelocateSpecDiskLocator{DiskId: disk.Key, Datastore: datastore, DiskBackingInfo: bk}
}

// RelocateBacking moves a backing's files to datastore (and its
// registration to pool and host), converting its disk to diskType when
// set, as the driver's relocate_backing does
// (moveAllDiskBackingsAndAllowSharing).
//
// Cost: 2 SOAP round trips, +1 with diskType (the disk is read).
func (s *Session) RelocateBacking(ctx context.Context, ref, datastore, pool, host Ref, diskType string) error {
	op := fmt.Sprintf("relocate backing %s to %s", ref.Value, datastore.Value)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	ds := datastore.Reference()
	loc := types.VirtualMachineRelocateSpec{Datastore: &ds, DiskMoveType: string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndAllowSharing)}
	if !pool.IsZero() {
		p := pool.Reference()
		loc.Pool = &p
	}
	if !host.IsZero() {
		h := host.Reference()
		loc.Host = &h
	}
	if diskType != "" {
		if !ValidBackingDiskType(diskType) {
			return wrapErr(op, fmt.Errorf("%w: disk type %q", ErrInvalidArgument, diskType))
		}
		b, err := s.readBacking(ctx, c, ref)
		if err != nil {
			return wrapVMErr(op, err)
		}
		if b.disk != nil {
			loc.Disk = []types.VirtualMachineRelocateSpecDiskLocator{diskLocator(b.disk, ds, diskType)}
		}
	}
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.RelocateVM_Task(ctx, c, &types.RelocateVM_Task{This: ref.Reference(), Spec: loc})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Str("datastore", datastore.Value).Str("disk_type", diskType).Msg("relocated volume backing")
	return nil
}

// RenameBacking renames a backing (the driver's rename_backing).
//
// Cost: 2 SOAP round trips.
func (s *Session) RenameBacking(ctx context.Context, ref Ref, name string) error {
	op := fmt.Sprintf("rename backing %s to %q", ref.Value, name)
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.Rename_Task(ctx, c, &types.Rename_Task{This: ref.Reference(), NewName: name})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	return wrapVMErr(op, err)
}

// SetBackingVolumeID gives a backing the volume's identity: instance UUID,
// extraConfig cinder.volume.id and its disk's UUID (the driver's
// update_backing_uuid and update_backing_disk_uuid, in one
// reconfiguration).
//
// Cost: 3 SOAP round trips (the disk is read).
func (s *Session) SetBackingVolumeID(ctx context.Context, ref Ref, volumeID string) error {
	op := fmt.Sprintf("set the volume id of backing %s", ref.Value)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	b, err := s.readBacking(ctx, c, ref)
	if err != nil {
		return wrapVMErr(op, err)
	}
	spec := types.VirtualMachineConfigSpec{
		InstanceUuid: volumeID,
		ExtraConfig:  []types.BaseOptionValue{&types.OptionValue{Key: BackingVolumeIDKey, Value: volumeID}},
	}
	if b.disk != nil {
		if fb, ok := b.disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			disk := *b.disk
			nb := *fb
			nb.Uuid = volumeID
			disk.Backing = &nb
			spec.DeviceChange = []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: &disk}}
		}
	}
	return wrapVMErr(op, s.reconfigure(ctx, op, ref, spec))
}

// VMDisk is a virtual disk of a VM, as manage_existing finds it.
type VMDisk struct {
	Key        int32
	FileName   string
	CapacityKB int64
}

// FindVMDisk returns vm's disk whose file is vmdkPath, or an error
// wrapping ErrNotFound (the driver's get_disk_device).
//
// Cost: 1 SOAP round trip.
func (s *Session) FindVMDisk(ctx context.Context, vm Ref, vmdkPath string) (VMDisk, error) {
	op := fmt.Sprintf("find disk %q of %s", vmdkPath, vm.Value)
	c := s.activeClient()
	if c == nil {
		return VMDisk{}, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device"}, &m); err != nil {
		return VMDisk{}, wrapVMErr(op, err)
	}
	if m.Config != nil {
		for _, d := range m.Config.Hardware.Device {
			disk, ok := d.(*types.VirtualDisk)
			if !ok {
				continue
			}
			if fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok && fb.GetVirtualDeviceFileBackingInfo().FileName == vmdkPath {
				return VMDisk{Key: disk.Key, FileName: vmdkPath, CapacityKB: disk.CapacityInKB}, nil
			}
		}
	}
	return VMDisk{}, wrapErr(op, ErrNotFound)
}

// DetachVMDisk removes a disk from vm and keeps its file (the driver's
// detach_disk_from_backing).
//
// Cost: 2 SOAP round trips.
func (s *Session) DetachVMDisk(ctx context.Context, vm Ref, key int32) error {
	op := fmt.Sprintf("detach disk %d from %s", key, vm.Value)
	spec := types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: &types.VirtualDisk{VirtualDevice: types.VirtualDevice{Key: key}}},
	}}
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, spec))
}

// MoveVirtualDisk moves a virtual disk (descriptor and extents) within
// datacenter dc (the driver's move_vmdk_file).
//
// Cost: 2 SOAP round trips (MoveVirtualDisk_Task and its wait).
func (s *Session) MoveVirtualDisk(ctx context.Context, dc string, src, dst DatastorePath) error {
	op := fmt.Sprintf("move virtual disk %s to %s", src, dst)
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.MoveVirtualDisk_Task(ctx, c, &types.MoveVirtualDisk_Task{
			This: *c.ServiceContent.VirtualDiskManager, SourceName: src.String(), SourceDatacenter: &dcRef,
			DestName: dst.String(), DestDatacenter: &dcRef, Force: types.NewBool(false),
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}
