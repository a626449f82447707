package vcenter

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vmEnv is a simulator with one cluster, a logged-in session and the
// instance folder of one project.
type vmEnv struct {
	sim     *Simulator
	s       *Session
	cluster Cluster
	ds      Datastore
	folder  Ref
}

func newVMEnv(t *testing.T) *vmEnv {
	t.Helper()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	clusters, err := s.Clusters(t.Context())
	if err != nil || len(clusters) != 1 || len(clusters[0].Datastores) == 0 {
		t.Fatalf("Clusters: %v, %+v", err, clusters)
	}
	folder, err := s.EnsureFolderPath(t.Context(), clusters[0].Datacenter, "OpenStack", "Project (p1)", "Instances")
	if err != nil {
		t.Fatalf("EnsureFolderPath: %v", err)
	}
	return &vmEnv{sim: sim, s: s, cluster: clusters[0], ds: clusters[0].Datastores[0], folder: folder}
}

// spec returns a VMSpec for an instance uuid, nova style.
func (e *vmEnv) spec(uuid string) VMSpec {
	return VMSpec{
		Name:           uuid,
		InstanceUUID:   uuid,
		NumCPUs:        2,
		MemoryMB:       512,
		GuestID:        "otherGuest64",
		Annotation:     "name:test\nprojectid:p1\n",
		ExtraConfig:    map[string]string{"nvp.vm-uuid": uuid, "disk.EnableUUID": "true"},
		ManagedByKey:   "org.openstack.compute",
		ManagedByType:  "instance",
		Folder:         e.folder,
		ResourcePool:   e.cluster.ResourcePool,
		Datastore:      e.ds.Ref,
		DatastorePath:  "[" + e.ds.Name + "] " + uuid + "/",
		SCSIController: SCSIParaVirtual,
	}
}

// create creates a VM for uuid.
func (e *vmEnv) create(t *testing.T, uuid string) VM {
	t.Helper()
	vm, err := e.s.CreateVM(t.Context(), e.spec(uuid))
	if err != nil {
		t.Fatalf("CreateVM(%s): %v", uuid, err)
	}
	return vm
}

// measure runs f and returns the SOAP calls it made.
func vmMeasure(t *testing.T, s *Session, what string, f func() error) map[string]int64 {
	t.Helper()
	before := s.Calls()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	d := delta(before, s.Calls())
	t.Logf("round trips of %s: %d %v", what, vmTotal(d), d)
	return d
}

func vmTotal(d map[string]int64) int64 {
	var n int64
	for _, v := range d {
		n += v
	}
	return n
}

// datastoreDir returns the local directory backing the simulator's
// datastore directory dir.
func datastoreDir(t *testing.T, e *vmEnv, dir string) string {
	t.Helper()
	for _, o := range e.sim.model.Map().OptionManager().Setting {
		if ov := o.GetOptionValue(); ov.Key == "vcsim.home" {
			return filepath.Join(ov.Value.(string), e.ds.Name, dir)
		}
	}
	t.Fatal("no vcsim.home")
	return ""
}

