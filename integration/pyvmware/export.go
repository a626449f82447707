package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
)

// exportPrefix is where the device URLs of ExportVm's leases point.
const exportPrefix = "/export/"

// exports gives the simulator VirtualMachine.ExportVm, which it lacks:
// nova's VMware driver snapshots a server by exporting a linked clone of
// its VM (and cinder's VMDK driver uploads a volume by exporting its
// backing). For ExportVm and CloneVM_Task the VM is wrapped in a
// vmExtras for the one call (see handler; the simulator's own code keeps
// seeing its *VirtualMachine everywhere else).
//
// ExportVm answers an HttpNfcLease, ready at once, with one device URL per
// disk; a GET on it streams the disk as vCenter does, as a streamOptimized
// VMDK made from the disk's flat extent. The simulator's linked clones get
// a new, empty disk: for a VM cloned from a snapshot with a child disk
// backing (what nova does), the export reads the parent's disks, whose
// data is what a linked clone reads (the simulator makes no delta disks,
// so the parent's files hold the snapshot's data).
type exports struct {
	mu sync.Mutex
	// leases: lease id -> device URL target -> the disk it serves.
	leases map[string]map[string]exportDisk
	// linked: clone name -> the disk files of its parent, by disk order.
	linked map[string][]exportDisk
	// base is the server's URL (scheme and host) for device URLs.
	base string
}

// exportDisk is one disk an export serves.
type exportDisk struct {
	descriptor string // the descriptor's file on the local file system
	capacity   int64  // bytes
	adapter    string // ddb.adapterType
}

func newExports() *exports {
	return &exports{leases: map[string]map[string]exportDisk{}, linked: map[string][]exportDisk{}}
}

// handler is the simulator's Registry.Handler, called before every
// method. The simulator calls a method on the calling session's object for
// the moref when the session's registry has one, so the VM's wrapper is
// put there for the one call (the wrapper's method takes it out again;
// meanwhile it shows the same VM to the session).
func (ex *exports) handler(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch m.Name {
	case "ExportVm", "CloneVM_Task", "ReconfigVM_Task":
		if vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine); ok && ctx.Session != nil {
			w := &vmExtras{VirtualMachine: vm, ex: ex}
			ctx.Session.Registry.Put(w)
			return w, nil
		}
	}
	return nil, nil
}

// done takes the wrapper out of the session's registry again.
func (vm *vmExtras) done(ctx *simulator.Context) {
	if ctx.Session != nil {
		ctx.Session.Registry.Remove(ctx, vm.Self)
	}
}

// vmExtras is a VM for one call of a method the simulator lacks or gets
// wrong for nova.
type vmExtras struct {
	*simulator.VirtualMachine
	ex *exports
}

// CloneVMTask remembers, for a linked clone from a snapshot, the parent's
// disks, then clones as the simulator does.
func (vm *vmExtras) CloneVMTask(ctx *simulator.Context, req *types.CloneVM_Task) soap.HasFault {
	vm.done(ctx)
	if req.Spec.Snapshot != nil && req.Spec.Location.DiskMoveType == string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking) {
		devices := vm.Config.Hardware.Device
		if snap, ok := ctx.Map.Get(*req.Spec.Snapshot).(*simulator.VirtualMachineSnapshot); ok && snap.Config.Hardware.Device != nil {
			devices = snap.Config.Hardware.Device
		}
		if disks := vm.disks(ctx, devices); len(disks) > 0 {
			vm.ex.mu.Lock()
			vm.ex.linked[req.Name] = disks
			vm.ex.mu.Unlock()
		}
	}
	return vm.VirtualMachine.CloneVMTask(ctx, req)
}

