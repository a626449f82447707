package vcenter

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"
)

// ErrUnsupportedDiskKind reports a disk image format this package cannot
// (yet) put on a datastore.
var ErrUnsupportedDiskKind = errors.New("vcenter: unsupported disk kind")

// DiskKind is the on-disk format of a VMDK image.
type DiskKind string

// Disk kinds, named as vSphere and the vmware_disktype image property name
// them.
const (
	// DiskKindPreallocated is a flat (raw) extent, stored eager-zeroed or
	// lazily zeroed thick: the image bytes are the disk bytes.
	DiskKindPreallocated DiskKind = "preallocated"
	// DiskKindThin is a flat extent stored thin-provisioned.
	DiskKindThin DiskKind = "thin"
	// DiskKindSparse is a monolithic sparse VMDK (hosted format); it must
	// be converted by CopyVirtualDisk before an ESXi host can use it.
	DiskKindSparse DiskKind = "sparse"
	// DiskKindStreamOptimized is the compressed format of OVAs; it can only
	// be imported through an NFC lease (ImportVApp), not copied.
	DiskKindStreamOptimized DiskKind = "streamOptimized"
)

// DefaultAdapterType is the disk adapter written into descriptors of disks
// this package creates.
const DefaultAdapterType = "lsiLogic"

// descriptorLimit bounds descriptor reads over HTTP.
const descriptorLimit = 64 << 10

