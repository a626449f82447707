package volume

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// VCenter is what the VMDK driver uses of the vCenter session
// (*vcenter.Session implements it).
type VCenter interface {
	Inventory
	EnsureFolderPath(ctx context.Context, datacenter string, path ...string) (vcenter.Ref, error)
	EnsureExtension(ctx context.Context, key, label, company string) error
	GetVM(ctx context.Context, ref vcenter.Ref) (vcenter.VM, error)
	CreateBacking(ctx context.Context, spec vcenter.BackingSpec) (vcenter.Ref, error)
	FindBacking(ctx context.Context, volumeID string) (vcenter.Backing, error)
	FindBackingRef(ctx context.Context, volumeID string) (vcenter.Ref, error)
	GetBacking(ctx context.Context, ref vcenter.Ref) (vcenter.Backing, error)
	DeleteBacking(ctx context.Context, ref vcenter.Ref) error
	ExtendBacking(ctx context.Context, b vcenter.Backing, newSizeGB int64) error
	CloneBacking(ctx context.Context, src vcenter.Ref, spec vcenter.CloneSpec) (vcenter.Ref, error)
	CreateBackingSnapshot(ctx context.Context, vm vcenter.Ref, name, description string) (vcenter.Ref, error)
	RemoveBackingSnapshot(ctx context.Context, snap vcenter.Ref) error
	FindBackingSnapshot(ctx context.Context, vm vcenter.Ref, name string) (vcenter.Ref, error)
	InventoryPath(ctx context.Context, ref vcenter.Ref) (string, error)
	FindByInventoryPath(ctx context.Context, path string) (vcenter.Ref, error)
	MoveBacking(ctx context.Context, vm, folder vcenter.Ref) error
	RevertBackingSnapshot(ctx context.Context, snap vcenter.Ref) error
	ReleaseBacking(ctx context.Context, ref vcenter.Ref, newInstanceUUID string) error
	RelocateBacking(ctx context.Context, ref, datastore, pool, host vcenter.Ref, diskType string) error
	RenameBacking(ctx context.Context, ref vcenter.Ref, name string) error
	SetBackingVolumeID(ctx context.Context, ref vcenter.Ref, volumeID string) error
	SetBackingProfile(ctx context.Context, ref vcenter.Ref, profileID string) error
	FindVMDisk(ctx context.Context, vm vcenter.Ref, vmdkPath string) (vcenter.VMDisk, error)
	DetachVMDisk(ctx context.Context, vm vcenter.Ref, key int32) error
	MakeDirectory(ctx context.Context, dc string, p vcenter.DatastorePath) error
	MoveVirtualDisk(ctx context.Context, dc string, src, dst vcenter.DatastorePath) error
	VirtualDiskCapacityKB(ctx context.Context, dc string, p vcenter.DatastorePath) (int64, error)
}

// errNoDatastore is the driver's NoValidDatastoreException.
var errNoDatastore = errors.New("there is no valid datastore satisfying the requirements")

// volumeSpec is what the driver needs of a volume: its identity, size,
// project, and its type's vmware: extra specs.
type volumeSpec struct {
	ID        string
	SizeGB    int64
	ProjectID string
	// DiskType, AdapterType, CloneType and StorageProfile come from the
	// volume type's vmware:vmdk_type, vmware:adapter_type,
	// vmware:clone_type and vmware:storage_profile (defaults: thin, the
	// backend's adapter type, full, none).
	DiskType       string
	AdapterType    string
	CloneType      string
	StorageProfile string
}

// name is the volume's name, as cinder's Volume.name (volume-<id>).
func (v volumeSpec) name() string { return "volume-" + v.ID }

// placement is where a new backing goes.
type placement struct {
	Datacenter   string
	ResourcePool vcenter.Ref
	Host         vcenter.Ref
	Datastore    vcenter.Datastore
}

