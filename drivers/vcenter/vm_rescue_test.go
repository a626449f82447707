package vcenter

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestRescueDiskBootOrderAndDetach(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const uuid = "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0b02"
	vm := e.create(t, uuid)
	rootPath := "[" + e.ds.Name + "] " + uuid + "/" + uuid + ".vmdk"
	rescuePath := "[" + e.ds.Name + "] " + uuid + "/img-1-rescue.vmdk"
	root, err := e.s.AttachDisk(ctx, vm.Ref, rootPath, 1<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := e.s.BootDisks(ctx, vm.Ref); err != nil || len(keys) != 0 {
		t.Errorf("boot order of a new vm: %v, %v; want the default", keys, err)
	}
	rescue, err := e.s.AttachDisk(ctx, vm.Ref, rescuePath, 1<<10, 0)
	if err != nil {
		t.Fatal(err)
	}

	d := vmMeasure(t, e.s, "SetBootDisk", func() error { return e.s.SetBootDisk(ctx, vm.Ref, rescue.Key) })
	if d["ReconfigVM_Task"] != 1 {
		t.Errorf("SetBootDisk calls = %v", d)
	}
	if keys, err := e.s.BootDisks(ctx, vm.Ref); err != nil || !slices.Equal(keys, []int32{rescue.Key}) {
		t.Errorf("boot order after SetBootDisk: %v, %v; want [%d]", keys, err, rescue.Key)
	}

	flat := filepath.Join(datastoreDir(t, e, uuid), "img-1-rescue.vmdk")
	if _, err := os.Stat(flat); err != nil {
		t.Fatalf("rescue disk file: %v", err)
	}
	d = vmMeasure(t, e.s, "DetachDisk", func() error { return e.s.DetachDisk(ctx, vm.Ref, rescue.Key, true) })
	if d["ReconfigVM_Task"] != 1 || d["RetrievePropertiesEx"] < 2 {
		t.Errorf("DetachDisk calls = %v", d)
	}
	got, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil || len(got.Disks) != 1 || got.Disks[0].Key != root.Key {
		t.Errorf("disks after DetachDisk: %+v, %v; want only the root disk", got.Disks, err)
	}
	if keys, err := e.s.BootDisks(ctx, vm.Ref); err != nil || !slices.Equal(keys, []int32{root.Key}) {
		t.Errorf("boot order after DetachDisk: %v, %v; want the root disk %d", keys, err, root.Key)
	}
	if _, err := os.Stat(flat); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rescue disk file after DetachDisk with destroy: %v, want gone", err)
	}
	if _, err := os.Stat(filepath.Join(datastoreDir(t, e, uuid), uuid+".vmdk")); err != nil {
		t.Errorf("root disk file: %v", err)
	}

	// Detaching a disk the VM does not have.
	if err := e.s.DetachDisk(ctx, vm.Ref, rescue.Key, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("DetachDisk of a detached disk: %v, want ErrNotFound", err)
	}
	// Detaching without destroy keeps the file.
	if err := e.s.DetachDisk(ctx, vm.Ref, root.Key, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(datastoreDir(t, e, uuid), uuid+".vmdk")); err != nil {
		t.Errorf("root disk file after DetachDisk without destroy: %v", err)
	}
}
