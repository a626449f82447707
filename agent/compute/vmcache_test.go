package compute

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// findOnly is a Hypervisor that only finds VMs by instance uuid.
type findOnly struct {
	Hypervisor
	vms   map[string]vcenter.Ref
	finds int
}

func (f *findOnly) FindVMByInstanceUUID(_ context.Context, uuid string) (vcenter.VM, error) {
	f.finds++
	ref, ok := f.vms[uuid]
	if !ok {
		return vcenter.VM{}, fmt.Errorf("find %s: %w", uuid, vcenter.ErrNotFound)
	}
	return vcenter.VM{Ref: ref, InstanceUUID: uuid}, nil
}

func TestWithVM(t *testing.T) {
	t.Parallel()
	vm := func(v string) vcenter.Ref { return vcenter.Ref{Type: "VirtualMachine", Value: v} }
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", "u1")
	gone := func(ref vcenter.Ref) error {
		if ref == vm("vm-old") {
			return fmt.Errorf("power off: %w", vcenter.ErrNotFound)
		}
		return nil
	}
	tests := []struct {
		name      string
		indexed   map[string]vcenter.Ref // watcher's view
		inVCenter map[string]vcenter.Ref
		wantRef   vcenter.Ref
		wantFinds int
		wantErr   string
	}{
		{"indexed: no lookup", map[string]vcenter.Ref{"u1": vm("vm-1")}, map[string]vcenter.Ref{"u1": vm("vm-1")}, vm("vm-1"), 0, ""},
		{"not indexed: looked up", nil, map[string]vcenter.Ref{"u1": vm("vm-1")}, vm("vm-1"), 1, ""},
		{"stale index: looked up again", map[string]vcenter.Ref{"u1": vm("vm-old")}, map[string]vcenter.Ref{"u1": vm("vm-2")}, vm("vm-2"), 1, ""},
		{"gone everywhere: InstanceNotFound", map[string]vcenter.Ref{"u1": vm("vm-old")}, nil, vcenter.Ref{}, 1, "InstanceNotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hv := &findOnly{vms: tt.inVCenter}
			l := &lifecycle{hv: hv}
			for uuid, ref := range tt.indexed {
				l.vms.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{InstanceUUID: uuid, Ref: ref}})
			}
			var got vcenter.Ref
			err := l.withVM(context.Background(), inst, func(ref vcenter.Ref) error {
				if err := gone(ref); err != nil {
					return err
				}
				got = ref
				return nil
			})
			if tt.wantErr != "" {
				if !isRemote(err, tt.wantErr) {
					t.Fatalf("err %v, want %s", err, tt.wantErr)
				}
			} else if err != nil || got != tt.wantRef {
				t.Fatalf("ran on %v (%v), want %v", got, err, tt.wantRef)
			}
			if hv.finds != tt.wantFinds {
				t.Errorf("%d vCenter lookups, want %d", hv.finds, tt.wantFinds)
			}
			if ref, ok := l.vms.get("u1"); ok && ref == vm("vm-old") {
				t.Error("the stale reference stayed in the index")
			}
		})
	}
	// A removal of an older VM of the same instance keeps the newer one.
	var x vmIndex
	x.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-3")}})
	x.apply(vcenter.VMEvent{Kind: vcenter.Removed, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-0")}})
	if ref, ok := x.get("u2"); !ok || ref != vm("vm-3") {
		t.Errorf("index after removing an older VM: %v %v", ref, ok)
	}
	x.apply(vcenter.VMEvent{Kind: vcenter.Removed, State: vcenter.VMState{InstanceUUID: "u2", Ref: vm("vm-3")}})
	if _, ok := x.get("u2"); ok {
		t.Error("a removed VM stayed in the index")
	}
}

// simRig is a lifecycle on a logged-in session to a vCenter simulator that
// records the session's SOAP calls in order, task polls apart.
type simRig struct {
	s       *vcenter.Session
	l       *lifecycle
	cluster vcenter.Cluster
	folder  vcenter.Ref

	mu        sync.Mutex
	calls     []string
	polls     int
	seenPolls int64
}

func newSimRig(t *testing.T) *simRig {
	t.Helper()
	ctx := t.Context()
	sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1, ListenAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	u := sim.URL()
	pass, _ := u.User.Password()
	bare := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	r := &simRig{}
	s, err := vcenter.New(vcenter.Config{URL: bare.String(), User: u.User.Username(), Password: pass, Insecure: true,
		KeepAlive: time.Hour, OnCall: r.observe}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.s = s
	r.mu.Unlock()
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Logout(context.Background()) })
	clusters, err := s.Clusters(ctx)
	if err != nil || len(clusters) != 1 {
		t.Fatalf("clusters %v: %v", clusters, err)
	}
	r.cluster = clusters[0]
	if r.folder, err = s.EnsureFolderPath(ctx, r.cluster.Datacenter, "OpenStack", "Project (p1)", "Instances"); err != nil {
		t.Fatal(err)
	}
	r.l = &lifecycle{hv: s, host: "host1", log: zerolog.Nop()}
	return r
}