// vmdkDriver is cinder's VMwareVcVmdkDriver on the agent's vCenter session.
type vmdkDriver struct {
	vc       VCenter
	clusters []string
	dsRegex  *regexp.Regexp
	folder   string // vmware_volume_folder
	log      zerolog.Logger

	mu        sync.Mutex
	inv       []vcenter.Cluster
	invAt     time.Time
	folders   map[string]vcenter.Ref // datacenter/project[/Snapshots] -> folder
	extension bool

	// pol is the storage profile support; nil without SPBM (a profile
	// is then an error).
	pol *storagePolicies
}

// inventoryTTL bounds how old the cached cluster inventory used for
// placement may be.
const inventoryTTL = 20 * time.Second

func newVMDKDriver(vc VCenter, clusters []string, re *regexp.Regexp, folder string, log zerolog.Logger) *vmdkDriver {
	if folder == "" {
		folder = "Volumes"
	}
	return &vmdkDriver{vc: vc, clusters: clusters, dsRegex: re, folder: folder, log: log, folders: map[string]vcenter.Ref{}}
}

func (d *vmdkDriver) inventory(ctx context.Context, fresh bool) ([]vcenter.Cluster, error) {
	d.mu.Lock()
	inv, at := d.inv, d.invAt
	d.mu.Unlock()
	if !fresh && inv != nil && time.Since(at) < inventoryTTL {
		return inv, nil
	}
	inv, err := d.vc.Clusters(ctx, d.clusters...)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.inv, d.invAt = inv, time.Now()
	d.mu.Unlock()
	return inv, nil
}

// placementRequest is what a backing's datastore must satisfy (the
// driver's DatastoreSelector requirements).
type placementRequest struct {
	SizeGB int64
	// Host, when set, must mount the datastore (a backing for an
	// instance's host).
	Host vcenter.Ref
	// Profile, when set, is the storage profile the datastore must be
	// compliant with (profileName).
	Profile string
	// Avoid is a datastore that must not be chosen
	// (hardAntiAffinityDatastores).
	Avoid vcenter.Ref
}

// selectPlacement picks the usable datastore (datastore regex, accessible,
// not in maintenance, enough free space, compliant with the request's
// storage profile, not the avoided one) with the most free space among
// the backend's clusters, or among the clusters of the request's host (a
// backing for an instance must be on a datastore its host mounts). A
// profile that does not exist is ProfileNotFoundException; compliance is
// asked of SPBM for every placement, as the driver does.
func (d *vmdkDriver) selectPlacement(ctx context.Context, req placementRequest) (placement, error) {
	var compliant map[vcenter.Ref]bool
	if req.Profile != "" {
		id, err := d.pol.id(ctx, req.Profile)
		if err != nil {
			return placement{}, err
		}
		if compliant, err = d.pol.datastores(ctx, id, true); err != nil {
			return placement{}, err
		}
	}
	for _, fresh := range []bool{false, true} {
		clusters, err := d.inventory(ctx, fresh)
		if err != nil {
			return placement{}, err
		}
		var best placement
		found := false
		for _, c := range clusters {
			if !req.Host.IsZero() && !clusterHasHost(c, req.Host) {
				continue
			}
			for _, ds := range c.UsableDatastores(d.dsRegex) {
				if ds.FreeBytes < req.SizeGB<<30 || ds.Ref == req.Avoid || compliant != nil && !compliant[ds.Ref] {
					continue
				}
				if !found || ds.FreeBytes > best.Datastore.FreeBytes {
					best, found = placement{Datacenter: c.Datacenter, ResourcePool: c.ResourcePool, Host: req.Host, Datastore: ds}, true
				}
			}
		}
		if found {
			return best, nil
		}
	}
	what := fmt.Sprintf("%d GB", req.SizeGB)
	if req.Profile != "" {
		what += fmt.Sprintf(" compliant with storage profile %q", req.Profile)
	}
	if !req.Host.IsZero() {
		return placement{}, fmt.Errorf("%w: %s on a datastore of host %s", errNoDatastore, what, req.Host.Value)
	}
	return placement{}, fmt.Errorf("%w: %s", errNoDatastore, what)
}

// profileID is the driver's _get_storage_profile_id: the id of the
// volume's storage profile, "" without one.
func (d *vmdkDriver) profileID(ctx context.Context, v volumeSpec) (string, error) {
	if v.StorageProfile == "" {
		return "", nil
	}
	return d.pol.id(ctx, v.StorageProfile)
}

