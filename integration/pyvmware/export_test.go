package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
)

// TestExportVm exports VMs the way nova's VMware driver (a linked clone of
// a snapshot) and cinder's VMDK driver (a powered-off VM) do, and reads
// the disk back from the lease's device URL.
func TestExportVm(t *testing.T) {
	ctx := context.Background()
	model := simulator.VPX()
	model.Autostart = false
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Remove)
	ex := newExports()
	model.Map().Handler = ex.handler
	model.Service.TLS = new(tls.Config)
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.HandleFunc(exportPrefix, ex.serve)
	srv := model.Service.NewServer()
	t.Cleanup(srv.Close)
	ex.setBase(srv.URL.Scheme + "://" + srv.URL.Host)

	c, err := govmomi.NewClient(ctx, srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

	// source gives the test VM's disk distinct data, written to its flat
	// file as nova's image upload would have (the model's VMs start
	// powered off: Autostart false).
	source := func(t *testing.T, name string, fill byte) (*object.VirtualMachine, *diskContent) {
		t.Helper()
		vm, err := finder.VirtualMachine(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var o mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"config.hardware.device", "runtime.host"}, &o); err != nil {
			t.Fatal(err)
		}
		disks := (&vmExtras{VirtualMachine: model.Map().Get(vm.Reference()).(*simulator.VirtualMachine), ex: ex}).
			disks(&simulator.Context{Map: model.Map()}, o.Config.Hardware.Device)
		if len(disks) != 1 {
			t.Fatalf("%s has %d disks", name, len(disks))
		}
		data := bytes.Repeat([]byte{fill}, 96<<10)
		if err := os.WriteFile(flatOf(disks[0].descriptor), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return vm, &diskContent{data: data, size: disks[0].capacity}
	}
	powerOn := func(t *testing.T, vm *object.VirtualMachine) {
		t.Helper()
		task, err := vm.PowerOn(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// linkedClone makes nova's snapshot VM: a template cloned from a
	// snapshot with a child disk backing.
	linkedClone := func(t *testing.T, vm *object.VirtualMachine) *object.VirtualMachine {
		t.Helper()
		task, err := vm.CreateSnapshot(ctx, "snap", "", false, false)
		if err != nil {
			t.Fatal(err)
		}
		info, err := task.WaitForResult(ctx)
		if err != nil {
			t.Fatal(err)
		}
		snap := info.Result.(types.ManagedObjectReference)
		spec := types.VirtualMachineCloneSpec{
			Location: types.VirtualMachineRelocateSpec{DiskMoveType: string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)},
			Template: true, Snapshot: &snap,
		}
		task, err = vm.Clone(ctx, folders.VmFolder, "snapshot-"+vm.Name(), spec)
		if err != nil {
			t.Fatal(err)
		}
		if info, err = task.WaitForResult(ctx); err != nil {
			t.Fatal(err)
		}
		return object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference))
	}

	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T) (*object.VirtualMachine, *diskContent)
		fault   string // the ExportVm fault expected, or ""
	}{
		{"powered-on VM is refused", func(t *testing.T) (*object.VirtualMachine, *diskContent) {
			vm, _ := source(t, "DC0_C0_RP0_VM0", 1)
			powerOn(t, vm)
			return vm, nil
		}, "InvalidPowerState"},
		{"powered-off VM exports its disk", func(t *testing.T) (*object.VirtualMachine, *diskContent) {
			return source(t, "DC0_C0_RP0_VM1", 2)
		}, ""},
		{"linked clone exports its parent's disk", func(t *testing.T) (*object.VirtualMachine, *diskContent) {
			vm, want := source(t, "DC0_H0_VM0", 3)
			return linkedClone(t, vm), want
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, want := tc.prepare(t)
			res, err := methods.ExportVm(ctx, c.Client, &types.ExportVm{This: vm.Reference()})
			if tc.fault != "" {
				if err == nil || !soap.IsSoapFault(err) {
					t.Fatalf("ExportVm: %v, want fault %s", err, tc.fault)
				}
				if _, ok := soap.ToSoapFault(err).VimFault().(types.InvalidPowerState); !ok {
					t.Fatalf("ExportVm fault %#v, want %s", soap.ToSoapFault(err).VimFault(), tc.fault)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var lease mo.HttpNfcLease
			if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, res.Returnval, []string{"state", "info"}, &lease); err != nil {
				t.Fatal(err)
			}
			if lease.State != types.HttpNfcLeaseStateReady || lease.Info == nil || len(lease.Info.DeviceUrl) != 1 ||
				lease.Info.Entity != vm.Reference() || !*lease.Info.DeviceUrl[0].Disk {
				t.Fatalf("lease %s, info %+v", lease.State, lease.Info)
			}
			u := lease.Info.DeviceUrl[0].Url
			resp, err := httpc.Get(u)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			im, err := vmdk.Open(bytes.NewReader(body), int64(len(body)), vmdk.Limits{})
			if err != nil {
				t.Fatalf("GET %s: %s, %d bytes: %v", u, resp.Status, len(body), err)
			}
			got := &diskContent{data: want.data}
			if err := im.Convert(ctx, got); err != nil {
				t.Fatal(err)
			}
			if im.Format() != vmdk.StreamOptimized || got.size != want.size || got.differ {
				t.Fatalf("exported a %s disk of %d bytes (differs from the source: %v), want streamOptimized with the %d bytes of the source",
					im.Format(), got.size, got.differ, want.size)
			}

			if _, err := methods.HttpNfcLeaseComplete(ctx, c.Client, &types.HttpNfcLeaseComplete{This: res.Returnval}); err != nil {
				t.Fatal(err)
			}
			resp, err = httpc.Get(u)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("GET after the lease completed: %s", resp.Status)
			}
		})
	}
}

