package vcenter

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
)

// importVMs returns the names of the import VMs registered in the
// simulator.
func importVMs(t *testing.T, s *Session) []string {
	t.Helper()
	ctx := t.Context()
	c := s.activeClient()
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = v.Destroy(context.Background()) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name"}, &vms); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, vm := range vms {
		if strings.HasPrefix(vm.Name, importVMPrefix) {
			names = append(names, vm.Name)
		}
	}
	return names
}

// importEnv prepares a staging folder for one import and returns the
// import with everything but the body.
func importEnv(t *testing.T, s *Session, dir string, capacity int64) diskImport {
	t.Helper()
	ctx := t.Context()
	target, err := s.importTargetFor(ctx, simDC, simDS)
	if err != nil {
		t.Fatal(err)
	}
	stage := DatastorePath{Datastore: simDS, Path: dir}
	if err := s.MakeDirectory(ctx, simDC, stage.Join("disk")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.DeleteDatastoreFile(context.Background(), simDC, stage) })
	return diskImport{dc: simDC, target: target, vmx: stage.Join("image.vmx"), disk: stage.Join("disk", "disk.vmdk"), capacity: capacity}
}

// TestImportDisk imports streamOptimized images the way vCenter takes
// them: the disk made holds the image's flat disk byte for byte and has
// the image's capacity (also when the import asked for another, as nova's
// 1 KiB does), the transient VM is gone, and the SOAP calls are the few
// documented (the lease is read until ready: 1-2 reads unless the machine
// is slow).
func TestImportDisk(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	raw := vmdktest.Raw(3<<20 + 64<<10)
	for _, tc := range []struct {
		name     string
		img      []byte
		capacity int64 // asked for in the import spec
		size     int64 // announced; 0 unknown
	}{
		{"qemu-img streamOptimized", vmdktest.Qemu(t, raw, "streamOptimized"), int64(len(raw)), -1},
		{"VMware streamOptimized, size unknown", vmdktest.Stream(raw, 128, false, false), int64(len(raw)), 0},
		{"grains out of order", vmdktest.Stream(raw, 8, true, false), int64(len(raw)), -1},
		{"capacity asked 1 KiB", vmdktest.Stream(raw, 128, false, false), 1024, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := importEnv(t, s, "import-"+strings.NewReplacer(" ", "-", ",", "").Replace(tc.name), tc.capacity)
			in.body, in.size = bytes.NewReader(tc.img), tc.size
			if tc.size < 0 {
				in.size = int64(len(tc.img))
			}
			calls := measure(t, s, "importDisk "+tc.name, func() error { return s.importDisk(ctx, in) })
			for m, want := range map[string]int64{"ImportVApp": 1, "HttpNfcLeaseComplete": 1, "UnregisterVM": 1, "HttpNfcLeaseAbort": 0} {
				if calls[m] != want {
					t.Errorf("%s calls = %d, want %d (%v)", m, calls[m], want, calls)
				}
			}
			if calls["RetrievePropertiesEx"] < 1 {
				t.Errorf("the lease's state was never read (%v)", calls)
			}
			flat, err := s.Download(ctx, simDC, in.disk.Dir().Join("disk-flat.vmdk"), 16<<20)
			if err != nil || !bytes.Equal(flat, raw) {
				t.Errorf("imported extent: %d bytes, %v; equal to the image's disk: %v", len(flat), err, bytes.Equal(flat, raw))
			}
			if kb, err := s.VirtualDiskCapacityKB(ctx, simDC, in.disk); err != nil || kb != int64(len(raw)>>10) {
				t.Errorf("imported capacity = %d KiB, %v; want %d", kb, err, len(raw)>>10)
			}
			if left := importVMs(t, s); len(left) != 0 {
				t.Errorf("import VMs left registered: %v", left)
			}
		})
	}
}

// TestImportDiskRefused sends what ESX refuses on a disk URL: the import
// fails, its lease is aborted and its VM does not stay registered.
func TestImportDiskRefused(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	raw := vmdktest.Raw(2 << 20)
	stream := vmdktest.Stream(raw, 128, false, false)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"a flat disk", raw},
		{"a monolithicSparse image", vmdktest.Sparse(raw, 16, 64, false)},
		{"a streamOptimized image cut short", stream[:len(stream)/2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := importEnv(t, s, "refused-"+strings.ReplaceAll(tc.name, " ", "-"), int64(len(raw)))
			in.body, in.size = bytes.NewReader(tc.body), int64(len(tc.body))
			before := s.Calls()
			err := s.importDisk(ctx, in)
			calls := delta(before, s.Calls())
			t.Logf("%v (SOAP calls %v)", err, calls)
			if err == nil || !strings.Contains(err.Error(), "400 Bad Request") {
				t.Fatalf("importDisk: %v, want the server's 400", err)
			}
			if calls["HttpNfcLeaseAbort"] != 1 || calls["HttpNfcLeaseComplete"] != 0 {
				t.Errorf("lease calls %v, want it aborted", calls)
			}
			if left := importVMs(t, s); len(left) != 0 {
				t.Errorf("import VMs left registered: %v", left)
			}
		})
	}
}

// TestImportDiskCheckFails stops an import whose image the caller finds
// unsound after the upload: the lease is aborted, not completed.
func TestImportDiskCheckFails(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	raw := vmdktest.Raw(1 << 20)
	in := importEnv(t, s, "check-fails", int64(len(raw)))
	img := vmdktest.Stream(raw, 128, false, false)
	in.body, in.size = bytes.NewReader(img), int64(len(img))
	bad := errors.New("image found unsound")
	in.check = func() error { return bad }
	before := s.Calls()
	err := s.importDisk(t.Context(), in)
	calls := delta(before, s.Calls())
	if !errors.Is(err, bad) || calls["HttpNfcLeaseAbort"] != 1 || calls["HttpNfcLeaseComplete"] != 0 {
		t.Errorf("importDisk: %v with calls %v; want the check's error and the lease aborted", err, calls)
	}
	if left := importVMs(t, s); len(left) != 0 {
		t.Errorf("import VMs left registered: %v", left)
	}
}

// TestImportTargetFor finds the datacenter's VM folder and a resource
// pool of a cluster mounting the datastore, and refuses an unknown
// datastore.
func TestImportTargetFor(t *testing.T) {
	t.Parallel()
	s := fileSession(t)
	ctx := t.Context()
	target, err := s.importTargetFor(ctx, simDC, simDS)
	if err != nil {
		t.Fatal(err)
	}
	if target.folder.Type != "Folder" || target.pool.Type != "ResourcePool" {
		t.Errorf("target %+v", target)
	}
	before := s.Calls()
	if _, err := s.importTargetFor(ctx, simDC, "no-such-ds"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown datastore: %v, want ErrNotFound", err)
	}
	if d := delta(before, s.Calls()); d["RetrievePropertiesEx"] != 1 || len(d) != 1 {
		t.Errorf("calls %v, want one RetrievePropertiesEx", d)
	}
}