func clusterHasHost(c vcenter.Cluster, host vcenter.Ref) bool {
	for _, h := range c.Hosts {
		if h.Ref == host {
			return true
		}
	}
	return false
}

// volumeFolder is <vmFolder>/OpenStack/Project (<project>)/<folder>[/Snapshots],
// created when missing (cached once known).
func (d *vmdkDriver) volumeFolder(ctx context.Context, datacenter, project string, snapshots bool) (vcenter.Ref, error) {
	path := d.volumeFolderPath(project, snapshots)
	key := datacenter + "\x00" + fmt.Sprint(path)
	d.mu.Lock()
	ref, ok := d.folders[key]
	d.mu.Unlock()
	if ok {
		return ref, nil
	}
	ref, err := d.vc.EnsureFolderPath(ctx, datacenter, path...)
	if err != nil {
		return vcenter.Ref{}, err
	}
	d.mu.Lock()
	d.folders[key] = ref
	d.mu.Unlock()
	return ref, nil
}

// volumeFolderPath is the path of a project's volume (or snapshot) folder
// below the datacenter's VM folder.
func (d *vmdkDriver) volumeFolderPath(project string, snapshots bool) []string {
	path := []string{"OpenStack", "Project (" + project + ")", d.folder}
	if snapshots {
		path = append(path, "Snapshots")
	}
	return path
}

// forgetFolders drops the cached folders (one was deleted behind our back).
func (d *vmdkDriver) forgetFolders() {
	d.mu.Lock()
	d.folders = map[string]vcenter.Ref{}
	d.mu.Unlock()
}

// ensureExtension registers org.openstack.storage once, as do_setup does.
func (d *vmdkDriver) ensureExtension(ctx context.Context) {
	d.mu.Lock()
	done := d.extension
	d.mu.Unlock()
	if done {
		return
	}
	if err := d.vc.EnsureExtension(ctx, vcenter.BackingExtensionKey, "OpenStack Cinder", "OpenStack Foundation"); err != nil {
		d.log.Warn().Err(err).Msg("cannot register the vCenter extension org.openstack.storage")
		return
	}
	d.mu.Lock()
	d.extension = true
	d.mu.Unlock()
}

// createBacking is the driver's _create_backing: a backing of the volume's
// size on the best datastore (of host's cluster when host is set).
func (d *vmdkDriver) createBacking(ctx context.Context, v volumeSpec, host vcenter.Ref) (vcenter.Ref, error) {
	d.ensureExtension(ctx)
	pl, err := d.selectPlacement(ctx, placementRequest{SizeGB: v.SizeGB, Host: host, Profile: v.StorageProfile})
	if err != nil {
		return vcenter.Ref{}, err
	}
	profileID, err := d.profileID(ctx, v)
	if err != nil {
		return vcenter.Ref{}, err
	}
	folder, err := d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false)
	if err != nil {
		return vcenter.Ref{}, err
	}
	spec := vcenter.BackingSpec{
		Name: v.name(), VolumeID: v.ID, SizeGB: v.SizeGB, DiskType: v.DiskType, AdapterType: v.AdapterType,
		Folder: folder, ResourcePool: pl.ResourcePool, Host: pl.Host, Datastore: pl.Datastore.Name, ProfileID: profileID,
	}
	ref, err := d.vc.CreateBacking(ctx, spec)
	if err != nil && errors.Is(err, vcenter.ErrNotFound) {
		// the cached folder may be gone: look it up again once
		d.forgetFolders()
		if spec.Folder, err = d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false); err != nil {
			return vcenter.Ref{}, err
		}
		ref, err = d.vc.CreateBacking(ctx, spec)
	}
	return ref, err
}

// findBacking returns the volume's backing, or false when it has none.
func (d *vmdkDriver) findBacking(ctx context.Context, volumeID string) (vcenter.Backing, bool, error) {
	b, err := d.vc.FindBacking(ctx, volumeID)
	if errors.Is(err, vcenter.ErrNotFound) {
		return vcenter.Backing{}, false, nil
	}
	if err != nil {
		return vcenter.Backing{}, false, err
	}
	return b, true, nil
}

