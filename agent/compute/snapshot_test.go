package compute

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// snapHV exports a fixed image.
type snapHV struct {
	*srHV
	data string
	fail error
}

func (f snapHV) ExportRootDisk(_ context.Context, vm vcenter.Ref, name string, fn func(vcenter.ExportInfo, io.Reader) error) error {
	if err := f.call("ExportRootDisk %s %s", vm.Value, name); err != nil {
		return err
	}
	if f.fail != nil {
		return f.fail
	}
	return fn(vcenter.ExportInfo{AdapterType: "lsiLogic", GuestID: "otherGuest", CapacityBytes: 1 << 20}, strings.NewReader(f.data))
}

// snapImages is a glance that records the writes.
type snapImages struct {
	srImages
	updates  []cloud.ImageUpdate
	uploaded string
	deleted  []string
	failPut  error
}

func (g *snapImages) Image(_ context.Context, _, id string) (cloud.Image, error) {
	return cloud.Image{ID: id, Name: "snap", Status: "queued",
		Properties: map[string]any{"instance_uuid": srUUID, "image_type": "snapshot", "vmware_adaptertype": "ide"}}, nil
}

func (g *snapImages) UpdateImage(_ context.Context, _, _ string, u cloud.ImageUpdate) error {
	g.updates = append(g.updates, u)
	return nil
}

func (g *snapImages) UploadImage(_ context.Context, _, _ string, r io.Reader) error {
	b, err := io.ReadAll(r)
	g.uploaded = string(b)
	if err != nil {
		return err
	}
	return g.failPut
}

func (g *snapImages) DeleteImage(_ context.Context, _, id string) error {
	g.deleted = append(g.deleted, id)
	return nil
}

func TestSnapshotDriverFollowsVmopsSnapshot(t *testing.T) {
	t.Parallel()
	hv := &srHV{vm: srVM(vcenter.PowerStateOn)}
	g := &snapImages{}
	l := &lifecycle{hv: snapHV{srHV: hv, data: "KDMV-stream"}, images: g}
	inst := srInstance()
	inst.SetString("project_id", "p1")
	var states []string
	update := func(_ context.Context, state, expected string) error {
		states = append(states, expected+">"+state)
		return nil
	}
	if err := l.driverSnapshot(context.Background(), rpc.Context{}, inst, "img-snap", "image_snapshot", update); err != nil {
		t.Fatal(err)
	}
	if want := []string{"image_snapshot>image_pending_upload", "image_pending_upload>image_uploading"}; !slices.Equal(states, want) {
		t.Errorf("task states %v, want %v", states, want)
	}
	if want := []string{"ExportRootDisk vm-1 " + srUUID + "-snapshot"}; !slices.Equal(hv.calls, want) {
		t.Errorf("calls %v, want %v", hv.calls, want)
	}
	if len(g.updates) != 1 {
		t.Fatalf("image updates %+v", g.updates)
	}
	u := g.updates[0]
	// nova's IMAGE_API.update keeps the other properties (purge_props False).
	wantProps := map[string]any{"vmware_image_version": "1", "vmware_disktype": "streamOptimized", "owner_id": "p1"}
	if u.DiskFormat != "vmdk" || u.ContainerFormat != "bare" || u.Name != "snap" || !maps.Equal(u.Properties, wantProps) ||
		len(u.Remove) != 0 {
		t.Errorf("image update %+v", u)
	}
	if g.uploaded != "KDMV-stream" {
		t.Errorf("uploaded %q", g.uploaded)
	}
}

func TestSnapshotDriverFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	none := func(context.Context, string, string) error { return nil }

	// The upload fails: the error comes back; delete_image_on_error
	// deletes the image.
	g := &snapImages{failPut: errors.New("glance 500")}
	l := &lifecycle{hv: snapHV{srHV: &srHV{vm: srVM(vcenter.PowerStateOn)}, data: "x"}, images: g}
	err := l.driverSnapshot(ctx, rpc.Context{}, srInstance(), "img-snap", "image_snapshot", none)
	if err == nil || !strings.Contains(err.Error(), "glance 500") {
		t.Fatalf("err = %v", err)
	}
	if err := l.deleteImageOnError(ctx, rpc.Context{}, "img-snap", err); err == nil || !slices.Equal(g.deleted, []string{"img-snap"}) {
		t.Errorf("delete_image_on_error: %v, deleted %v", err, g.deleted)
	}

	// A VM without disks: nova's NoRootDiskDefined, before any state change.
	vm := srVM(vcenter.PowerStateOn)
	vm.Disks = nil
	called := false
	l = &lifecycle{hv: snapHV{srHV: &srHV{vm: vm}}, images: &snapImages{}}
	err = l.driverSnapshot(ctx, rpc.Context{}, srInstance(), "i", "image_snapshot", func(context.Context, string, string) error { called = true; return nil })
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "NoRootDiskDefined" || called {
		t.Errorf("no disk: %v (state changed %v)", err, called)
	}

	// No VM: InstanceNotFound.
	l = &lifecycle{hv: snapHV{srHV: &srHV{}}, images: &snapImages{}}
	if err := l.driverSnapshot(ctx, rpc.Context{}, srInstance(), "i", "image_snapshot", none); !errors.As(err, &re) || re.Class != "InstanceNotFound" {
		t.Errorf("no VM: %v", err)
	}

	// Without the export or the glance writes the snapshot says so.
	l = &lifecycle{hv: &srHV{vm: srVM(vcenter.PowerStateOn)}, images: &snapImages{}}
	if err := l.driverSnapshot(ctx, rpc.Context{}, srInstance(), "i", "image_snapshot", none); err == nil || !strings.Contains(err.Error(), "cannot export") {
		t.Errorf("no exporter: %v", err)
	}
	l = &lifecycle{hv: snapHV{srHV: &srHV{vm: srVM(vcenter.PowerStateOn)}}, images: srImages{}}
	if err := l.driverSnapshot(ctx, rpc.Context{}, srInstance(), "i", "image_snapshot", none); err == nil || !strings.Contains(err.Error(), "glance") {
		t.Errorf("no glance writes: %v", err)
	}
}

func TestShelveMapsTheSnapshotTaskStates(t *testing.T) {
	t.Parallel()
	for from, want := range map[string]string{"image_pending_upload": "shelving_image_pending_upload",
		"image_uploading": "shelving_image_uploading", "shelving": "shelving"} {
		if got := shelvingStates[from]; got != want {
			t.Errorf("%s -> %s, want %s", from, got, want)
		}
	}
}

// shelveHV records datastore deletions and says every file exists.
type shelveHV struct {
	*srHV
	deleted *[]string
}

func (f shelveHV) FileExists(context.Context, string, vcenter.DatastorePath) (bool, error) {
	return true, nil
}

func (f shelveHV) DeleteDatastoreFile(_ context.Context, dc string, p vcenter.DatastorePath) error {
	*f.deleted = append(*f.deleted, dc+" "+p.String())
	return nil
}

func TestShelveOffloadRemovesTheInstanceDiskDirectory(t *testing.T) {
	t.Parallel()
	var deleted []string
	vm := srVM(vcenter.PowerStateOff)
	vm.Disks = append(vm.Disks, vcenter.Disk{Key: 2001, FileName: "[ds1] volume-1/volume-1.vmdk"})
	l := &lifecycle{hv: shelveHV{srHV: &srHV{vm: vm}, deleted: &deleted}}
	l.removeDiskDirs(context.Background(), srInstance(), vm)
	if want := []string{"DC0 [ds1] " + srUUID}; !slices.Equal(deleted, want) {
		t.Errorf("deleted %v, want %v (volumes left alone)", deleted, want)
	}
}