func TestCreateAndFindVM(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const uuid = "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a01"

	var vm VM
	d := vmMeasure(t, e.s, "CreateVM", func() (err error) {
		vm, err = e.s.CreateVM(ctx, e.spec(uuid))
		return err
	})
	if d["CreateVM_Task"] != 1 || d["RetrievePropertiesEx"] < 2 || vmTotal(d) != 1+d["RetrievePropertiesEx"] {
		t.Errorf("CreateVM calls = %v, want CreateVM_Task + task polls + 1 read", d)
	}

	var found VM
	d = vmMeasure(t, e.s, "FindVMByInstanceUUID", func() (err error) {
		found, err = e.s.FindVMByInstanceUUID(ctx, uuid)
		return err
	})
	if want := map[string]int64{"FindAllByUuid": 1, "RetrievePropertiesEx": 1}; !maps.Equal(d, want) {
		t.Errorf("FindVMByInstanceUUID calls = %v, want %v", d, want)
	}

	for _, got := range []VM{vm, found} {
		switch {
		case got.Ref != vm.Ref || got.Ref.Type != "VirtualMachine":
			t.Errorf("Ref = %v, want %v", got.Ref, vm.Ref)
		case got.Name != uuid, got.InstanceUUID != uuid:
			t.Errorf("Name, InstanceUUID = %q, %q, want %q", got.Name, got.InstanceUUID, uuid)
		case got.PowerState != PowerStateOff:
			t.Errorf("PowerState = %q", got.PowerState)
		case got.NumCPUs != 2 || got.MemoryMB != 512 || got.GuestID != "otherGuest64":
			t.Errorf("hardware = %d CPUs, %d MB, %q", got.NumCPUs, got.MemoryMB, got.GuestID)
		case got.ExtraConfig["nvp.vm-uuid"] != uuid || got.ExtraConfig["disk.EnableUUID"] != "true":
			t.Errorf("ExtraConfig = %v", got.ExtraConfig)
		case got.ManagedByKey != "org.openstack.compute" || got.ManagedByType != "instance":
			t.Errorf("ManagedBy = %q, %q", got.ManagedByKey, got.ManagedByType)
		case got.Annotation != "name:test\nprojectid:p1\n":
			t.Errorf("Annotation = %q", got.Annotation)
		case got.Folder != e.folder:
			t.Errorf("Folder = %v, want %v", got.Folder, e.folder)
		case got.ResourcePool != e.cluster.ResourcePool:
			t.Errorf("ResourcePool = %v, want %v", got.ResourcePool, e.cluster.ResourcePool)
		case got.Host.Type != "HostSystem":
			t.Errorf("Host = %v", got.Host)
		case got.Datacenter.Type != "Datacenter" || got.DatacenterName != e.cluster.Datacenter:
			t.Errorf("Datacenter = %v %q, want the datacenter %q", got.Datacenter, got.DatacenterName, e.cluster.Datacenter)
		case !strings.HasPrefix(got.VMPathName, "["+e.ds.Name+"] "+uuid+"/"):
			t.Errorf("VMPathName = %q", got.VMPathName)
		case len(got.Controllers) != 1:
			t.Errorf("Controllers = %v", got.Controllers)
		}
	}

	_, err := e.s.FindVMByInstanceUUID(ctx, "00000000-0000-0000-0000-000000000000")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("FindVMByInstanceUUID(absent) = %v, want ErrNotFound", err)
	}
	_, err = e.s.CreateVM(ctx, VMSpec{Name: "x"})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("CreateVM(no folder) = %v, want ErrInvalidArgument", err)
	}
}

func TestPowerCycle(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a02")

	steps := []struct {
		name  string
		op    func() error
		state string
	}{
		{"PowerOn", func() error { return e.s.PowerOn(ctx, vm.Ref) }, PowerStateOn},
		{"PowerOn again", func() error { return e.s.PowerOn(ctx, vm.Ref) }, PowerStateOn},
		{"Reset", func() error { return e.s.Reset(ctx, vm.Ref) }, PowerStateOn},
		{"PowerOff", func() error { return e.s.PowerOff(ctx, vm.Ref) }, PowerStateOff},
		{"PowerOff again", func() error { return e.s.PowerOff(ctx, vm.Ref) }, PowerStateOff},
		{"ShutdownGuest while off", func() error { return e.s.ShutdownGuest(ctx, vm.Ref) }, PowerStateOff},
	}
	for _, st := range steps {
		d := vmMeasure(t, e.s, st.name, st.op)
		// One call, plus task polls: usually 1, more on a loaded machine.
		if polls := d["RetrievePropertiesEx"]; vmTotal(d)-polls != 1 || polls > 6 {
			t.Errorf("%s: %d round trips %v, want 1 call and 1-6 polls", st.name, vmTotal(d), d)
		}
		got, err := e.s.GetVM(ctx, vm.Ref)
		if err != nil {
			t.Fatalf("GetVM: %v", err)
		}
		if got.PowerState != st.state {
			t.Errorf("after %s: PowerState = %q, want %q", st.name, got.PowerState, st.state)
		}
	}

	// Reset of a powered-off VM is an error, not a no-op.
	err := e.s.Reset(ctx, vm.Ref)
	var ips *types.InvalidPowerState
	if _, ok := fault.As(err, &ips); !ok {
		t.Errorf("Reset(off) = %v, want InvalidPowerState", err)
	}

	// ShutdownGuest of a running VM (vcsim needs no tools).
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	vmMeasure(t, e.s, "ShutdownGuest", func() error { return e.s.ShutdownGuest(ctx, vm.Ref) })
	waitFor(t, 5e9, "guest shutdown", func() bool {
		got, err := e.s.GetVM(ctx, vm.Ref)
		return err == nil && got.PowerState == PowerStateOff
	})
}

