package vcenter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
)

// ErrNoRootDisk reports a VM without a virtual disk to snapshot (nova's
// NoRootDiskDefined).
var ErrNoRootDisk = errors.New("no root disk defined")

// leaseProgressPeriod is how often an export tells the NFC lease it is
// alive (nova's NFC_LEASE_UPDATE_PERIOD is 60 s; leases time out after 300).
const leaseProgressPeriod = 30 * time.Second

// ExportInfo describes the root disk an export streams.
type ExportInfo struct {
	// DiskPath is the root disk's file, e.g. "[ds] uuid/uuid.vmdk".
	DiskPath string
	// CapacityBytes is the virtual disk's size.
	CapacityBytes int64
	// AdapterType is the disk's controller as glance's vmware_adaptertype
	// names it: lsiLogic, lsiLogicsas, paraVirtual, busLogic or ide.
	AdapterType string
	// GuestID is the VM's guest OS identifier (glance's vmware_ostype).
	GuestID string
	// Converted tells that vCenter served the raw extent (vcsim does) and
	// the agent converted it to streamOptimized itself.
	Converted bool
}

// ExportRootDisk exports the root disk of vm as a streamOptimized VMDK, as
// nova's VMware driver does for a snapshot: the VM is snapshotted
// (CreateSnapshot_Task, no memory, no quiescing) so that the disk is
// consistent while the guest keeps running, the snapshot's disk state is
// exported through an HttpNfcLease, and fn gets the image as a stream. The
// lease is completed (aborted when fn fails) and the snapshot removed
// afterwards, also when ctx is done.
//
// nova exports a linked clone made from the snapshot with ExportVm;
// govmomi's simulator implements neither ExportVm nor linked-clone disks,
// but both vCenter and the simulator implement
// VirtualMachineSnapshot.ExportSnapshot, which exports the same disk state
// without the temporary VM. vCenter serves a streamOptimized VMDK on the
// lease; the simulator serves the disk's descriptor file, in which case
// the descriptor's flat extent is read through the datastore HTTP endpoint
// and converted to streamOptimized on the fly (ExportInfo.Converted).
func (s *Session) ExportRootDisk(ctx context.Context, vm Ref, snapshotName string, fn func(ExportInfo, io.Reader) error) error {
	op := fmt.Sprintf("export root disk of %s", vm)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	info, dc, err := s.exportInfo(ctx, c, vm)
	if err != nil {
		return wrapVMErr(op, err)
	}
	res, err := s.runTask(ctx, c, "create snapshot of "+vm.String(), func() (types.ManagedObjectReference, error) {
		r, err := methods.CreateSnapshot_Task(ctx, c, &types.CreateSnapshot_Task{
			This: vm.Reference(), Name: snapshotName, Description: "Taking Snapshot of the VM",
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		return wrapVMErr(op, err)
	}
	snap, ok := res.(types.ManagedObjectReference)
	if !ok {
		return wrapErr(op, fmt.Errorf("CreateSnapshot_Task returned %T, not a snapshot", res))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if rerr := s.RemoveSnapshot(cctx, refFrom(snap)); rerr != nil {
			s.logFor(ctx).Error().Err(rerr).Str("snapshot", snap.Value).Msg("removing the export's VM snapshot failed")
		}
	}()
	return s.exportSnapshot(ctx, c, op, snap, dc, info, fn)
}

// RemoveSnapshot deletes a VM snapshot, consolidating its disks.
func (s *Session) RemoveSnapshot(ctx context.Context, snap Ref) error {
	return s.vmTask(ctx, "remove snapshot "+snap.String(), func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.RemoveSnapshot_Task(ctx, c, &types.RemoveSnapshot_Task{This: snap.Reference(), Consolidate: types.NewBool(true)})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
}

// exportInfo reads the VM's root disk, its controller and guest, and the
// name of its datacenter.
func (s *Session) exportInfo(ctx context.Context, c *vim25.Client, vm Ref) (ExportInfo, string, error) {
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.hardware.device", "config.guestId"}, &m); err != nil {
		return ExportInfo{}, "", err
	}
	if m.Config == nil {
		return ExportInfo{}, "", fmt.Errorf("%s has no configuration", vm)
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	var disk *types.VirtualDisk
	for _, d := range disks {
		if vd := d.(*types.VirtualDisk); disk == nil || vd.Key < disk.Key {
			disk = vd
		}
	}
	if disk == nil {
		return ExportInfo{}, "", ErrNoRootDisk
	}
	backing, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return ExportInfo{}, "", fmt.Errorf("%w: the first disk has no file backing", ErrNoRootDisk)
	}
	info := ExportInfo{
		DiskPath:      backing.GetVirtualDeviceFileBackingInfo().FileName,
		CapacityBytes: disk.CapacityInBytes,
		AdapterType:   adapterType(devices.FindByKey(disk.ControllerKey)),
		GuestID:       m.Config.GuestId,
	}
	if info.CapacityBytes == 0 {
		info.CapacityBytes = disk.CapacityInKB * 1024
	}
	full, err := s.readVM(ctx, c, vm.Reference())
	if err != nil {
		return ExportInfo{}, "", err
	}
	var dc mo.Datacenter
	if full.Datacenter.IsZero() {
		return ExportInfo{}, "", fmt.Errorf("%s: datacenter not found", vm)
	}
	if err := s.retrieveOne(ctx, c, full.Datacenter, []string{"name"}, &dc); err != nil {
		return ExportInfo{}, "", err
	}
	return info, dc.Name, nil
}

// adapterType names a disk controller as nova's vm_util does.
func adapterType(ctrl types.BaseVirtualDevice) string {
	switch ctrl.(type) {
	case *types.VirtualLsiLogicSASController:
		return "lsiLogicsas"
	case *types.ParaVirtualSCSIController:
		return "paraVirtual"
	case *types.VirtualBusLogicController:
		return "busLogic"
	case *types.VirtualIDEController:
		return "ide"
	default:
		return DefaultAdapterType
	}
}

// descriptorAdapter is the descriptor's ddb.adapterType of a glance
// adapter type.
func descriptorAdapter(a string) string {
	switch a {
	case "busLogic":
		return "buslogic"
	case "ide":
		return "ide"
	default:
		return "lsilogic"
	}
}

// exportSnapshot exports the snapshot's disk through an NFC lease.
func (s *Session) exportSnapshot(ctx context.Context, c *vim25.Client, op string, snap types.ManagedObjectReference, dc string, info ExportInfo, fn func(ExportInfo, io.Reader) error) error {
	r, err := methods.ExportSnapshot(ctx, c, &types.ExportSnapshot{This: snap})
	if err != nil {
		return wrapVMErr(op, err)
	}
	lease := nfc.NewLease(c, r.Returnval)
	li, err := lease.Wait(ctx, nil)
	if err != nil {
		return wrapErr(op, fmt.Errorf("waiting for the export lease: %w", err))
	}
	var item *nfc.FileItem
	for i, d := range li.DeviceUrl {
		if d.Disk != nil && *d.Disk && i < len(li.Items) {
			item = &li.Items[i]
			break
		}
	}
	if item == nil {
		_ = lease.Abort(context.WithoutCancel(ctx), nil)
		return wrapErr(op, fmt.Errorf("%w: the export lease offers no disk", ErrNoRootDisk))
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // keep the lease alive while the stream flows
		defer close(done)
		t := time.NewTicker(leaseProgressPeriod)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if err := lease.Progress(ctx, 50); err != nil {
					s.logFor(ctx).Warn().Err(err).Msg("export lease progress update failed")
				}
			}
		}
	}()
	err = s.streamExport(ctx, c, dc, item, info, fn)
	close(stop)
	<-done
	cctx := context.WithoutCancel(ctx)
	if err != nil {
		if aerr := lease.Abort(cctx, nil); aerr != nil {
			s.logFor(ctx).Warn().Err(aerr).Msg("aborting the export lease failed")
		}
		return wrapErr(op, err)
	}
	if err := lease.Complete(cctx); err != nil {
		return wrapErr(op, fmt.Errorf("completing the export lease: %w", err))
	}
	return nil
}

// streamExport downloads the lease's disk and hands it to fn as a
// streamOptimized image.
func (s *Session) streamExport(ctx context.Context, c *vim25.Client, dc string, item *nfc.FileItem, info ExportInfo, fn func(ExportInfo, io.Reader) error) error {
	body, _, err := c.Download(ctx, item.URL, &soap.DefaultDownload)
	if err != nil {
		return fmt.Errorf("downloading %s: %w", item.Path, err)
	}
	defer func() { _ = body.Close() }()
	br := bufio.NewReaderSize(body, 64<<10)
	head, _ := br.Peek(21)
	switch {
	case bytes.HasPrefix(head, []byte("KDMV")):
		return fn(info, br)
	case bytes.HasPrefix(head, []byte("# Disk DescriptorFile")):
		desc, err := io.ReadAll(io.LimitReader(br, descriptorLimit+1))
		if err != nil {
			return fmt.Errorf("reading the exported descriptor: %w", err)
		}
		if len(desc) > descriptorLimit {
			return fmt.Errorf("%w: exported descriptor larger than %d bytes", ErrInvalidImage, descriptorLimit)
		}
		return s.convertFlatExport(ctx, dc, desc, info, fn)
	default:
		return fmt.Errorf("%w: the export lease served neither a VMDK nor a descriptor (%q)", ErrInvalidImage, head)
	}
}

// extentLine matches a descriptor's extent: access, size in sectors, type
// and file.
var extentLine = regexp.MustCompile(`(?m)^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"`)

// convertFlatExport streams the flat extent the descriptor names, as a
// streamOptimized image.
func (s *Session) convertFlatExport(ctx context.Context, dc string, desc []byte, info ExportInfo, fn func(ExportInfo, io.Reader) error) error {
	m := extentLine.FindSubmatch(desc)
	if m == nil {
		return fmt.Errorf("%w: exported descriptor has no extent", ErrInvalidImage)
	}
	switch string(m[3]) {
	case "FLAT", "VMFS":
	default:
		return fmt.Errorf("%w: exported descriptor's extent is %s, not flat", ErrUnsupportedDiskKind, m[3])
	}
	sectors, _ := strconv.ParseInt(string(m[2]), 10, 64)
	if c := sectors * vmdk.SectorSize; c > 0 {
		info.CapacityBytes = c
	}
	disk, err := ParseDatastorePath(info.DiskPath)
	if err != nil {
		return err
	}
	flat := DatastorePath{Datastore: disk.Datastore, Path: path.Join(path.Dir(disk.Path), path.Base(string(m[4])))}
	info.Converted = true
	err = s.convertFlat(ctx, dc, flat, disk, info, fn)
	conv := DatastorePath{Datastore: disk.Datastore, Path: strings.TrimSuffix(disk.Path, ".vmdk") + "-flat.vmdk"}
	if errors.Is(err, ErrNotFound) && conv != flat {
		// The simulator copies a disk's flat file to <name>-flat.vmdk but
		// leaves the copied descriptor naming the source's extent.
		err = s.convertFlat(ctx, dc, conv, disk, info, fn)
	}
	return err
}

// convertFlat streams the flat extent flat of disk as a streamOptimized
// image to fn.
func (s *Session) convertFlat(ctx context.Context, dc string, flat, disk DatastorePath, info ExportInfo, fn func(ExportInfo, io.Reader) error) error {
	return s.streamDatastoreFile(ctx, dc, flat, func(r io.Reader) error {
		pr, pw := io.Pipe()
		werr := make(chan error, 1)
		go func() {
			_, err := vmdk.WriteStreamOptimized(ctx, pw, r, info.CapacityBytes, vmdk.StreamOptions{
				AdapterType: descriptorAdapter(info.AdapterType), ExtentName: path.Base(disk.Path),
			})
			pw.CloseWithError(err)
			werr <- err
		}()
		err := fn(info, pr)
		pr.CloseWithError(errExportEnded)
		if wErr := <-werr; err == nil && wErr != nil && !errors.Is(wErr, errExportEnded) {
			err = fmt.Errorf("converting %s to streamOptimized: %w", flat, wErr)
		}
		return err
	})
}

// errExportEnded stops a conversion whose reader went away.
var errExportEnded = errors.New("export reader closed")

// streamDatastoreFile reads the datastore file p through the datastore HTTP
// endpoint and hands its content to fn as a stream.
func (s *Session) streamDatastoreFile(ctx context.Context, dc string, p DatastorePath, fn func(io.Reader) error) error {
	op := fmt.Sprintf("read %s", p)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.datastoreURL(dc, p).String(), nil)
	if err != nil {
		return wrapErr(op, err)
	}
	return s.doHTTP(ctx, op, req, func(res *http.Response) error {
		switch res.StatusCode {
		case http.StatusOK:
			return fn(res.Body)
		case http.StatusNotFound:
			return fmt.Errorf("GET: %s: %w", res.Status, ErrNotFound)
		default:
			return fmt.Errorf("GET: %s", res.Status)
		}
	})
}
