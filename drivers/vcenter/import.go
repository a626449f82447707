package vcenter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// importVMPrefix names the transient VMs that disk imports create, as
// nova's VMware driver names its own (constants.IMAGE_VM_PREFIX), so that
// an operator recognises one left behind by a crash.
const importVMPrefix = "OSTACK_IMG_"

// streamVMDKType is the content type of a streamOptimized disk sent to an
// import lease (what ovftool and govmomi send).
const streamVMDKType = "application/x-vnd.vmware-streamVmdk"

// importTarget is where an import's transient VM is created: a resource
// pool whose hosts mount the datastore, and the datacenter's VM folder.
type importTarget struct {
	pool, folder types.ManagedObjectReference
}

// diskImport describes one streamOptimized disk to import.
type diskImport struct {
	// dc is the datacenter's inventory path, target where the transient VM goes.
	dc     string
	target importTarget
	// vmx is the transient VM's configuration file, in an existing
	// directory other than disk's; disk is the disk to create, in an
	// existing directory of its own.
	vmx, disk DatastorePath
	// capacity is the disk's size in bytes, from the image's header.
	capacity int64
	// body is the streamOptimized image, size its length (0: unknown).
	body io.Reader
	size int64
	// check, if set, is asked after the upload whether the image sent was
	// sound; an error aborts the import.
	check func() error
}

// importDisk creates the disk in.disk from the streamOptimized image
// in.body the way vCenter imports one, as nova's VMware driver does for
// streamOptimized images (images.fetch_image_stream_optimized): a transient
// VM with one thin disk of the image's capacity is created by ImportVApp,
// the image is sent as it is, compressed, to the HttpNfcLease's disk URL
// (ESX expands it into the disk), the lease is completed and the VM
// unregistered, leaving its files (the disk among them) on the datastore.
// Nothing is converted or expanded on this side.
//
// A failed import aborts the lease (vCenter then removes the VM) and
// unregisters the VM if it is still there; its files stay for the caller
// to delete with their directory.
//
// Cost: 4-5 SOAP round trips (ImportVApp, 1-2 RetrievePropertiesEx until
// the lease is ready, HttpNfcLeaseComplete, UnregisterVM) and one HTTP
// POST of the image; one HttpNfcLeaseProgress per leaseProgressPeriod of
// upload.
func (s *Session) importDisk(ctx context.Context, in diskImport) error {
	op := fmt.Sprintf("import disk %s", in.disk)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	// As nova's _build_shadow_vm_config_spec: a VM that is never powered
	// on, with an LSI Logic controller and the disk to fill.
	unit := int32(0)
	spec := &types.VirtualMachineImportSpec{ConfigSpec: types.VirtualMachineConfigSpec{
		Name:     importVMPrefix + randomUUID(),
		GuestId:  "otherGuest",
		NumCPUs:  1,
		MemoryMB: 128,
		Files:    &types.VirtualMachineFileInfo{VmPathName: in.vmx.String()},
		DeviceChange: []types.BaseVirtualDeviceConfigSpec{
			&types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationAdd,
				Device: &types.VirtualLsiLogicController{VirtualSCSIController: types.VirtualSCSIController{
					VirtualController: types.VirtualController{VirtualDevice: types.VirtualDevice{Key: -100}},
					SharedBus:         types.VirtualSCSISharingNoSharing,
				}},
			},
			&types.VirtualDeviceConfigSpec{
				Operation:     types.VirtualDeviceConfigSpecOperationAdd,
				FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
				Device: &types.VirtualDisk{
					VirtualDevice: types.VirtualDevice{
						Key: -101, ControllerKey: -100, UnitNumber: &unit,
						Backing: &types.VirtualDiskFlatVer2BackingInfo{
							VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: in.disk.String()},
							DiskMode:                     string(types.VirtualDiskModePersistent),
							ThinProvisioned:              types.NewBool(true),
						},
					},
					CapacityInKB:    (in.capacity + 1023) / 1024,
					CapacityInBytes: in.capacity,
				},
			},
		},
	}}
	folder := in.target.folder
	res, err := methods.ImportVApp(ctx, c, &types.ImportVApp{This: in.target.pool, Spec: spec, Folder: &folder})
	if err != nil {
		return wrapErr(op, fmt.Errorf("ImportVApp: %w", err))
	}
	lease := nfc.NewLease(c, res.Returnval)
	info, err := s.waitLease(ctx, c, lease.Reference())
	if err != nil {
		s.abortImport(ctx, c, lease, info, err)
		return wrapErr(op, err)
	}
	err = s.uploadToLease(ctx, c, lease, info, in.body, in.size)
	if err == nil && in.check != nil {
		err = in.check()
	}
	if err != nil {
		s.abortImport(ctx, c, lease, info, err)
		return wrapErr(op, err)
	}
	cctx := context.WithoutCancel(ctx)
	if err := lease.Complete(cctx); err != nil {
		s.abortImport(ctx, c, lease, info, err)
		return wrapErr(op, fmt.Errorf("completing the import lease: %w", err))
	}
	if _, err := methods.UnregisterVM(cctx, c, &types.UnregisterVM{This: info.Entity}); err != nil && !isGone(err) {
		return wrapErr(op, fmt.Errorf("unregistering the import VM %s: %w", info.Entity.Value, err))
	}
	return nil
}

