package compute

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"testing"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// rszHV is srHV with two clusters of one vCenter and the move operations.
type rszHV struct {
	*srHV
	clusters []vcenter.Cluster
}

func (h *rszHV) Clusters(context.Context, ...string) ([]vcenter.Cluster, error) {
	return h.clusters, nil
}

func (h *rszHV) InstanceUUID() string { return "vc-uuid" }

func (h *rszHV) RelocateVM(_ context.Context, _ vcenter.Ref, spec vcenter.RelocateSpec) (vcenter.VM, error) {
	if err := h.call("RelocateVM %s %s %s", spec.ResourcePool.Value, spec.Datastore.Value, spec.Host.Value); err != nil {
		return vcenter.VM{}, err
	}
	h.vm.ResourcePool = spec.ResourcePool
	return h.vm, nil
}

func (h *rszHV) ResizeVM(_ context.Context, _ vcenter.Ref, cpus int32, mem int64, key int32, capKB int64) error {
	if err := h.call("ResizeVM %d %d %d %d", cpus, mem, key, capKB); err != nil {
		return err
	}
	h.vm.NumCPUs, h.vm.MemoryMB = cpus, mem
	return nil
}

func rszClusters() []vcenter.Cluster {
	ds := func(name string) vcenter.Datastore {
		return vcenter.Datastore{Ref: vcenter.Ref{Type: "Datastore", Value: "ds-" + name}, Name: name, Type: "VMFS", Accessible: true,
			CapacityBytes: 100 << 30, FreeBytes: 50 << 30, MaintenanceMode: "normal"}
	}
	host := func(v string) vcenter.Host {
		return vcenter.Host{Ref: vcenter.Ref{Type: "HostSystem", Value: v}, Name: v, ConnectionState: "connected", PowerState: "poweredOn"}
	}
	return []vcenter.Cluster{
		{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c1"}, Name: "C1", Datacenter: "DC0",
			ResourcePool: vcenter.Ref{Type: "ResourcePool", Value: "resgroup-1"}, DRSEnabled: true,
			Hosts: []vcenter.Host{host("host-1")}, Datastores: []vcenter.Datastore{ds("shared"), ds("local1")}},
		{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c2"}, Name: "C2", Datacenter: "DC0",
			ResourcePool: vcenter.Ref{Type: "ResourcePool", Value: "resgroup-2"},
			Hosts:        []vcenter.Host{host("host-2")}, Datastores: []vcenter.Datastore{ds("local2")}},
	}
}

func rszEnvHV(power string) (*lifecycle, *rszHV) {
	vm := srVM(power)
	vm.ResourcePool = vcenter.Ref{Type: "ResourcePool", Value: "resgroup-1"}
	vm.VMPathName = "[shared] " + srUUID + "/" + srUUID + ".vmx"
	vm.Disks[0].CapacityKB = 1 << 20
	hv := &rszHV{srHV: &srHV{vm: vm}, clusters: rszClusters()}
	return &lifecycle{hv: hv, host: "host1"}, hv
}

func rszFlavor(id, vcpus, mem, root int64) *ovo.Object {
	f := ovo.New("Flavor", "1.2")
	f.SetInt("id", id)
	f.SetString("name", fmt.Sprint("f", id))
	f.SetInt("vcpus", vcpus)
	f.SetInt("memory_mb", mem)
	f.SetInt("root_gb", root)
	f.SetInt("ephemeral_gb", 0)
	return f
}

func TestResizeMoveVMToClusterOfNode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, hv := rszEnvHV(vcenter.PowerStateOff)
	c2, err := l.clusterOfNode(ctx, "domain-c2.vc-uuid")
	if err != nil || c2.Name != "C2" {
		t.Fatalf("clusterOfNode: %+v %v", c2, err)
	}
	if _, err := l.clusterOfNode(ctx, "domain-c2.other-vc"); err == nil {
		t.Error("a node of another vCenter was accepted")
	}
	if _, err := l.clusterOfNode(ctx, "domain-c9.vc-uuid"); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("a node of no cluster: %v", err)
	}
	// C2 does not mount "shared": the VM goes to its best datastore, and
	// without DRS to its first host.
	vm, err := l.moveVMToCluster(ctx, hv.vm, c2, nil)
	if err != nil || vm.ResourcePool.Value != "resgroup-2" {
		t.Fatalf("moveVMToCluster: %+v %v", vm, err)
	}
	// Back to C1, which mounts "shared" (kept) and has DRS (no host).
	c1, _ := l.clusterOfNode(ctx, "domain-c1.vc-uuid")
	hv.vm.VMPathName = "[shared] x/x.vmx"
	if _, err := l.moveVMToCluster(ctx, hv.vm, c1, regexp.MustCompile("^shared$")); err != nil {
		t.Fatal(err)
	}
	// Already there: nothing to do.
	if _, err := l.moveVMToCluster(ctx, hv.vm, c1, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"RelocateVM resgroup-2 ds-local2 host-2", "RelocateVM resgroup-1  "}
	if !slices.Equal(hv.calls, want) {
		t.Errorf("calls %q, want %q", hv.calls, want)
	}
	// No datastore of the regex in the cluster: a clear error.
	if _, err := l.moveVMToCluster(ctx, hv.vm, c2, regexp.MustCompile("^nomatch$")); err == nil {
		t.Error("a move without a usable datastore succeeded")
	}
}