// deleteVolume is the driver's delete_volume: the backing, if any, goes.
// Only the backing's reference is looked up: delete needs nothing else of
// it.
func (d *vmdkDriver) deleteVolume(ctx context.Context, volumeID string) error {
	ref, err := d.vc.FindBackingRef(ctx, volumeID)
	if errors.Is(err, vcenter.ErrNotFound) {
		d.log.Info().Str("volume_id", volumeID).Msg("backing not available, no operation to be performed")
		return nil
	}
	if err != nil {
		return err
	}
	return d.vc.DeleteBacking(ctx, ref)
}

// extendVolume is the driver's extend_volume: the backing's disk grows;
// a volume without a backing has nothing to grow.
func (d *vmdkDriver) extendVolume(ctx context.Context, volumeID string, newSizeGB int64) error {
	b, ok, err := d.findBacking(ctx, volumeID)
	if err != nil || !ok {
		return err
	}
	return d.vc.ExtendBacking(ctx, b, newSizeGB)
}

// connection is the driver's _initialize_connection: the volume's backing,
// created if missing (on a datastore of the connector's instance's host
// when the connector names an instance).
func (d *vmdkDriver) connection(ctx context.Context, v volumeSpec, connector map[string]any) (vcenter.Backing, error) {
	b, ok, err := d.findBacking(ctx, v.ID)
	if err != nil {
		return vcenter.Backing{}, err
	}
	var host vcenter.Ref
	if inst, _ := connector["instance"].(string); inst != "" {
		vm, err := d.vc.GetVM(ctx, vcenter.Ref{Type: "VirtualMachine", Value: inst})
		if err != nil {
			return vcenter.Backing{}, fmt.Errorf("read the connector's instance %s: %w", inst, err)
		}
		host = vm.Host
	} else if !ok {
		d.log.Warn().Str("volume_id", v.ID).Msg("trying to boot from an empty volume")
	}
	if ok {
		if host.IsZero() {
			return b, nil
		}
		moved, err := d.relocateForHost(ctx, v, b, host)
		if err != nil || !moved {
			return b, err
		}
		return d.vc.GetBacking(ctx, b.Ref)
	}
	d.log.Info().Str("volume_id", v.ID).Msg("there is no backing for the volume: creating one")
	ref, err := d.createBacking(ctx, v, host)
	if err != nil {
		return vcenter.Backing{}, err
	}
	_, platform := connector["platform"]
	_, osType := connector["os_type"]
	if !platform || !osType {
		// only the reference goes into the connection info
		return vcenter.Backing{Ref: ref, Name: v.name(), InstanceUUID: v.ID, VolumeID: v.ID}, nil
	}
	return d.vc.GetBacking(ctx, ref)
}

// relocateForHost is the driver's _relocate_backing: a backing whose
// datastore the instance's host does not mount, or that is not compliant
// with the volume's storage profile, moves to a datastore of the host's
// cluster compliant with it (and into the project's Volumes folder of its
// datacenter). It reports whether the backing moved.
func (d *vmdkDriver) relocateForHost(ctx context.Context, v volumeSpec, b vcenter.Backing, host vcenter.Ref) (bool, error) {
	compliant := true
	if v.StorageProfile != "" && len(b.Datastores) > 0 {
		id, err := d.pol.id(ctx, v.StorageProfile)
		if err != nil {
			return false, err
		}
		set, err := d.pol.datastores(ctx, id, true)
		if err != nil {
			return false, err
		}
		compliant = set[b.Datastores[0]]
	}
	if compliant && d.hostSeesAll(ctx, host, b.Datastores) {
		return false, nil
	}
	pl, err := d.selectPlacement(ctx, placementRequest{SizeGB: v.SizeGB, Host: host, Profile: v.StorageProfile})
	if err != nil {
		return false, err
	}
	folder, err := d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false)
	if err != nil {
		return false, err
	}
	d.log.Info().Str("volume_id", v.ID).Str("host", host.Value).Str("datastore", pl.Datastore.Name).
		Msg("relocating the backing to a datastore of the instance's host compliant with its storage profile")
	if err := d.vc.RelocateBacking(ctx, b.Ref, pl.Datastore.Ref, pl.ResourcePool, host, ""); err != nil {
		return false, err
	}
	if b.Folder != folder {
		if err := d.vc.MoveBacking(ctx, b.Ref, folder); err != nil {
			return false, err
		}
	}
	return true, nil
}