// leasePoll are the waits before each look at a lease that is still
// initializing (the last repeats): vCenter readies an import lease once
// the VM exists, which the first short wait usually covers.
var leasePoll = [...]time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond, time.Second}

// waitLease reads the lease until it leaves the initializing state and
// returns its info (1 RetrievePropertiesEx per look; a property collector
// filter would cost 3 round trips for a lease that is usually ready at the
// first look). A lease in error fails with its fault.
func (s *Session) waitLease(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) (*types.HttpNfcLeaseInfo, error) {
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the import lease: %w", ctx.Err())
		case <-time.After(leasePoll[min(i, len(leasePoll)-1)]):
		}
		var l mo.HttpNfcLease
		if err := s.retrieveOne(ctx, c, refFrom(ref), []string{"state", "info", "error"}, &l); err != nil {
			return nil, fmt.Errorf("reading the import lease: %w", err)
		}
		switch l.State {
		case types.HttpNfcLeaseStateReady:
			if l.Info == nil {
				return nil, errors.New("the import lease is ready without info")
			}
			return l.Info, nil
		case types.HttpNfcLeaseStateError:
			if l.Error != nil {
				return l.Info, fmt.Errorf("the import lease failed: %s (%T)", l.Error.LocalizedMessage, l.Error.Fault)
			}
			return l.Info, errors.New("the import lease failed")
		case types.HttpNfcLeaseStateDone:
			return l.Info, errors.New("the import lease ended before the upload")
		}
	}
}

// uploadToLease sends the image to the lease's (first) disk URL, telling
// the lease every leaseProgressPeriod that the transfer is alive.
func (s *Session) uploadToLease(ctx context.Context, c *vim25.Client, lease *nfc.Lease, info *types.HttpNfcLeaseInfo, body io.Reader, size int64) error {
	var disk *types.HttpNfcLeaseDeviceUrl
	for i, d := range info.DeviceUrl {
		if d.Disk != nil && *d.Disk {
			disk = &info.DeviceUrl[i]
			break
		}
	}
	if disk == nil {
		return errors.New("the import lease offers no disk URL")
	}
	u, err := c.ParseURL(disk.Url) // an ESX host answers "*" for its own name
	if err != nil {
		return fmt.Errorf("import lease disk URL %q: %w", disk.Url, err)
	}
	stop := keepLeaseAlive(ctx, s, lease)
	defer stop()
	rc := io.NopCloser(body)
	if size == 0 {
		size = -1 // unknown: chunked
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), rc)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", streamVMDKType)
	return s.doHTTP(ctx, "upload to the import lease", req, func(res *http.Response) error {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		switch res.StatusCode {
		case http.StatusOK, http.StatusCreated, http.StatusNoContent:
			return nil
		default:
			return fmt.Errorf("POST %s: %s %s", u.Path, res.Status, msg)
		}
	})
}

// keepLeaseAlive reports progress on the lease every leaseProgressPeriod
// until the returned stop is called (vCenter times out a lease that hears
// nothing for 5 minutes).
func keepLeaseAlive(ctx context.Context, s *Session, lease *nfc.Lease) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(leaseProgressPeriod)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if err := lease.Progress(ctx, 50); err != nil {
					s.logFor(ctx).Warn().Err(err).Msg("lease progress update failed")
				}
			}
		}
	}()
	return func() { close(quit); <-done }
}

