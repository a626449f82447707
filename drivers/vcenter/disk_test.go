package vcenter

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/types"
)

func TestVirtualDisks(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	dir := DatastorePath{simDS, "disks"}
	disk := dir.Join("d.vmdk")

	if err := s.CreateVirtualDisk(ctx, simDC, disk, 1024, DiskKindThin); !errors.Is(err, ErrNotFound) {
		t.Errorf("create in a missing directory: %v, want ErrNotFound", err)
	}
	if err := s.MakeDirectory(ctx, simDC, dir); err != nil {
		t.Fatal(err)
	}
	measure(t, s, "CreateVirtualDisk", func() error { return s.CreateVirtualDisk(ctx, simDC, disk, 2048, DiskKindPreallocated) })
	if err := s.CreateVirtualDisk(ctx, simDC, disk, 2048, DiskKindThin); !errors.Is(err, ErrFileExists) {
		t.Errorf("second create: %v, want ErrFileExists", err)
	}
	if err := s.CreateVirtualDisk(ctx, simDC, dir.Join("s.vmdk"), 2048, DiskKindSparse); !errors.Is(err, ErrUnsupportedDiskKind) {
		t.Errorf("sparse create: %v, want ErrUnsupportedDiskKind", err)
	}
	var capKB int64
	measure(t, s, "VirtualDiskCapacityKB", func() (err error) { capKB, err = s.VirtualDiskCapacityKB(ctx, simDC, disk); return err })
	if capKB != 2048 {
		t.Errorf("capacity = %d KiB, want 2048", capKB)
	}

	measure(t, s, "ExtendVirtualDisk", func() error { return s.ExtendVirtualDisk(ctx, simDC, disk, 4096) })
	if capKB, _ = s.VirtualDiskCapacityKB(ctx, simDC, disk); capKB != 4096 {
		t.Errorf("capacity after extend = %d KiB, want 4096", capKB)
	}
	err := s.ExtendVirtualDisk(ctx, simDC, disk, 1024)
	if err == nil || !fault.Is(err, &types.FileFault{}) {
		t.Errorf("shrink: %v, want a FileFault", err)
	}

	cp := dir.Join("copy.vmdk")
	measure(t, s, "CopyVirtualDisk", func() error { return s.CopyVirtualDisk(ctx, simDC, disk, cp, false) })
	if capKB, _ = s.VirtualDiskCapacityKB(ctx, simDC, cp); capKB != 4096 {
		t.Errorf("capacity of copy = %d KiB, want 4096", capKB)
	}
	if ok, _ := s.FileExists(ctx, simDC, dir.Join("copy-flat.vmdk")); !ok {
		t.Error("copy has no flat extent")
	}
	if err := s.CopyVirtualDisk(ctx, simDC, disk, cp, false); !errors.Is(err, ErrFileExists) {
		t.Errorf("copy onto existing: %v, want ErrFileExists", err)
	}
	if err := s.CopyVirtualDisk(ctx, simDC, dir.Join("none.vmdk"), dir.Join("x.vmdk"), false); !errors.Is(err, ErrNotFound) {
		t.Errorf("copy of missing: %v, want ErrNotFound", err)
	}
	if err := s.ExtendVirtualDisk(ctx, simDC, dir.Join("none.vmdk"), 4096); err == nil {
		t.Error("extend of missing disk succeeded")
	}

	measure(t, s, "DeleteVirtualDisk", func() error { return s.DeleteVirtualDisk(ctx, simDC, cp) })
	measure(t, s, "DeleteVirtualDisk (missing)", func() error { return s.DeleteVirtualDisk(ctx, simDC, cp) })
	for _, p := range []DatastorePath{cp, dir.Join("copy-flat.vmdk")} {
		if ok, _ := s.FileExists(ctx, simDC, p); ok {
			t.Errorf("%s survived DeleteVirtualDisk", p)
		}
	}
	if ok, _ := s.FileExists(ctx, simDC, disk); !ok {
		t.Error("source disk gone")
	}
}

func TestCopyToInstance(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	ic, err := NewImageCache(s, "127.0.0.1_base")
	if err != nil {
		t.Fatal(err)
	}
	img := bytes.Repeat([]byte{0xAB}, 3*1024*1024) // 3 MiB flat image
	cached, err := ic.Ensure(ctx, simDC, simDS, "img-1", fetchBytes(img, nil), DiskKindPreallocated)
	if err != nil {
		t.Fatal(err)
	}

	inst := DatastorePath{simDS, "inst-1"}
	var root DatastorePath
	measure(t, s, "CopyToInstance (extend)", func() (err error) {
		root, err = s.CopyToInstance(ctx, simDC, cached, inst, 1)
		return err
	})
	if want := inst.Join("inst-1.vmdk"); root != want {
		t.Errorf("root disk = %s, want %s", root, want)
	}
	capKB, err := s.VirtualDiskCapacityKB(ctx, simDC, root)
	if err != nil || capKB != 1<<20 {
		t.Errorf("root capacity = %d KiB, %v; want %d", capKB, err, 1<<20)
	}
	flat, err := s.Download(ctx, simDC, inst.Join("inst-1-flat.vmdk"), 8<<20)
	if err != nil || !bytes.Equal(flat, img) {
		t.Errorf("root extent: %d bytes, %v; want the image's %d bytes", len(flat), err, len(img))
	}
	// The cached image is untouched.
	if capKB, _ := s.VirtualDiskCapacityKB(ctx, simDC, cached); capKB != 3*1024 {
		t.Errorf("cached capacity = %d KiB, want %d", capKB, 3*1024)
	}

	// A root size below the image's keeps the image's size.
	inst2 := DatastorePath{simDS, "inst-2"}
	measure(t, s, "CopyToInstance (no extend)", func() (err error) {
		root, err = s.CopyToInstance(ctx, simDC, cached, inst2, 0)
		return err
	})
	if capKB, _ := s.VirtualDiskCapacityKB(ctx, simDC, root); capKB != 3*1024 {
		t.Errorf("root capacity = %d KiB, want %d", capKB, 3*1024)
	}
	if _, err := s.CopyToInstance(ctx, simDC, cached, inst2, 0); !errors.Is(err, ErrFileExists) {
		t.Errorf("second CopyToInstance: %v, want ErrFileExists", err)
	}
}