// ReconfigVMTask gives a disk added with an existing file and no
// capacity (what nova's attach_disk_to_vm sends when it re-attaches a VM's
// own disk: the revert of a resize, unrescue) the capacity of its file, as
// vCenter does; the simulator keeps 0, and the driver's next snapshot
// divides by it (oslo.vmware's read progress: ZeroDivisionError).
func (vm *vmExtras) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	vm.done(ctx)
	for _, dc := range req.Spec.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		disk, ok := spec.Device.(*types.VirtualDisk)
		if !ok || spec.Operation != types.VirtualDeviceConfigSpecOperationAdd || spec.FileOperation != "" ||
			disk.CapacityInKB != 0 || disk.CapacityInBytes != 0 {
			continue
		}
		b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		var file object.DatastorePath
		if !file.FromString(b.GetVirtualDeviceFileBackingInfo().FileName) || file.Path == "" {
			continue
		}
		if dir := vm.datastoreDir(ctx, file.Datastore); dir != "" {
			if n := descriptorCapacity(path.Join(dir, file.Path)); n > 0 {
				disk.CapacityInBytes, disk.CapacityInKB = n, n/1024
			}
		}
	}
	return vm.VirtualMachine.ReconfigVMTask(ctx, req)
}

// extentSectors is the size of an extent in a VMDK descriptor.
var extentSectors = regexp.MustCompile(`(?m)^\s*RW\s+(\d+)\s`)

// descriptorCapacity is the disk size a VMDK descriptor gives (the sum of
// its extents), or 0.
func descriptorCapacity(descriptor string) int64 {
	b, err := os.ReadFile(descriptor)
	if err != nil || len(b) > 64<<10 {
		return 0
	}
	var sectors int64
	for _, m := range extentSectors.FindAllSubmatch(b, -1) {
		n, err := strconv.ParseInt(string(m[1]), 10, 64)
		if err != nil {
			return 0
		}
		sectors += n
	}
	return sectors * vmdk.SectorSize
}

// ExportVm gives a lease whose device URLs serve the VM's disks. As on
// vCenter, the VM must not be powered on.
func (vm *vmExtras) ExportVm(ctx *simulator.Context, req *types.ExportVm) soap.HasFault {
	vm.done(ctx)
	if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		return &methods.ExportVmBody{Fault_: simulator.Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState,
		})}
	}
	disks := vm.disks(ctx, vm.Config.Hardware.Device)
	vm.ex.mu.Lock()
	if parent, ok := vm.ex.linked[vm.Name]; ok && len(parent) == len(disks) {
		for i := range disks {
			disks[i].descriptor = parent[i].descriptor
		}
	}
	base := vm.ex.base
	vm.ex.mu.Unlock()

	lease := &simulator.HttpNfcLease{HttpNfcLease: mo.HttpNfcLease{
		State:              types.HttpNfcLeaseStateReady,
		InitializeProgress: 100,
		Mode:               string(types.HttpNfcLeaseModePushOrGet),
		Capabilities:       types.HttpNfcLeaseCapabilities{PullModeSupported: true},
	}}
	lease.Self.Type = "HttpNfcLease"
	ctx.Session.Put(&exportLease{HttpNfcLease: lease, ex: vm.ex})
	id := lease.Self.Value
	served := map[string]exportDisk{}
	info := &types.HttpNfcLeaseInfo{Lease: lease.Self, Entity: vm.Self, LeaseTimeout: 300}
	for i, d := range disks {
		name := fmt.Sprintf("disk-%d.vmdk", i)
		served[name] = d
		var size int64
		if st, err := os.Stat(flatOf(d.descriptor)); err == nil {
			size = st.Size()
		}
		info.DeviceUrl = append(info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:       fmt.Sprintf("/%s/VirtualLsiLogicController0:%d", vm.Self.Value, i),
			ImportKey: fmt.Sprintf("/%s/VirtualLsiLogicController0:%d", vm.Name, i),
			Url:       base + exportPrefix + url.PathEscape(id) + "/" + name,
			Disk:      types.NewBool(true),
			TargetId:  name,
			FileSize:  size,
		})
		info.TotalDiskCapacityInKB += d.capacity / 1024
	}
	lease.Info = info
	vm.ex.mu.Lock()
	vm.ex.leases[id] = served
	vm.ex.mu.Unlock()
	return &methods.ExportVmBody{Res: &types.ExportVmResponse{Returnval: lease.Self}}
}

