package vcenter

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	govmdk "github.com/vmware/govmomi/vmdk"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
)

// importExtension makes the embedded simulator's import leases
// (ResourcePool.ImportVApp) keep what is uploaded to their disk URLs, as
// ESX does: a streamOptimized VMDK sent to a disk's URL is expanded into
// that disk (its -flat.vmdk extent, zero grains left as holes), and the
// disk takes the image's capacity. govmomi's vcsim reads the bytes, hashes
// them and throws them away, which leaves every imported disk empty; with
// this extension a disk imported through the simulator holds what was sent,
// so that tests can check it byte for byte. A body that is not a sound
// streamOptimized VMDK is refused (400), as ESX refuses it. Uploads to other
// leases (exports) and to non-disk files are vcsim's as before.
//
// It is an extension of the embedded simulator only; a real vCenter does
// this itself.
type importExtension struct {
	mu     sync.Mutex
	leases map[string]importLease // by lease moref value
}

// importLease is an import lease that the extension serves.
type importLease struct {
	lease *simulator.HttpNfcLease
	reg   *simulator.Registry
}

// simImporter wraps a resource pool for one ImportVApp call, to learn the
// lease it hands out (see installImportExtension).
type simImporter struct {
	*simulator.ResourcePool
	x *importExtension
}

// ImportVApp is vcsim's, remembering the lease. vcsim dispatches it by
// name.
func (p *simImporter) ImportVApp(ctx *simulator.Context, req *types.ImportVApp) soap.HasFault {
	defer ctx.Session.Registry.Remove(ctx, p.Self)
	res := p.ResourcePool.ImportVApp(ctx, req)
	if body, ok := res.(*methods.ImportVAppBody); ok && body.Res != nil {
		if l, ok := ctx.Session.Get(body.Res.Returnval).(*simulator.HttpNfcLease); ok {
			p.x.mu.Lock()
			p.x.leases[body.Res.Returnval.Value] = importLease{lease: l, reg: ctx.Map}
			p.x.mu.Unlock()
		}
	}
	return res
}

// installImportExtension routes ImportVApp on resource pools through
// simImporter (after the registry's existing Handler had its say, as
// installMKSExtension does), forgets leases as they complete or abort, and
// serves uploads to the leases it knows. It must run before the server
// starts (Service.NewServer), which registers vcsim's own /nfc/ handler:
// the method-specific patterns here take precedence over it.
func installImportExtension(m *simulator.Model) {
	x := &importExtension{leases: make(map[string]importLease)}
	reg := m.Map()
	next := reg.Handler
	reg.Handler = func(ctx *simulator.Context, method *simulator.Method) (mo.Reference, types.BaseMethodFault) {
		switch {
		case method.This.Type == "ResourcePool" && method.Name == "ImportVApp" && ctx.Session != nil:
			if rp, ok := ctx.Map.Get(method.This).(*simulator.ResourcePool); ok {
				w := &simImporter{ResourcePool: rp, x: x}
				ctx.Session.Registry.Put(w)
				return w, nil
			}
		case method.This.Type == "HttpNfcLease" && (method.Name == "HttpNfcLeaseComplete" || method.Name == "HttpNfcLeaseAbort"):
			x.mu.Lock()
			delete(x.leases, method.This.Value)
			x.mu.Unlock()
		}
		if next != nil {
			return next(ctx, method)
		}
		return nil, nil
	}
	if m.Service.ServeMux == nil {
		m.Service.ServeMux = http.NewServeMux()
	}
	m.Service.ServeMux.HandleFunc("POST /nfc/", x.serveUpload)
	m.Service.ServeMux.HandleFunc("PUT /nfc/", x.serveUpload)
}