func TestShutdownGuestWithoutTools(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a03")
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	e.sim.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "ShutdownGuest", ObjectType: "VirtualMachine", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeCustom, Fault: &types.ToolsUnavailable{},
		MaxCount: 1, Enabled: true,
	})
	err := e.s.ShutdownGuest(ctx, vm.Ref)
	if !errors.Is(err, ErrToolsNotRunning) || !fault.Is(err, &types.ToolsUnavailable{}) {
		t.Fatalf("ShutdownGuest = %v, want ErrToolsNotRunning", err)
	}
	// The caller falls back to a hard reset, as nova's soft reboot does.
	if err := e.s.Reset(ctx, vm.Ref); err != nil {
		t.Fatalf("Reset: %v", err)
	}
}

func TestRenameAndAttachDisk(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const uuid = "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a04"
	vm := e.create(t, uuid)

	for _, name := range []string{"web-1 (" + uuid + ")", "web-1 (" + uuid + ")"} {
		vmMeasure(t, e.s, "Rename", func() error { return e.s.Rename(ctx, vm.Ref, name) })
		got, err := e.s.GetVM(ctx, vm.Ref)
		if err != nil || got.Name != name {
			t.Fatalf("after Rename: %q, %v; want %q", got.Name, err, name)
		}
	}

	path := "[" + e.ds.Name + "] " + uuid + "/" + uuid + ".vmdk"
	var disk Disk
	vmMeasure(t, e.s, "AttachDisk", func() (err error) {
		disk, err = e.s.AttachDisk(ctx, vm.Ref, path, 1<<20, 0)
		return err
	})
	if disk.FileName != path || disk.CapacityKB != 1<<20 || disk.ControllerKey != vm.Controllers[0] {
		t.Errorf("AttachDisk = %+v", disk)
	}
	got, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil || len(got.Disks) != 1 || got.Disks[0] != disk {
		t.Errorf("Disks = %+v, %v; want [%+v]", got.Disks, err, disk)
	}
	vmMeasure(t, e.s, "Reconfigure", func() error {
		return e.s.Reconfigure(ctx, vm.Ref, types.VirtualMachineConfigSpec{
			ExtraConfig: []types.BaseOptionValue{&types.OptionValue{Key: "nvp.iface-id.0", Value: "port-1"}},
		})
	})
	got, err = e.s.GetVM(ctx, vm.Ref)
	if err != nil || got.ExtraConfig["nvp.iface-id.0"] != "port-1" {
		t.Errorf("ExtraConfig after Reconfigure = %v, %v", got.ExtraConfig, err)
	}
}

func TestDestroy(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()

	tests := []struct {
		name    string
		uuid    string
		powerOn bool
	}{
		{"powered off", "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a05", false},
		{"powered on", "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a06", true},
	}
	for _, tt := range tests {
		vm := e.create(t, tt.uuid)
		dir := datastoreDir(t, e, tt.uuid)
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("%s: VM directory: %v", tt.name, err)
		}
		if tt.powerOn {
			if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
				t.Fatal(err)
			}
		}
		d := vmMeasure(t, e.s, "Destroy "+tt.name, func() error { return e.s.Destroy(ctx, vm.Ref) })
		want := int64(4)
		if tt.powerOn {
			want = 6
		}
		if d["UnregisterVM"] != 1 || d["DeleteDatastoreFile_Task"] != 1 || vmTotal(d) < want || vmTotal(d) > want+6 {
			t.Errorf("%s: Destroy calls = %v, want about %d", tt.name, d, want)
		}
		if _, err := e.s.FindVMByInstanceUUID(ctx, tt.uuid); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: FindVMByInstanceUUID after Destroy = %v, want ErrNotFound", tt.name, err)
		}
		if _, err := e.s.GetVM(ctx, vm.Ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: GetVM after Destroy = %v, want ErrNotFound", tt.name, err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s: VM directory after Destroy: %v, want it gone", tt.name, err)
		}
		d = vmMeasure(t, e.s, "Destroy again", func() error { return e.s.Destroy(ctx, vm.Ref) })
		if vmTotal(d) != 1 {
			t.Errorf("%s: Destroy of a gone VM = %v, want 1 call", tt.name, d)
		}
	}
}