// observe is the session's OnCall: a RetrievePropertiesEx during which
// the session counted a task poll is a poll (the calls are sequential).
func (r *simRig) observe(method string, _ time.Duration, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s == nil {
		return
	}
	if n := r.s.TaskPolls(); n != r.seenPolls && method == "RetrievePropertiesEx" {
		r.seenPolls = n
		r.polls++
		return
	}
	r.calls = append(r.calls, method)
}

// measure returns the calls f makes, task polls left out, and how many
// polls there were.
func (r *simRig) measure(t *testing.T, f func()) ([]string, int) {
	t.Helper()
	r.mu.Lock()
	r.calls, r.polls = nil, 0
	r.mu.Unlock()
	f()
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls), r.polls
}

// createVM creates the instance's VM with a root disk in the instance's
// directory, in the given power state, and reports it to the watcher's
// index as the watcher would (indexed false: the watcher has not seen it).
func (r *simRig) createVM(t *testing.T, uuid, power string, indexed bool) vcenter.VM {
	t.Helper()
	ctx := t.Context()
	dc, ds := r.cluster.Datacenter, r.cluster.Datastores[0]
	dir := vcenter.DatastorePath{Datastore: ds.Name, Path: uuid}
	disk := dir.Join(uuid + ".vmdk")
	if err := r.s.MakeDirectory(ctx, dc, dir); err != nil {
		t.Fatal(err)
	}
	if err := r.s.CreateVirtualDisk(ctx, dc, disk, 1024, vcenter.DiskKindThin); err != nil {
		t.Fatal(err)
	}
	vm, err := r.s.CreateVM(ctx, vcenter.VMSpec{Name: uuid, InstanceUUID: uuid, NumCPUs: 1, MemoryMB: 256, GuestID: "otherGuest64",
		Folder: r.folder, ResourcePool: r.cluster.ResourcePool, Datastore: ds.Ref, DatastorePath: dir.Join(uuid + ".vmx").String(),
		SCSIController: vcenter.SCSIParaVirtual, Disks: []string{disk.String()},
		ExtraConfig: map[string]string{vcenter.VNCEnabledKey: "true", vcenter.VNCPortKey: "5901"}})
	if err != nil {
		t.Fatal(err)
	}
	switch power {
	case vcenter.PowerStateOn:
		err = r.s.PowerOn(ctx, vm.Ref)
	case vcenter.PowerStateSuspended:
		if err = r.s.PowerOn(ctx, vm.Ref); err == nil {
			err = r.s.Suspend(ctx, vm.Ref)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if vm, err = r.s.GetVM(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	if indexed {
		r.index(vm)
	}
	return vm
}

// index reports the VM's current state as the watcher would.
func (r *simRig) index(vm vcenter.VM) {
	r.l.vms.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{Ref: vm.Ref, InstanceUUID: vm.InstanceUUID,
		Name: vm.Name, PowerState: vm.PowerState, Host: vm.Host}})
}

// powerOf reads the VM's power state.
func (r *simRig) powerOf(t *testing.T, vm vcenter.Ref) string {
	t.Helper()
	got, err := r.s.GetVM(t.Context(), vm)
	if err != nil {
		t.Fatal(err)
	}
	return got.PowerState
}

// simInstance is an instance of uuid on the rig's cluster.
func simInstance(uuid string) *ovo.Object {
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", uuid)
	inst.SetString("node", "domain-c0.vc")
	inst.SetString("vm_state", "active")
	inst.SetInt("power_state", powerRunning)
	inst.SetStringDict("system_metadata", map[string]string{})
	inst.ResetChanges()
	return inst
}

// errClass is the nova exception class of err, its text if it is none.
func errClass(err error) string {
	if c := remoteClass(err); c != "" || err == nil {
		return c
	}
	return err.Error()
}
