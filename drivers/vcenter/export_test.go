package vcenter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmware/govmomi/vim25/mo"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk"
	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
)

// exportEnv is a VM with a 2 MiB root disk holding raw's bytes.
func exportEnv(t *testing.T, uuid string) (*vmEnv, VM, []byte) {
	t.Helper()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, uuid)
	root := DatastorePath{Datastore: e.ds.Name, Path: uuid + "/" + uuid + ".vmdk"}
	if err := e.s.CreateVirtualDisk(ctx, e.cluster.Datacenter, root, 2048, DiskKindThin); err != nil {
		t.Fatal(err)
	}
	raw := vmdktest.Raw(1 << 20) // shorter than the disk: the rest reads as zeros
	if err := os.WriteFile(filepath.Join(datastoreDir(t, e, uuid), uuid+"-flat.vmdk"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.AttachDisk(ctx, vm.Ref, root.String(), 0, 0); err != nil {
		t.Fatal(err)
	}
	return e, vm, append(raw, make([]byte, 1<<20)...)
}

func TestExportRootDisk(t *testing.T) {
	t.Parallel()
	const uuid = "5b1c2d3e-0d3c-4a4e-9d43-3f1c8d7f0b09"
	e, vm, want := exportEnv(t, uuid)
	ctx := t.Context()
	var got ExportInfo
	var img []byte
	calls := vmMeasure(t, e.s, "ExportRootDisk", func() error {
		return e.s.ExportRootDisk(ctx, vm.Ref, uuid+"-snapshot", func(info ExportInfo, r io.Reader) error {
			got = info
			var err error
			img, err = io.ReadAll(r)
			return err
		})
	})
	for _, m := range []string{"CreateSnapshot_Task", "ExportSnapshot", "HttpNfcLeaseComplete", "RemoveSnapshot_Task"} {
		if calls[m] != 1 {
			t.Errorf("%s calls = %d, want 1 (%v)", m, calls[m], calls)
		}
	}
	if got.AdapterType != e.spec(uuid).SCSIController || got.GuestID != "otherGuest64" || got.CapacityBytes != 2<<20 || !got.Converted {
		t.Errorf("export info %+v", got)
	}
	im, err := vmdk.Open(bytes.NewReader(img), int64(len(img)), vmdk.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if im.Format() != vmdk.StreamOptimized {
		t.Fatalf("exported format %s", im.Format())
	}
	var flat bytes.Buffer
	if err := im.Convert(ctx, &flat); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(flat.Bytes(), want) {
		t.Fatal("exported disk differs from the VM's")
	}
	var m mo.VirtualMachine
	if err := e.s.retrieveOne(ctx, e.s.activeClient(), vm.Ref, []string{"snapshot"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Snapshot != nil && len(m.Snapshot.RootSnapshotList) > 0 {
		t.Errorf("snapshot left behind: %+v", m.Snapshot.RootSnapshotList)
	}
}

func TestExportRootDiskFailureCleansUp(t *testing.T) {
	t.Parallel()
	const uuid = "5b1c2d3e-0d3c-4a4e-9d43-3f1c8d7f0b0a"
	e, vm, _ := exportEnv(t, uuid)
	boom := errors.New("glance refused")
	calls := vmMeasure(t, e.s, "ExportRootDisk", func() error {
		err := e.s.ExportRootDisk(t.Context(), vm.Ref, "s", func(_ ExportInfo, r io.Reader) error {
			_, _ = io.CopyN(io.Discard, r, 1000)
			return boom
		})
		if !errors.Is(err, boom) {
			t.Errorf("err = %v, want the callback's", err)
		}
		return nil
	})
	if calls["HttpNfcLeaseAbort"] != 1 || calls["RemoveSnapshot_Task"] != 1 {
		t.Errorf("clean-up calls %v", calls)
	}
}

func TestExportRootDiskNoDisk(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	vm := e.create(t, "5b1c2d3e-0d3c-4a4e-9d43-3f1c8d7f0b0b")
	err := e.s.ExportRootDisk(context.Background(), vm.Ref, "s", func(ExportInfo, io.Reader) error { return nil })
	if !errors.Is(err, ErrNoRootDisk) {
		t.Fatalf("err = %v, want ErrNoRootDisk", err)
	}
}

// TestExportRootDiskOfACopiedDisk exports a disk made as the spawn makes
// it, by CopyVirtualDisk from the image cache: the simulator's copied
// descriptor still names the source's extent.
func TestExportRootDiskOfACopiedDisk(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	const uuid = "5b1c2d3e-0d3c-4a4e-9d43-3f1c8d7f0b0c"
	vm := e.create(t, uuid)
	src := DatastorePath{Datastore: e.ds.Name, Path: "cache/img/img.vmdk"}
	if err := e.s.MakeDirectory(ctx, e.cluster.Datacenter, src.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := e.s.CreateVirtualDisk(ctx, e.cluster.Datacenter, src, 1024, DiskKindThin); err != nil {
		t.Fatal(err)
	}
	raw := vmdktest.Raw(1 << 20)
	if err := os.WriteFile(filepath.Join(datastoreDir(t, e, "cache/img"), "img-flat.vmdk"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := e.s.CopyToInstance(ctx, e.cluster.Datacenter, src, DatastorePath{Datastore: e.ds.Name, Path: uuid}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.AttachDisk(ctx, vm.Ref, root.String(), 0, 0); err != nil {
		t.Fatal(err)
	}
	var img []byte
	if err := e.s.ExportRootDisk(ctx, vm.Ref, "s", func(_ ExportInfo, r io.Reader) error {
		var err error
		img, err = io.ReadAll(r)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	im, err := vmdk.Open(bytes.NewReader(img), int64(len(img)), vmdk.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	var flat bytes.Buffer
	if err := im.Convert(ctx, &flat); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(flat.Bytes(), raw) {
		t.Fatal("exported disk differs from the image it was copied from")
	}
}
