package vcenter

import (
	"errors"
	"testing"
)

func TestRelocateVMToAnotherCluster(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 2, HostsPerCluster: 2, Datastores: 1})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil || len(clusters) != 2 {
		t.Fatalf("Clusters: %v, %+v", err, clusters)
	}
	src, dst := clusters[0], clusters[1]
	folder, err := s.EnsureFolderPath(ctx, src.Datacenter, "OpenStack", "Instances")
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "0d1f1a8e-5a55-4c3e-8a37-5f3f4b0c1e01"
	ds := src.Datastores[0]
	vm, err := s.CreateVM(ctx, VMSpec{Name: uuid, InstanceUUID: uuid, NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest",
		Folder: folder, ResourcePool: src.ResourcePool, Datastore: ds.Ref, DatastorePath: "[" + ds.Name + "] " + uuid + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	moved, err := s.RelocateVM(ctx, vm.Ref, RelocateSpec{ResourcePool: dst.ResourcePool, Host: dst.Hosts[0].Ref})
	if err != nil {
		t.Fatalf("RelocateVM: %v", err)
	}
	if moved.ResourcePool != dst.ResourcePool || moved.Host != dst.Hosts[0].Ref || moved.PowerState != PowerStateOn {
		t.Errorf("after RelocateVM: pool %v host %v power %s; want %v %v on", moved.ResourcePool, moved.Host, moved.PowerState, dst.ResourcePool, dst.Hosts[0].Ref)
	}
	back, err := s.RelocateVM(ctx, vm.Ref, RelocateSpec{ResourcePool: src.ResourcePool, Datastore: ds.Ref})
	if err != nil || back.ResourcePool != src.ResourcePool {
		t.Errorf("RelocateVM back: %v, pool %v; want %v", err, back.ResourcePool, src.ResourcePool)
	}
	if _, err := s.RelocateVM(ctx, Ref{Type: "VirtualMachine", Value: "vm-404"}, RelocateSpec{ResourcePool: dst.ResourcePool}); !errors.Is(err, ErrNotFound) {
		t.Errorf("RelocateVM of a missing VM: %v, want ErrNotFound", err)
	}
	if _, err := s.RelocateVM(ctx, vm.Ref, RelocateSpec{}); err == nil {
		t.Error("RelocateVM without a pool succeeded")
	}
}

func TestResizeVMGrowsAndRefusesShrink(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const uuid = "0d1f1a8e-5a55-4c3e-8a37-5f3f4b0c1e02"
	vm := e.create(t, uuid)
	root, err := e.s.AttachDisk(ctx, vm.Ref, "["+e.ds.Name+"] "+uuid+"/"+uuid+".vmdk", 1<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.ResizeVM(ctx, vm.Ref, 4, 2048, root.Key, 2<<20); err != nil {
		t.Fatalf("ResizeVM: %v", err)
	}
	got, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil || got.NumCPUs != 4 || got.MemoryMB != 2048 || len(got.Disks) != 1 || got.Disks[0].CapacityKB != 2<<20 {
		t.Fatalf("after ResizeVM: %+v, %v", got, err)
	}
	err = e.s.ResizeVM(ctx, vm.Ref, 1, 512, root.Key, 1<<20)
	if !errors.Is(err, ErrDiskShrink) {
		t.Errorf("shrinking ResizeVM: %v, want ErrDiskShrink", err)
	}
	if got, _ := e.s.GetVM(ctx, vm.Ref); got.NumCPUs != 4 {
		t.Errorf("a refused resize changed the VM: %d CPUs", got.NumCPUs)
	}
	// CPU and memory only: the disk is left alone.
	if err := e.s.ResizeVM(ctx, vm.Ref, 1, 512, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.s.GetVM(ctx, vm.Ref); got.NumCPUs != 1 || got.MemoryMB != 512 || got.Disks[0].CapacityKB != 2<<20 {
		t.Errorf("after a CPU and memory resize: %+v", got)
	}
}