// abortImport aborts the lease after a failure and unregisters the import's
// VM if it outlived the abort (vCenter removes it; the simulator does not).
// Best effort: the failure being reported is cause.
func (s *Session) abortImport(ctx context.Context, c *vim25.Client, lease *nfc.Lease, info *types.HttpNfcLeaseInfo, cause error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	log := s.logFor(ctx)
	msg := cause.Error()
	if err := lease.Abort(cctx, &types.LocalizedMethodFault{Fault: &types.SystemError{Reason: msg}, LocalizedMessage: msg}); err != nil && !isGone(err) {
		log.Warn().Err(err).Msg("aborting the import lease failed")
	}
	if info == nil || info.Entity.Value == "" {
		return
	}
	if _, err := methods.UnregisterVM(cctx, c, &types.UnregisterVM{This: info.Entity}); err != nil && !isGone(err) {
		log.Warn().Err(err).Str("vm", info.Entity.Value).Msg("unregistering the failed import's VM failed")
	}
}

// importTargetFor finds where to import onto datastore ds of datacenter dc:
// the datacenter's VM folder and the resource pool of the first compute
// resource (by reference) that mounts ds.
//
// Cost: 1 SOAP round trip (RetrievePropertiesEx from the datacenter through
// its host folders and datastores), plus 1 the first time the Session
// resolves dc.
func (s *Session) importTargetFor(ctx context.Context, dc, ds string) (importTarget, error) {
	op := fmt.Sprintf("find where to import onto %s", ds)
	c, dcRef, err := s.fileOp(ctx, op, dc)
	if err != nil {
		return importTarget{}, err
	}
	no := types.NewBool(false)
	children := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "children"}, Type: "Folder", Path: "childEntity", Skip: no,
		SelectSet: []types.BaseSelectionSpec{&types.SelectionSpec{Name: "children"}},
	}
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This: c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{{
			ObjectSet: []types.ObjectSpec{{Obj: dcRef, SelectSet: []types.BaseSelectionSpec{
				&types.TraversalSpec{Type: "Datacenter", Path: "hostFolder", Skip: no, SelectSet: []types.BaseSelectionSpec{children}},
				&types.TraversalSpec{Type: "Datacenter", Path: "datastore", Skip: no},
				children,
			}}},
			PropSet: []types.PropertySpec{
				{Type: "Datacenter", PathSet: []string{"vmFolder"}},
				{Type: "Datastore", PathSet: []string{"name"}},
				{Type: "ComputeResource", PathSet: []string{"resourcePool", "datastore"}},
				{Type: "ClusterComputeResource", PathSet: []string{"resourcePool", "datastore"}},
			},
		}},
	})
	if err != nil {
		s.forgetDatacenter(dc, dcRef, err)
		return importTarget{}, wrapErr(op, err)
	}
	var t importTarget
	var dsRef types.ManagedObjectReference
	type compute struct {
		ref, pool  types.ManagedObjectReference
		datastores []types.ManagedObjectReference
	}
	var computes []compute
	for _, o := range objects {
		switch o.Obj.Type {
		case "Datacenter":
			for _, p := range o.PropSet {
				if r, ok := p.Val.(types.ManagedObjectReference); ok && p.Name == "vmFolder" {
					t.folder = r
				}
			}
		case "Datastore":
			for _, p := range o.PropSet {
				if name, ok := p.Val.(string); ok && p.Name == "name" && name == ds {
					dsRef = o.Obj
				}
			}
		case "ComputeResource", "ClusterComputeResource":
			cr := compute{ref: o.Obj}
			for _, p := range o.PropSet {
				switch v := p.Val.(type) {
				case types.ManagedObjectReference:
					cr.pool = v
				case types.ArrayOfManagedObjectReference:
					cr.datastores = v.ManagedObjectReference
				}
			}
			computes = append(computes, cr)
		}
	}
	if t.folder.Value == "" {
		return importTarget{}, wrapErr(op, fmt.Errorf("datacenter %s has no VM folder: %w", dc, ErrNotFound))
	}
	if dsRef.Value == "" {
		return importTarget{}, wrapErr(op, fmt.Errorf("datastore %s in %s: %w", ds, dc, ErrNotFound))
	}
	sort.Slice(computes, func(i, j int) bool { return computes[i].ref.Value < computes[j].ref.Value })
	for _, cr := range computes {
		for _, d := range cr.datastores {
			if d == dsRef && cr.pool.Value != "" {
				t.pool = cr.pool
				return t, nil
			}
		}
	}
	return importTarget{}, wrapErr(op, fmt.Errorf("no cluster or host of %s mounts datastore %s: %w", dc, ds, ErrNotFound))
}