// disks lists the virtual disks among devices with their files.
func (vm *vmExtras) disks(ctx *simulator.Context, devices []types.BaseVirtualDevice) []exportDisk {
	list := object.VirtualDeviceList(devices)
	var out []exportDisk
	for _, d := range list.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		var file object.DatastorePath
		if !file.FromString(b.GetVirtualDeviceFileBackingInfo().FileName) {
			continue
		}
		dir := vm.datastoreDir(ctx, file.Datastore)
		if dir == "" {
			continue
		}
		capacity := disk.CapacityInBytes
		if capacity == 0 {
			capacity = disk.CapacityInKB * 1024
		}
		adapter := "lsilogic"
		switch list.FindByKey(disk.ControllerKey).(type) {
		case *types.VirtualIDEController:
			adapter = "ide"
		case *types.VirtualBusLogicController:
			adapter = "buslogic"
		}
		out = append(out, exportDisk{descriptor: path.Join(dir, file.Path), capacity: capacity, adapter: adapter})
	}
	return out
}

// datastoreDir is where the simulator keeps the files of the VM's
// datastore name.
func (vm *vmExtras) datastoreDir(ctx *simulator.Context, name string) string {
	if vm.Runtime.Host == nil {
		return ""
	}
	host, ok := ctx.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem)
	if !ok {
		return ""
	}
	if ds, ok := ctx.Map.FindByName(name, host.Datastore).(*simulator.Datastore); ok {
		return ds.Summary.Url
	}
	return ""
}

// extentLine is a flat extent in a VMDK descriptor: RW 2048 FLAT "x-flat.vmdk" 0
var extentLine = regexp.MustCompile(`(?m)^\s*RW\s+\d+\s+(?:FLAT|VMFS)\s+"([^"]+)"`)

// flatOf is the flat extent file of a descriptor (the simulator writes
// <name>-flat.vmdk next to <name>.vmdk).
func flatOf(descriptor string) string {
	if b, err := os.ReadFile(descriptor); err == nil && len(b) < 64<<10 {
		if m := extentLine.FindSubmatch(b); m != nil {
			return path.Join(path.Dir(descriptor), path.Base(string(m[1])))
		}
	}
	return simulator.VirtualDiskBackingFileName(descriptor)
}

// serve answers GET exportPrefix<lease>/<disk>: the disk as a
// streamOptimized VMDK (the rest of a flat file shorter than the disk, or
// a missing one, reads as zeros).
func (ex *exports) serve(w http.ResponseWriter, r *http.Request) {
	id, name, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, exportPrefix), "/")
	ex.mu.Lock()
	d, ok := ex.leases[id][name]
	ex.mu.Unlock()
	if !ok || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	var src io.Reader = strings.NewReader("") // no flat file: all zeros
	if f, err := os.Open(flatOf(d.descriptor)); err == nil {
		defer f.Close()
		src = f
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	capacity := d.capacity
	if capacity <= 0 {
		capacity = vmdk.SectorSize
	}
	if _, err := vmdk.WriteStreamOptimized(r.Context(), w, src, capacity, vmdk.StreamOptions{
		AdapterType: d.adapter, ExtentName: name,
	}); err != nil && r.Context().Err() == nil {
		// The answer has started: all that is left is to cut it short.
		panic(http.ErrAbortHandler)
	}
}

// exportLease is an ExportVm lease: completing or aborting it ends its
// device URLs.
type exportLease struct {
	*simulator.HttpNfcLease
	ex *exports
}

func (l *exportLease) forget() {
	l.ex.mu.Lock()
	delete(l.ex.leases, l.Self.Value)
	l.ex.mu.Unlock()
}

func (l *exportLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	l.forget()
	return l.HttpNfcLease.HttpNfcLeaseComplete(ctx, req)
}

func (l *exportLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	l.forget()
	return l.HttpNfcLease.HttpNfcLeaseAbort(ctx, req)
}

// setBase sets the server's URL for device URLs.
func (ex *exports) setBase(u string) {
	ex.mu.Lock()
	ex.base = u
	ex.mu.Unlock()
}