// hostSeesAll reports whether host's cluster has every datastore in ds.
func (d *vmdkDriver) hostSeesAll(ctx context.Context, host vcenter.Ref, ds []vcenter.Ref) bool {
	clusters, err := d.inventory(ctx, false)
	if err != nil {
		return true
	}
	for _, c := range clusters {
		if !clusterHasHost(c, host) {
			continue
		}
		have := map[vcenter.Ref]bool{}
		for _, x := range c.Datastores {
			have[x.Ref] = true
		}
		for _, x := range ds {
			if !have[x] {
				return false
			}
		}
		return true
	}
	return true
}

// snapshotName and the template format: the driver's _create_snapshot
// with vmware_snapshot_format = template clones the backing, full, into
// the project's Volumes/Snapshots folder on the backing's datastore, as a
// template, and returns its inventory path as provider_location. A volume
// without a backing gets no snapshot (provider_location null). The
// template's path is the snapshot folder's path plus its name, both known
// here, so vCenter is not asked for it.
func (d *vmdkDriver) createSnapshot(ctx context.Context, v volumeSpec, snapshotID string) (providerLocation string, err error) {
	b, ok, err := d.findBacking(ctx, v.ID)
	if err != nil || !ok {
		if err == nil {
			d.log.Info().Str("snapshot_id", snapshotID).Msg("there is no backing, so will not create the snapshot")
		}
		return "", err
	}
	dcName, err := d.datacenterOf(ctx, b.Host)
	if err != nil {
		return "", err
	}
	folder, err := d.volumeFolder(ctx, dcName, v.ProjectID, true)
	if err != nil {
		return "", err
	}
	spec := vcenter.CloneSpec{Name: "snapshot-" + snapshotID, Folder: folder, Template: true}
	if len(b.Datastores) > 0 {
		spec.Datastore = b.Datastores[0]
	}
	if _, err := d.vc.CloneBacking(ctx, b.Ref, spec); err != nil {
		return "", err
	}
	return vcenter.VMInventoryPath(dcName, d.volumeFolderPath(v.ProjectID, true), spec.Name), nil
}

// datacenterOf is the datacenter name of the backend's cluster holding
// host. A host's datacenter does not change while it stays in the cluster,
// so the cached inventory is used however old it is; vCenter is read only
// when the host is not in it (a host added since).
func (d *vmdkDriver) datacenterOf(ctx context.Context, host vcenter.Ref) (string, error) {
	d.mu.Lock()
	cached := d.inv
	d.mu.Unlock()
	for _, c := range cached {
		if clusterHasHost(c, host) {
			return c.Datacenter, nil
		}
	}
	clusters, err := d.inventory(ctx, true)
	if err != nil {
		return "", err
	}
	for _, c := range clusters {
		if clusterHasHost(c, host) {
			return c.Datacenter, nil
		}
	}
	return "", fmt.Errorf("host %s is not in the backend's clusters", host.Value)
}

// deleteSnapshot is the driver's _delete_snapshot: the template at
// provider_location goes; no provider_location (no backing then) is a
// no-op, as is a template already gone.
func (d *vmdkDriver) deleteSnapshot(ctx context.Context, providerLocation string) error {
	if providerLocation == "" {
		return nil
	}
	ref, err := d.vc.FindByInventoryPath(ctx, providerLocation)
	if errors.Is(err, vcenter.ErrNotFound) {
		d.log.Info().Str("provider_location", providerLocation).Msg("snapshot template not found: nothing to delete")
		return nil
	}
	if err != nil {
		return err
	}
	return d.vc.DeleteBacking(ctx, ref)
}

