package compute

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// srHV is a Hypervisor that records the VM operations; the methods it
// does not define panic (through the nil embedded interface).
type srHV struct {
	Hypervisor
	vm    vcenter.VM
	calls []string
	fail  string // the call that fails
}

func (f *srHV) call(format string, args ...any) error {
	c := fmt.Sprintf(format, args...)
	f.calls = append(f.calls, c)
	if f.fail != "" && strings.HasPrefix(c, f.fail) {
		return errors.New(c + " failed")
	}
	return nil
}

func (f *srHV) Clusters(context.Context, ...string) ([]vcenter.Cluster, error) {
	return []vcenter.Cluster{{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c9"}, Datacenter: "DC0",
		Datastores: []vcenter.Datastore{{Name: "ds1"}}}}, nil
}

func (f *srHV) FindVMByInstanceUUID(context.Context, string) (vcenter.VM, error) {
	if f.vm.Ref.IsZero() {
		return vcenter.VM{}, vcenter.ErrNotFound
	}
	return f.vm, nil
}

func (f *srHV) PowerOff(context.Context, vcenter.Ref) error {
	if err := f.call("PowerOff"); err != nil {
		return err
	}
	f.vm.PowerState = vcenter.PowerStateOff
	return nil
}

func (f *srHV) PowerOn(context.Context, vcenter.Ref) error {
	if err := f.call("PowerOn"); err != nil {
		return err
	}
	f.vm.PowerState = vcenter.PowerStateOn
	return nil
}

func (f *srHV) AttachDisk(_ context.Context, _ vcenter.Ref, path string, capKB int64, ctrl int32) (vcenter.Disk, error) {
	if err := f.call("AttachDisk %s %d %d", path, capKB, ctrl); err != nil {
		return vcenter.Disk{}, err
	}
	d := vcenter.Disk{Key: 2001, FileName: path, ControllerKey: ctrl}
	f.vm.Disks = append(f.vm.Disks, d)
	return d, nil
}

// srFullHV adds the operations beyond the Hypervisor interface.
type srFullHV struct{ *srHV }

func (f srFullHV) Suspend(context.Context, vcenter.Ref) error {
	if err := f.call("Suspend"); err != nil {
		return err
	}
	f.vm.PowerState = vcenter.PowerStateSuspended
	return nil
}

func (f srFullHV) CopyVirtualDisk(_ context.Context, dc string, src, dst vcenter.DatastorePath, thin bool) error {
	return f.call("CopyVirtualDisk %s %s %s %v", dc, src, dst, thin)
}

func (f srFullHV) DeleteVirtualDisk(_ context.Context, dc string, p vcenter.DatastorePath) error {
	return f.call("DeleteVirtualDisk %s %s", dc, p)
}

func (f srFullHV) SetBootDisk(_ context.Context, _ vcenter.Ref, key int32) error {
	return f.call("SetBootDisk %d", key)
}

func (f srFullHV) DetachDisk(_ context.Context, _ vcenter.Ref, key int32, destroy bool) error {
	if err := f.call("DetachDisk %d %v", key, destroy); err != nil {
		return err
	}
	f.vm.Disks = slices.DeleteFunc(f.vm.Disks, func(d vcenter.Disk) bool { return d.Key == key })
	return nil
}

type srImages struct{}

func (srImages) Image(_ context.Context, _, id string) (cloud.Image, error) {
	return cloud.Image{ID: id, Name: "img " + id, Properties: map[string]any{"vmware_disktype": "thin"}}, nil
}

func (srImages) Download(context.Context, string, string) (io.ReadCloser, int64, error) {
	return io.NopCloser(bytes.NewReader(nil)), 0, nil
}

type srCache struct{ got []string }

func (c *srCache) Forget(string, string, string) {}

func (c *srCache) Ensure(_ context.Context, dc, ds, id string, _ vcenter.FetchFunc, kind vcenter.DiskKind) (vcenter.DatastorePath, error) {
	c.got = append(c.got, fmt.Sprintf("%s %s %s %s", dc, ds, id, kind))
	return vcenter.DatastorePath{Datastore: ds, Path: "cache/" + id + "/" + id + ".vmdk"}, nil
}

const srUUID = "0d8e4b5c-4a1e-4c3f-9a57-1f2b3c4d5e6f"

func srInstance() *ovo.Object {
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", srUUID)
	inst.SetString("node", "domain-c9.vc-uuid")
	inst.SetString("vm_state", "active")
	inst.SetString("image_ref", "img-boot")
	inst.SetStringDict("system_metadata", map[string]string{"image_base_image_ref": "img-base"})
	inst.ResetChanges()
	return inst
}

func srVM(power string) vcenter.VM {
	return vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-1"}, PowerState: power,
		Disks: []vcenter.Disk{{Key: 2000, FileName: "[ds1] " + srUUID + "/" + srUUID + ".vmdk", ControllerKey: 1000}}}
}