// CreateVirtualDisk creates an empty virtual disk p (descriptor plus extent)
// of capacityKB kibibytes with the given kind (preallocated or thin) and
// DefaultAdapterType. The directory must exist. An existing p fails with an
// error wrapping ErrFileExists; a missing directory with ErrNotFound.
//
// Cost: 1 round trip (CreateVirtualDisk_Task) plus the task wait (usually
// 1-2 RetrievePropertiesEx).
func (s *Session) CreateVirtualDisk(ctx context.Context, dc string, p DatastorePath, capacityKB int64, kind DiskKind) error {
	op := fmt.Sprintf("create virtual disk %s", p)
	var diskType types.VirtualDiskType
	switch kind {
	case DiskKindPreallocated:
		diskType = types.VirtualDiskTypePreallocated
	case DiskKindThin:
		diskType = types.VirtualDiskTypeThin
	default:
		return fmt.Errorf("vcenter: %s: %w: %q", op, ErrUnsupportedDiskKind, kind)
	}
	if capacityKB <= 0 {
		return wrapErr(op, fmt.Errorf("capacity must be positive, got %d KiB", capacityKB))
	}
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.CreateVirtualDisk_Task(ctx, c, &types.CreateVirtualDisk_Task{
			This:       *c.ServiceContent.VirtualDiskManager,
			Name:       p.String(),
			Datacenter: &dcRef,
			Spec: &types.FileBackedVirtualDiskSpec{
				VirtualDiskSpec: types.VirtualDiskSpec{
					DiskType:    string(diskType),
					AdapterType: DefaultAdapterType,
				},
				CapacityKb: capacityKB,
			},
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// CopyVirtualDisk copies the virtual disk src (descriptor and extents) to
// dst in datacenter dc. With thin the copy is converted to thin
// provisioning; otherwise it keeps src's format. An existing dst fails with
// ErrFileExists, a missing src with ErrNotFound.
//
// Cost: 1 round trip (CopyVirtualDisk_Task) plus the task wait.
//
// Simulator: vcsim applies a destination spec by rewriting each copied file
// as a descriptor, which destroys the flat extent's data; thin is correct
// against vCenter but not meaningful on vcsim.
func (s *Session) CopyVirtualDisk(ctx context.Context, dc string, src, dst DatastorePath, thin bool) error {
	op := fmt.Sprintf("copy virtual disk %s to %s", src, dst)
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		req := &types.CopyVirtualDisk_Task{
			This:             *c.ServiceContent.VirtualDiskManager,
			SourceName:       src.String(),
			SourceDatacenter: &dcRef,
			DestName:         dst.String(),
			DestDatacenter:   &dcRef, // vcsim requires it; vCenter accepts it
			Force:            types.NewBool(false),
		}
		if thin {
			req.DestSpec = &types.VirtualDiskSpec{
				DiskType:    string(types.VirtualDiskTypeThin),
				AdapterType: DefaultAdapterType,
			}
		}
		res, err := methods.CopyVirtualDisk_Task(ctx, c, req)
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// ExtendVirtualDisk grows the virtual disk p to newCapacityKB kibibytes
// (without eager zeroing). Shrinking fails (vSphere fault FileFault); a
// missing disk fails with ErrNotFound.
//
// Cost: 1 round trip (ExtendVirtualDisk_Task) plus the task wait.
func (s *Session) ExtendVirtualDisk(ctx context.Context, dc string, p DatastorePath, newCapacityKB int64) error {
	op := fmt.Sprintf("extend virtual disk %s to %d KiB", p, newCapacityKB)
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.ExtendVirtualDisk_Task(ctx, c, &types.ExtendVirtualDisk_Task{
			This:          *c.ServiceContent.VirtualDiskManager,
			Name:          p.String(),
			Datacenter:    &dcRef,
			NewCapacityKb: newCapacityKB,
			EagerZero:     types.NewBool(false),
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// DeleteVirtualDisk deletes the virtual disk p with its extents. A missing
// disk counts as deleted.
//
// Cost: 1 round trip (DeleteVirtualDisk_Task) plus the task wait.
func (s *Session) DeleteVirtualDisk(ctx context.Context, dc string, p DatastorePath) error {
	op := fmt.Sprintf("delete virtual disk %s", p)
	return s.fileTask(ctx, op, dc, &types.FileNotFound{}, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.DeleteVirtualDisk_Task(ctx, c, &types.DeleteVirtualDisk_Task{
			This:       *c.ServiceContent.VirtualDiskManager,
			Name:       p.String(),
			Datacenter: &dcRef,
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// VirtualDiskCapacityKB returns the capacity of the virtual disk p, read
// from its descriptor. It works for disks whose descriptor is a separate
// text file (flat, thin, and disks created by vSphere), not for monolithic
// sparse or streamOptimized files. It sends no SOAP call: one HTTP GET.
func (s *Session) VirtualDiskCapacityKB(ctx context.Context, dc string, p DatastorePath) (int64, error) {
	data, err := s.Download(ctx, dc, p, descriptorLimit)
	if err != nil {
		return 0, err
	}
	if !bytes.Contains(data, []byte("createType")) {
		return 0, fmt.Errorf("vcenter: read disk descriptor %s: %w: not a text descriptor", p, ErrUnsupportedDiskKind)
	}
	desc, err := vmdk.ParseDescriptor(bytes.NewReader(data))
	if err != nil {
		return 0, fmt.Errorf("vcenter: read disk descriptor %s: %w", p, err)
	}
	return desc.Capacity() / 1024, nil
}

// CopyToInstance copies the (cached) virtual disk cached into instanceDir,
// creating that directory if needed, as <instanceDir base name>.vmdk, and
// grows the copy to rootGB gibibytes when that is larger than the image's
// capacity (a smaller or zero rootGB keeps the image's size). It returns
// the copy's path. The copy keeps the cached disk's format.
//
// Cost: MakeDirectory (1), CopyVirtualDisk (1 + wait), one HTTP GET of the
// descriptor, and ExtendVirtualDisk (1 + wait) only when growing: 3 SOAP
// round trips against vcsim without growing, 5 with.
func (s *Session) CopyToInstance(ctx context.Context, dc string, cached, instanceDir DatastorePath, rootGB int64) (DatastorePath, error) {
	name := instanceDir.Base()
	if name == "" || name == "." || name == "/" {
		return DatastorePath{}, wrapErr("copy disk to instance", fmt.Errorf("instance directory %s has no name", instanceDir))
	}
	dst := instanceDir.Join(name + ".vmdk")
	if err := s.MakeDirectory(ctx, dc, instanceDir); err != nil {
		return DatastorePath{}, err
	}
	if err := s.CopyVirtualDisk(ctx, dc, cached, dst, false); err != nil {
		return DatastorePath{}, err
	}
	if rootGB <= 0 {
		return dst, nil
	}
	capKB, err := s.VirtualDiskCapacityKB(ctx, dc, dst)
	if err != nil {
		return DatastorePath{}, err
	}
	if want := rootGB << 20; want > capKB {
		if err := s.ExtendVirtualDisk(ctx, dc, dst, want); err != nil {
			return DatastorePath{}, err
		}
	}
	return dst, nil
}