// cloneFrom creates v's backing by cloning src (a volume's backing or a
// snapshot template): a full clone on the best datastore, or, for
// vmware:clone_type linked from a volume, a linked clone off a temporary
// snapshot; then grown to v's size when larger. srcSizeGB is the source's
// size.
func (d *vmdkDriver) cloneFrom(ctx context.Context, v volumeSpec, src vcenter.Ref, srcSizeGB int64, fromTemplate bool) error {
	linked := v.CloneType == "linked" && !fromTemplate && v.SizeGB <= srcSizeGB
	spec := vcenter.CloneSpec{Name: v.name(), VolumeID: v.ID}
	var tmpSnap vcenter.Ref
	if linked {
		sb, err := d.vc.GetBacking(ctx, src)
		if err != nil {
			return err
		}
		spec.Folder = sb.Folder
		if tmpSnap, err = d.vc.CreateBackingSnapshot(ctx, src, "temp-snapshot-"+v.ID, ""); err != nil {
			return err
		}
		spec.Snapshot, spec.Linked = tmpSnap, true
		defer func() {
			if err := d.vc.RemoveBackingSnapshot(context.WithoutCancel(ctx), tmpSnap); err != nil {
				d.log.Debug().Err(err).Msg("unable to delete the temporary snapshot of the source backing")
			}
		}()
	} else {
		pl, err := d.selectPlacement(ctx, placementRequest{SizeGB: v.SizeGB, Profile: v.StorageProfile})
		if err != nil {
			return err
		}
		if spec.Folder, err = d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false); err != nil {
			return err
		}
		spec.ResourcePool, spec.Datastore = pl.ResourcePool, pl.Datastore.Ref
		if fromTemplate {
			spec.DiskType = v.DiskType
		}
	}
	ref, err := d.vc.CloneBacking(ctx, src, spec)
	if err != nil {
		return err
	}
	if v.SizeGB > srcSizeGB {
		b, err := d.vc.GetBacking(ctx, ref)
		if err != nil {
			return err
		}
		return d.vc.ExtendBacking(ctx, b, v.SizeGB)
	}
	return nil
}

// acceptTransfer is the driver's accept_transfer: the backing, if any,
// moves to the new project's Volumes folder.
func (d *vmdkDriver) acceptTransfer(ctx context.Context, volumeID, newProject string) error {
	b, ok, err := d.findBacking(ctx, volumeID)
	if err != nil || !ok {
		return err
	}
	dc, err := d.datacenterOf(ctx, b.Host)
	if err != nil {
		return err
	}
	folder, err := d.volumeFolder(ctx, dc, newProject, false)
	if err != nil {
		return err
	}
	return d.vc.MoveBacking(ctx, b.Ref, folder)
}

// unmanage is the driver's unmanage: the backing, if any, stays but no
// longer names the volume.
func (d *vmdkDriver) unmanage(ctx context.Context, volumeID string) error {
	b, ok, err := d.findBacking(ctx, volumeID)
	if err != nil || !ok {
		return err
	}
	return d.vc.ReleaseBacking(ctx, b.Ref, newUUID())
}

// existingDisk is the driver's _get_existing: source-name
// "<vmdk path>@<VM inventory path>" names a disk of a VM.
func (d *vmdkDriver) existingDisk(ctx context.Context, existingRef map[string]any) (vcenter.Ref, vcenter.VMDisk, error) {
	src, _ := existingRef["source-name"].(string)
	if src == "" {
		return vcenter.Ref{}, vcenter.VMDisk{}, cinderError("InvalidInput", "Invalid input received: source-name cannot be empty.")
	}
	parts := strings.Split(src, "@")
	if len(parts) != 2 {
		return vcenter.Ref{}, vcenter.VMDisk{}, cinderError("InvalidInput", "Invalid input received: source-name format should be: 'vmdk_path@vm_inventory_path'.")
	}
	invalid := func() error {
		return &rpc.RemoteError{Class: "ManageExistingInvalidReference", Module: "cinder.exception",
			Message: fmt.Sprintf("Manage existing volume failed due to invalid backend reference {'source-name': '%s'}: %s does not exist.", src, src),
			Kwargs:  map[string]any{"existing_ref": existingRef, "reason": src + " does not exist."}}
	}
	vm, err := d.vc.FindByInventoryPath(ctx, parts[1])
	if errors.Is(err, vcenter.ErrNotFound) {
		return vcenter.Ref{}, vcenter.VMDisk{}, invalid()
	}
	if err != nil {
		return vcenter.Ref{}, vcenter.VMDisk{}, err
	}
	disk, err := d.vc.FindVMDisk(ctx, vm, parts[0])
	if errors.Is(err, vcenter.ErrNotFound) {
		return vcenter.Ref{}, vcenter.VMDisk{}, invalid()
	}
	if err == nil && disk.CapacityKB == 0 {
		// a device without its capacity (govmomi's simulator): the
		// descriptor has it
		disk.CapacityKB, err = d.descriptorCapacityKB(ctx, vm, disk.FileName)
	}
	return vm, disk, err
}