// serveUpload expands a streamOptimized upload into the import's disk.
func (x *importExtension) serveUpload(w http.ResponseWriter, r *http.Request) {
	p := strings.Split(r.URL.Path, "/")
	id, name := p[len(p)-2], p[len(p)-1]
	x.mu.Lock()
	il, ok := x.leases[id]
	x.mu.Unlock()
	if !ok {
		simulator.ServeNFC(w, r)
		return
	}
	vm, disk, desc, ok := il.disk(r, name)
	if !ok {
		simulator.ServeNFC(w, r)
		return
	}
	defer func() { _ = r.Body.Close() }()
	br := bufio.NewReaderSize(r.Body, 256<<10)
	hb, _ := br.Peek(vmdk.SectorSize)
	if h, err := vmdk.ParseHeader(hb, vmdk.DefaultLimits); err != nil || h.Format() != vmdk.StreamOptimized {
		http.Error(w, fmt.Sprintf("%s: not a streamOptimized VMDK (%v)", name, err), http.StatusBadRequest)
		return
	}
	im, err := vmdk.Open(br, max(r.ContentLength, 0), vmdk.DefaultLimits)
	if err == nil {
		err = expandInto(r, im, simulator.VirtualDiskBackingFileName(desc))
	}
	if err == nil {
		err = il.resize(r, vm, disk, desc, im.Size())
	}
	switch {
	case errors.Is(err, vmdk.ErrInvalid), errors.Is(err, vmdk.ErrUnsupported):
		http.Error(w, fmt.Sprintf("%s: %v", name, err), http.StatusBadRequest)
	case err != nil:
		http.Error(w, fmt.Sprintf("%s: %v", name, err), http.StatusInternalServerError)
	default:
		w.WriteHeader(http.StatusOK)
	}
}

// expandInto writes the image's flat disk into the extent file flat.
func expandInto(r *http.Request, im *vmdk.Image, flat string) error {
	f, err := os.OpenFile(flat, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := im.ConvertAt(r.Context(), f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// disk finds the lease's VM and its disk whose file is named name, and the
// local path of the disk's descriptor.
func (il importLease) disk(r *http.Request, name string) (*simulator.VirtualMachine, *types.VirtualDisk, string, bool) {
	ctx := &simulator.Context{Context: r.Context(), Map: il.reg}
	var entity types.ManagedObjectReference
	il.reg.WithLock(ctx, il.lease, func() {
		if il.lease.Info != nil {
			entity = il.lease.Info.Entity
		}
	})
	vm, ok := il.reg.Get(entity).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil, "", false
	}
	var disk *types.VirtualDisk
	var file string
	var dsRef *types.ManagedObjectReference
	il.reg.WithLock(ctx, vm, func() {
		if vm.Config == nil {
			return
		}
		for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			vd := d.(*types.VirtualDisk)
			b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if ok && path.Base(b.FileName) == name {
				disk, file, dsRef = vd, b.FileName, b.Datastore
			}
		}
	})
	if disk == nil || dsRef == nil {
		return nil, nil, "", false
	}
	ds, ok := il.reg.Get(*dsRef).(*simulator.Datastore)
	if !ok {
		return nil, nil, "", false
	}
	dp, err := ParseDatastorePath(file)
	if err != nil {
		return nil, nil, "", false
	}
	return vm, disk, path.Join(ds.Summary.Url, dp.Path), true
}

// resize gives the disk the image's capacity, in its descriptor and in
// the VM's device, when the import spec asked for another one (nova's
// asks for 1 KiB and reads the capacity back).
func (il importLease) resize(r *http.Request, vm *simulator.VirtualMachine, disk *types.VirtualDisk, desc string, capacity int64) error {
	b, err := os.ReadFile(desc)
	if err != nil {
		return err
	}
	d, err := govmdk.ParseDescriptor(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if len(d.Extent) != 1 {
		return fmt.Errorf("%s: descriptor has %d extents", desc, len(d.Extent))
	}
	if sectors := capacity / govmdk.SectorSize; d.Extent[0].Size != sectors {
		d.Extent[0].Size = sectors
		var out bytes.Buffer
		if err := d.Write(&out); err != nil {
			return err
		}
		if err := os.WriteFile(desc, out.Bytes(), 0o600); err != nil {
			return err
		}
	}
	ctx := &simulator.Context{Context: r.Context(), Map: il.reg}
	il.reg.WithLock(ctx, vm, func() {
		disk.CapacityInBytes = capacity
		disk.CapacityInKB = capacity / 1024
	})
	return nil
}