func TestResizeVMToFlavorGrowsOnlyTheRootDisk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, hv := rszEnvHV(vcenter.PowerStateOff)
	if err := l.resizeVMToFlavor(ctx, hv.vm, srUUID, rszFlavor(2, 2, 256, 2)); err != nil {
		t.Fatal(err)
	}
	if err := l.resizeVMToFlavor(ctx, hv.vm, srUUID, rszFlavor(1, 1, 64, 1)); err != nil {
		t.Fatal(err)
	}
	want := []string{"ResizeVM 2 256 2000 2097152", "ResizeVM 1 64 0 0"}
	if !slices.Equal(hv.calls, want) {
		t.Errorf("calls %q, want %q", hv.calls, want)
	}
	// Without the move operations: a clear error.
	l = &lifecycle{hv: hv.srHV}
	if err := l.resizeVMToFlavor(ctx, hv.vm, srUUID, rszFlavor(1, 1, 64, 1)); err == nil {
		t.Error("resize without ResizeVM succeeded")
	}
}

func TestResizeRefusesToShrinkTheRootDisk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name          string
		oldRoot, root int64
	}{
		{"smaller flavor", 2, 1},
		{"smaller flavor, no root disk size", 2, 0},
	} {
		l, hv := rszEnvHV(vcenter.PowerStateOn)
		hv.vm.Disks[0].CapacityKB = 2 << 20
		inst := srInstance()
		inst.Fields["flavor"] = rszFlavor(1, 1, 64, tc.oldRoot)
		err := l.migrateDiskAndPowerOff(ctx, rpc.Context{}, inst, rszFlavor(2, 1, 64, tc.root))
		var rb *faultRollback
		var re *rpc.RemoteError
		if !errors.As(err, &rb) || !errors.As(err, &re) || re.Class != "ResizeError" || re.Message != "Resize error: Unable to shrink disk." {
			t.Errorf("%s: %v, want a rolled-back ResizeError", tc.name, err)
		}
		if len(hv.calls) != 0 {
			t.Errorf("%s: the refused resize touched the VM: %v", tc.name, hv.calls)
		}
	}
	// A new root_gb below the disk's size is refused too.
	l, hv := rszEnvHV(vcenter.PowerStateOn)
	hv.vm.Disks[0].CapacityKB = 3 << 20
	inst := srInstance()
	inst.Fields["flavor"] = rszFlavor(1, 1, 64, 1)
	var re *rpc.RemoteError
	if err := l.migrateDiskAndPowerOff(ctx, rpc.Context{}, inst, rszFlavor(2, 1, 64, 2)); !errors.As(err, &re) || re.Class != "ResizeError" {
		t.Errorf("root_gb below the disk: %v", err)
	}
}

func TestResizeFlavorAndStashHelpers(t *testing.T) {
	t.Parallel()
	inst := srInstance()
	setInstanceInfo(inst, rszFlavor(7, 2, 256, 2))
	for k, want := range map[string]int64{"instance_type_id": 7, "vcpus": 2, "memory_mb": 256, "root_gb": 2, "ephemeral_gb": 0} {
		if got, _ := inst.Int(k); got != want {
			t.Errorf("%s = %d, want %d", k, got, want)
		}
	}
	if f, _ := inst.Object("flavor"); f == nil || f.StringOrEmpty("name") != "f7" {
		t.Errorf("flavor %v", f)
	}
	if s := oldVMState(inst); s != "active" {
		t.Errorf("old_vm_state without one: %s", s)
	}
	_ = inst.Set("system_metadata", map[string]any{"old_vm_state": "stopped", "k": "v"})
	if s := oldVMState(inst); s != "stopped" {
		t.Errorf("old_vm_state: %s", s)
	}
	dropStashedFlavors(inst)
	sm, _ := inst.Dict("system_metadata")
	if _, ok := sm["old_vm_state"]; ok || sm["k"] != "v" || !inst.IsNull("old_flavor") || !inst.IsNull("new_flavor") {
		t.Errorf("after dropStashedFlavors: %v, old %v new %v", sm, inst.Fields["old_flavor"], inst.Fields["new_flavor"])
	}
}

func TestLiveMigrationRelocatesToTheNamedCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, hv := rszEnvHV(vcenter.PowerStateOn)
	data := ovo.New("VMwareLiveMigrateData", "1.0")
	data.SetString("cluster_name", "C2")
	data.SetString("datastore_regex", "^local")
	if err := l.relocateLive(ctx, srInstance(), data); err != nil {
		t.Fatal(err)
	}
	if want := []string{"RelocateVM resgroup-2 ds-local2 host-2"}; !slices.Equal(hv.calls, want) {
		t.Errorf("calls %q, want %q", hv.calls, want)
	}
	node, power, err := l.nodeOfVM(ctx, srInstance())
	if err != nil || node != "domain-c2.vc-uuid" || power != powerRunning {
		t.Errorf("nodeOfVM = %s %d %v", node, power, err)
	}
	data.SetString("cluster_name", "C9")
	var re *rpc.RemoteError
	if err := l.relocateLive(ctx, srInstance(), data); !errors.As(err, &re) || re.Class != "HostNotFound" {
		t.Errorf("relocation to a missing cluster: %v, want HostNotFound", err)
	}
	if c, err := l.clusterNamed(ctx, "C1"); err != nil || c.ResourcePool.Value != "resgroup-1" {
		t.Errorf("clusterNamed: %+v %v", c, err)
	}
}