// descriptorCapacityKB reads a disk's capacity from its descriptor.
func (d *vmdkDriver) descriptorCapacityKB(ctx context.Context, vm vcenter.Ref, file string) (int64, error) {
	info, err := d.vc.GetVM(ctx, vm)
	if err != nil {
		return 0, err
	}
	dc, err := d.datacenterOf(ctx, info.Host)
	if err != nil {
		return 0, err
	}
	p, err := vcenter.ParseDatastorePath(file)
	if err != nil {
		return 0, err
	}
	return d.vc.VirtualDiskCapacityKB(ctx, dc, p)
}

// manageExistingGetSize is the driver's manage_existing_get_size: the
// disk's capacity rounded up to whole GiB.
func (d *vmdkDriver) manageExistingGetSize(ctx context.Context, existingRef map[string]any) (int64, error) {
	_, disk, err := d.existingDisk(ctx, existingRef)
	if err != nil {
		return 0, err
	}
	return (disk.CapacityKB + 1<<20 - 1) >> 20, nil
}

// manageExisting is the driver's manage_existing: the disk is detached
// from its VM, moved to [ds] volume-<id>/volume-<id>.vmdk on the
// datastore chosen for the volume and becomes the disk of the volume's
// new backing (the driver creates the backing disk-less, moves the disk
// into its directory and attaches it; here the backing is created with
// the disk, the same end state in fewer calls).
func (d *vmdkDriver) manageExisting(ctx context.Context, v volumeSpec, existingRef map[string]any) error {
	vm, disk, err := d.existingDisk(ctx, existingRef)
	if err != nil {
		return err
	}
	sizeGB := (disk.CapacityKB + 1<<20 - 1) >> 20
	d.ensureExtension(ctx)
	pl, err := d.selectPlacement(ctx, placementRequest{SizeGB: sizeGB, Profile: v.StorageProfile})
	if err != nil {
		return err
	}
	profileID, err := d.profileID(ctx, v)
	if err != nil {
		return err
	}
	folder, err := d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false)
	if err != nil {
		return err
	}
	src, err := vcenter.ParseDatastorePath(disk.FileName)
	if err != nil {
		return err
	}
	dir := vcenter.DatastorePath{Datastore: pl.Datastore.Name, Path: v.name()}
	dst := dir.Join(v.name() + ".vmdk")
	if err := d.vc.DetachVMDisk(ctx, vm, disk.Key); err != nil {
		return err
	}
	if err := d.vc.MakeDirectory(ctx, pl.Datacenter, dir); err != nil && !errors.Is(err, vcenter.ErrFileExists) {
		return err
	}
	if err := d.vc.MoveVirtualDisk(ctx, pl.Datacenter, src, dst); err != nil {
		return err
	}
	_, err = d.vc.CreateBacking(ctx, vcenter.BackingSpec{
		Name: v.name(), VolumeID: v.ID, SizeGB: sizeGB, DiskCapacityKB: disk.CapacityKB, DiskType: v.DiskType, AdapterType: v.AdapterType,
		Folder: folder, ResourcePool: pl.ResourcePool, Datastore: pl.Datastore.Name, DiskPath: dst.String(), ProfileID: profileID,
	})
	return err
}