func TestVMDirectory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		vmx, dir string
		ok       bool
	}{
		{"[ds] uuid/uuid.vmx", "[ds] uuid", true},
		{"[ds 1] a/b/c.vmx", "[ds 1] a/b", true},
		{"[ds] uuid.vmx", "", false},
		{"[ds] /uuid.vmx", "", false},
		{"", "", false},
		{"no brackets", "", false},
	}
	for _, tt := range tests {
		dir, ok := vmDirectory(tt.vmx)
		if dir != tt.dir || ok != tt.ok {
			t.Errorf("vmDirectory(%q) = %q, %v; want %q, %v", tt.vmx, dir, ok, tt.dir, tt.ok)
		}
	}
}

func TestEnsureExtension(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	for i, want := range []map[string]int64{
		{"FindExtension": 1, "RegisterExtension": 1},
		{"FindExtension": 1},
	} {
		d := vmMeasure(t, s, "EnsureExtension", func() error {
			return s.EnsureExtension(ctx, "org.openstack.compute", "OpenStack Compute", "OpenStack")
		})
		if !maps.Equal(d, want) {
			t.Errorf("call %d: %v, want %v", i, d, want)
		}
	}
}

// TestRebootGuestWithoutToolsIsTyped: the simulator's guests run no VMware
// Tools, so a guest reboot must say so in a way the caller can branch on.
func TestRebootGuestWithoutToolsIsTyped(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0a99")
	if err := e.s.PowerOn(t.Context(), vm.Ref); err != nil {
		t.Fatal(err)
	}
	if err := e.s.RebootGuest(t.Context(), vm.Ref); !errors.Is(err, ErrToolsNotRunning) {
		t.Fatalf("RebootGuest without tools: %v", err)
	}
}

// TestCreateVMWithDisks creates a VM with an existing disk file attached in
// the same CreateVM_Task (no AttachDisk), in the directory that holds it.
func TestCreateVMWithDisks(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	uuid := "5b0e8f4e-6c1f-4f7e-9a38-2b7d0e9c4a11"
	dir := DatastorePath{Datastore: e.ds.Name, Path: uuid}
	disk := dir.Join(uuid + ".vmdk")
	if err := e.s.MakeDirectory(ctx, e.cluster.Datacenter, dir); err != nil {
		t.Fatal(err)
	}
	if err := e.s.CreateVirtualDisk(ctx, e.cluster.Datacenter, disk, 2048, DiskKindThin); err != nil {
		t.Fatal(err)
	}
	spec := e.spec(uuid)
	spec.Name = "server (" + uuid + ")"
	spec.Disks = []string{disk.String()}
	spec.DatastorePath = dir.Join(uuid + ".vmx").String()
	var created VM
	calls := vmMeasure(t, e.s, "CreateVM with a disk", func() error {
		vm, err := e.s.CreateVM(ctx, spec)
		if err != nil {
			return err
		}
		created = vm
		if vm.VMPathName != spec.DatastorePath {
			t.Errorf("VM files at %s, want in the disk's directory, %s", vm.VMPathName, spec.DatastorePath)
		}
		if len(vm.Disks) != 1 || vm.Disks[0].FileName != disk.String() || vm.Disks[0].UnitNumber != 0 || vm.Name != spec.Name {
			t.Errorf("VM %s disks %+v", vm.Name, vm.Disks)
		}
		if len(vm.Controllers) != 1 || vm.Disks[0].ControllerKey != vm.Controllers[0] {
			t.Errorf("disk on controller %d, VM controllers %v", vm.Disks[0].ControllerKey, vm.Controllers)
		}
		return nil
	})
	if calls["ReconfigVM_Task"] != 0 || calls["CreateVM_Task"] != 1 {
		t.Errorf("calls %v: want the disk attached by CreateVM_Task alone", calls)
	}
	// Destroying the VM removes the directory with the disk.
	if err := e.s.Destroy(ctx, created.Ref); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.s.FileExists(ctx, e.cluster.Datacenter, dir); ok || err != nil {
		t.Errorf("%s after Destroy: exists %v (%v)", dir, ok, err)
	}
	spec.SCSIController = ""
	if _, err := e.s.CreateVM(ctx, spec); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("disks without a controller: %v, want ErrInvalidArgument", err)
	}
}