func TestSuspendFollowsTheVMwareDriver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		power, wantErr string
		wantCalls      []string
	}{
		{vcenter.PowerStateOn, "", []string{"Suspend"}},
		{vcenter.PowerStateSuspended, "", nil},
		{vcenter.PowerStateOff, "InstanceSuspendFailure", nil},
	} {
		hv := &srHV{vm: srVM(tc.power)}
		l := &lifecycle{hv: srFullHV{hv}}
		err := l.suspendVM(ctx, srInstance())
		var re *rpc.RemoteError
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (!errors.As(err, &re) || re.Class != tc.wantErr) {
			t.Errorf("suspend of a %s VM: %v, want %q", tc.power, err, tc.wantErr)
		}
		if !slices.Equal(hv.calls, tc.wantCalls) {
			t.Errorf("suspend of a %s VM: calls %v, want %v", tc.power, hv.calls, tc.wantCalls)
		}
	}

	// A hypervisor without Suspend fails clearly; a VM that is gone is
	// InstanceNotFound.
	l := &lifecycle{hv: &srHV{vm: srVM(vcenter.PowerStateOn)}}
	if err := l.suspendVM(ctx, srInstance()); err == nil || !strings.Contains(err.Error(), "cannot suspend") {
		t.Errorf("suspend without the hypervisor's Suspend: %v", err)
	}
	l = &lifecycle{hv: srFullHV{&srHV{}}}
	var re *rpc.RemoteError
	if err := l.suspendVM(ctx, srInstance()); !errors.As(err, &re) || re.Class != "InstanceNotFound" {
		t.Errorf("suspend of a missing VM: %v, want InstanceNotFound", err)
	}
}

func TestRescueFollowsVmopsRescue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	hv := &srHV{vm: srVM(vcenter.PowerStateOn)}
	cache := &srCache{}
	l := &lifecycle{hv: srFullHV{hv}, images: srImages{}, cache: cache}
	inst := srInstance()
	if err := l.rescueVM(ctx, rpc.Context{}, inst, "img-base", map[string]any{"vmware_disktype": "thin"}); err != nil {
		t.Fatal(err)
	}
	rescue := "[ds1] " + srUUID + "/img-base-rescue.vmdk"
	want := []string{
		"PowerOff",
		"CopyVirtualDisk DC0 [ds1] cache/img-base/img-base.vmdk " + rescue + " false",
		"AttachDisk " + rescue + " 0 1000",
		"SetBootDisk 2001",
		"PowerOn",
	}
	if !slices.Equal(hv.calls, want) {
		t.Errorf("rescue calls\n got %q\nwant %q", hv.calls, want)
	}
	if !slices.Equal(cache.got, []string{"DC0 ds1 img-base thin"}) {
		t.Errorf("image cache: %v", cache.got)
	}
	if d, ok := rescueDisk(hv.vm); !ok || d.FileName != rescue {
		t.Errorf("rescue disk %+v %v", d, ok)
	}
	if d, ok := rootDisk(hv.vm); !ok || d.Key != 2000 {
		t.Errorf("root disk %+v %v", d, ok)
	}

	// unrescue: power off, detach and delete the rescue disk, power on.
	hv.calls = nil
	if err := l.unrescueVM(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if want := []string{"PowerOff", "DetachDisk 2001 true", "PowerOn"}; !slices.Equal(hv.calls, want) {
		t.Errorf("unrescue calls %q, want %q", hv.calls, want)
	}
	// A VM without a rescue disk: nova's NotFound, nothing touched.
	hv.calls = nil
	var re *rpc.RemoteError
	if err := l.unrescueVM(ctx, inst); !errors.As(err, &re) || re.Class != "NotFound" || len(hv.calls) != 0 {
		t.Errorf("unrescue without a rescue disk: %v, calls %v", err, hv.calls)
	}
}

func TestRescueReplacesALeftoverRescueDisk(t *testing.T) {
	t.Parallel()
	hv := &srHV{vm: srVM(vcenter.PowerStateOn)}
	copies := 0
	full := &srLeftoverHV{srFullHV: srFullHV{hv}, copies: &copies}
	l := &lifecycle{hv: full, images: srImages{}, cache: &srCache{}}
	if err := l.rescueVM(context.Background(), rpc.Context{}, srInstance(), "img-base", nil); err != nil {
		t.Fatal(err)
	}
	if copies != 2 || !slices.ContainsFunc(hv.calls, func(c string) bool { return strings.HasPrefix(c, "DeleteVirtualDisk") }) {
		t.Errorf("calls %q: want the leftover deleted and the copy redone", hv.calls)
	}
}

// srLeftoverHV fails the first copy as if an earlier rescue had left its
// disk behind.
type srLeftoverHV struct {
	srFullHV
	copies *int
}