// diskContent is a disk whose first bytes are data and the rest zeros; as
// an io.Writer it checks what is written against that.
type diskContent struct {
	data   []byte
	size   int64
	differ bool
}

func (d *diskContent) Write(p []byte) (int, error) {
	for i, b := range p {
		off := d.size + int64(i)
		if off >= int64(len(d.data)) {
			if !allZero(p[i:]) {
				d.differ = true
			}
			break
		}
		if b != d.data[off] {
			d.differ = true
			break
		}
	}
	d.size += int64(len(p))
	return len(p), nil
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// TestReconfigVMDiskCapacity re-attaches a VM's own disk without a
// capacity, as nova's attach_disk_to_vm does on a resize revert: the disk
// gets its file's capacity, as on vCenter.
func TestReconfigVMDiskCapacity(t *testing.T) {
	ctx := context.Background()
	model := simulator.VPX()
	model.Autostart = false
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Remove)
	model.Map().Handler = newExports().handler
	model.Service.TLS = new(tls.Config)
	srv := model.Service.NewServer()
	t.Cleanup(srv.Close)
	c, err := govmomi.NewClient(ctx, srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := finder.SetDatacenter(dc).VirtualMachine(ctx, "DC0_H0_VM0")
	if err != nil {
		t.Fatal(err)
	}
	devices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disk := devices.SelectByType((*types.VirtualDisk)(nil))[0].(*types.VirtualDisk)
	want := disk.CapacityInBytes
	if err := vm.RemoveDevice(ctx, true, disk); err != nil {
		t.Fatal(err)
	}
	readd := &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
		Key: -100, ControllerKey: disk.ControllerKey, UnitNumber: disk.UnitNumber, Backing: disk.Backing,
	}}
	if err := vm.AddDevice(ctx, readd); err != nil {
		t.Fatal(err)
	}
	if devices, err = vm.Device(ctx); err != nil {
		t.Fatal(err)
	}
	got := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(got) != 1 || want == 0 || got[0].(*types.VirtualDisk).CapacityInBytes != want {
		t.Fatalf("re-attached disk %+v, want capacity %d", got, want)
	}
}