func (f *srLeftoverHV) CopyVirtualDisk(ctx context.Context, dc string, src, dst vcenter.DatastorePath, thin bool) error {
	*f.copies++
	if err := f.srFullHV.CopyVirtualDisk(ctx, dc, src, dst, thin); err != nil || *f.copies > 1 {
		return err
	}
	return fmt.Errorf("copy: %w", vcenter.ErrFileExists)
}

func TestRescueFailsClearlyWithoutTheDriverOperations(t *testing.T) {
	t.Parallel()
	l := &lifecycle{hv: &srHV{vm: srVM(vcenter.PowerStateOn)}, images: srImages{}, cache: &srCache{}}
	if err := l.rescueVM(context.Background(), rpc.Context{}, srInstance(), "img", nil); err == nil || !strings.Contains(err.Error(), "cannot copy") {
		t.Errorf("rescue: %v", err)
	}
	if err := l.unrescueVM(context.Background(), srInstance()); err == nil || !strings.Contains(err.Error(), "cannot copy") {
		t.Errorf("unrescue: %v", err)
	}
}

func TestRebuildEvacuateIsNotSupportedByTheVMwareDriver(t *testing.T) {
	t.Parallel()
	hv := &srHV{vm: srVM(vcenter.PowerStateOn)}
	l := &lifecycle{hv: hv}
	err := l.rebuild(context.Background(), rpc.Context{}, srInstance(), rebuildArgs{Recreate: true})
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "InstanceEvacuateNotSupported" || re.Message != "Instance evacuate is not supported." {
		t.Errorf("evacuate: %v", err)
	}
	if len(hv.calls) != 0 {
		t.Errorf("evacuate touched the VM: %v", hv.calls)
	}
}

func TestRescueAndSuspendPowerStates(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]int64{
		vcenter.PowerStateOn: 1, vcenter.PowerStateOff: 4, vcenter.PowerStateSuspended: 7, "": 0,
	} {
		if got := novaPowerState(s); got != want {
			t.Errorf("novaPowerState(%q) = %d, want %d", s, got, want)
		}
	}
}

// TestRescueUnrescueRoundTrips rescues and unrescues a VM of a vCenter
// simulator and checks the exact vCenter calls (task polls and the image
// cache apart): the VM is read once through the watcher's moref (its
// datacenter comes with it) and its power state is not read back after
// the power on.
func TestRescueUnrescueRoundTrips(t *testing.T) {
	t.Parallel()
	r := newSimRig(t)
	ctx := t.Context()
	const read = "RetrievePropertiesEx"
	r.l.images, r.l.cache = srImages{}, &srCache{}
	ds := r.cluster.Datastores[0].Name
	cached := vcenter.DatastorePath{Datastore: ds, Path: "cache/img-rescue"}
	if err := r.s.MakeDirectory(ctx, r.cluster.Datacenter, cached); err != nil {
		t.Fatal(err)
	}
	if err := r.s.CreateVirtualDisk(ctx, r.cluster.Datacenter, cached.Join("img-rescue.vmdk"), 1024, vcenter.DiskKindThin); err != nil {
		t.Fatal(err)
	}
	for _, indexed := range []bool{true, false} {
		uuid := newUUID()
		vm := r.createVM(t, uuid, vcenter.PowerStateOn, indexed)
		var first []string
		if !indexed {
			first = []string{"FindAllByUuid"}
		}
		inst := simInstance(uuid)
		var err error
		calls, _ := r.measure(t, func() { err = r.l.rescueVM(ctx, nil, inst, "img-rescue", nil) })
		want := append(slices.Clone(first), read, "PowerOffVM_Task", "CopyVirtualDisk_Task",
			read, "ReconfigVM_Task", read, // AttachDisk: devices, add, the disk as added
			"ReconfigVM_Task", "PowerOnVM_Task") // boot order, power on
		if err != nil || !slices.Equal(calls, want) {
			t.Errorf("rescue (indexed %v): %v, calls\n %v\nwant %v", indexed, err, calls, want)
		}
		got, err := r.s.GetVM(ctx, vm.Ref)
		if err != nil || got.PowerState != vcenter.PowerStateOn || len(got.Disks) != 2 ||
			!strings.HasSuffix(got.Disks[1].FileName, "/img-rescue"+rescueSuffix) {
			t.Fatalf("rescued VM: %+v, %v", got, err)
		}

		calls, _ = r.measure(t, func() { err = r.l.unrescueVM(ctx, inst) })
		want = append(slices.Clone(first), read, "PowerOffVM_Task", read, "ReconfigVM_Task", "PowerOnVM_Task")
		if err != nil || !slices.Equal(calls, want) {
			t.Errorf("unrescue (indexed %v): %v, calls\n %v\nwant %v", indexed, err, calls, want)
		}
		got, err = r.s.GetVM(ctx, vm.Ref)
		if err != nil || got.PowerState != vcenter.PowerStateOn || len(got.Disks) != 1 || strings.HasSuffix(got.Disks[0].FileName, rescueSuffix) {
			t.Errorf("unrescued VM: %+v, %v", got, err)
		}
	}
}
