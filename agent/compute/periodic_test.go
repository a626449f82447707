package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// condCall is one request to the scripted conductor.
type condCall struct {
	Method    string // object_action or object_class_action_versions
	Name      string // the object class
	ObjMethod string
	Args      []any
	Kwargs    map[string]any
	Obj       *ovo.Object // object_action's object
	Context   rpc.Context
}

func (c condCall) String() string { return c.Name + "." + c.ObjMethod }

// scriptConductor answers conductor's object methods with a function of
// the call and records the calls.
type scriptConductor struct {
	mu     sync.Mutex
	calls  []condCall
	answer func(c condCall) (any, error) // an *ovo.Object, nil, or an error
}

func (s *scriptConductor) handle(method string) rpc.Handler {
	return func(ctx context.Context, r *rpc.Request) (any, error) {
		var a struct {
			Objname   string          `json:"objname"`
			Objmethod string          `json:"objmethod"`
			Objinst   json.RawMessage `json:"objinst"`
			Args      []any           `json:"args"`
			Kwargs    map[string]any  `json:"kwargs"`
		}
		if err := json.Unmarshal(r.Args, &a); err != nil {
			return nil, err
		}
		c := condCall{Method: method, Name: a.Objname, ObjMethod: a.Objmethod, Args: a.Args, Kwargs: a.Kwargs, Context: r.Context}
		if len(a.Objinst) > 0 {
			o, err := ovo.NovaCodec().Unmarshal(a.Objinst)
			if err != nil {
				return nil, err
			}
			c.Obj, c.Name = o, o.Name
		}
		s.mu.Lock()
		s.calls = append(s.calls, c)
		answer := s.answer
		s.mu.Unlock()
		var res any
		var err error
		if answer != nil {
			res, err = answer(c)
		}
		if err != nil {
			return nil, err
		}
		var enc any
		if o, ok := res.(*ovo.Object); ok && o != nil {
			if enc, err = ovo.NovaCodec().EncodeEntity(o); err != nil {
				return nil, err
			}
		}
		if method == "object_action" {
			return []any{map[string]any{"obj_what_changed": []any{}}, enc}, nil
		}
		return enc, nil
	}
}

// recorded returns the calls so far, as "Class.method".
func (s *scriptConductor) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, c := range s.calls {
		out = append(out, c.String())
	}
	return out
}

func (s *scriptConductor) callsOf(name string) []condCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []condCall
	for _, c := range s.calls {
		if c.String() == name {
			out = append(out, c)
		}
	}
	return out
}

// perEnv is a periodic on host1 with a scripted conductor, a fake vCenter
// and a compute server for host2 recording the casts it gets.
type perEnv struct {
	p     *periodic
	hv    *perHV
	cache *perCache
	cond  *scriptConductor
	casts *rszCasts
	// source is the host whose compute server records the casts.
	source string
}

func newPerEnv(t *testing.T, cfg PeriodicConfig, answer func(c condCall) (any, error)) *perEnv {
	t.Helper()
	return newPerEnvWithSource(t, cfg, "host2-"+newUUID()[:8], answer)
}

// newPerEnvWithSource is newPerEnv whose recording compute server serves
// source.
func newPerEnvWithSource(t *testing.T, cfg PeriodicConfig, source string, answer func(c condCall) (any, error)) *perEnv {
	t.Helper()
	u, err := rpc.ParseTransportURL("rabbit://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rpc.NewTransport(rpc.Config{URL: u, Options: rpc.DefaultOptions(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	// A conductor topic and a source host of the test's own: the queues
	// "conductor" and "compute.host2" are shared by every exchange of the
	// broker, and other tests (of other packages, or other runs) may
	// consume them.
	id := newUUID()[:8]
	exchange, condTopic := "vcagent_periodic_test_"+id, "conductor_periodic_"+id
	sc := &scriptConductor{answer: answer}
	casts := &rszCasts{}
	serve := func(target rpc.Target, eps ...rpc.Endpoint) {
		consuming := make(chan struct{})
		var once sync.Once
		srv, err := tr.NewServer(rpc.ServerConfig{Target: target, Endpoints: eps, OnConsuming: func(on bool) {
			if on {
				once.Do(func() { close(consuming) })
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		select {
		case <-consuming:
		case <-time.After(15 * time.Second):
			t.Fatal("broker not reachable")
		}
	}
	serve(rpc.Target{Exchange: exchange, Topic: condTopic, Server: "fake"},
		rpc.Endpoint{Version: "3.0", Methods: map[string]rpc.Handler{
			"object_action":                sc.handle("object_action"),
			"object_class_action_versions": sc.handle("object_class_action_versions"),
		}})
	serve(rpc.Target{Exchange: exchange, Topic: Topic, Server: source},
		rpc.Endpoint{Version: "6.0", Methods: map[string]rpc.Handler{"confirm_resize": casts.handler}})
	hv := &perHV{folders: map[string]bool{}}
	cache := &perCache{}
	cond := NewConductor(tr, exchange, 10*time.Second, zerolog.Nop())
	cond.client.Target.Topic = condTopic
	l := &lifecycle{cond: cond, hv: hv, cache: cache, host: "host1", log: zerolog.Nop(),
		sched: tr.NewClient(rpc.Target{Exchange: exchange, Topic: "scheduler", Fanout: true, Version: "4.2"}),
		tasks: tr.NewClient(rpc.Target{Exchange: exchange, Topic: "conductor", Namespace: "compute_task", Version: "1.19"})}
	p := &periodic{cfg: cfg, l: l, rt: &resourceTracker{vc: hv}, host: "host1", log: zerolog.Nop(),
		now: func() time.Time { return perNow }}
	return &perEnv{p: p, hv: hv, cache: cache, cond: sc, casts: casts, source: source}
}

// perNow is the tests' present.
var perNow = time.Date(2026, 12, 2, 10, 30, 0, 0, time.UTC) //nolint:gochecknoglobals // a constant

// perHV is a vCenter of one cluster (hosts host-1, host-2; datastores ds1
// and ds2, and ds3 in maintenance) with an in-memory folder tree; it
// records the calls. Methods it does not define panic (nil embedded
// interface).
type perHV struct {
	Hypervisor
	mu      sync.Mutex
	folders map[string]bool // "[ds] a/b"
	vms     map[string]vcenter.VM
	calls   []string
}

func (h *perHV) record(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, fmt.Sprintf(format, args...))
}

func (h *perHV) Clusters(context.Context, ...string) ([]vcenter.Cluster, error) {
	ds := func(name, mode string) vcenter.Datastore {
		return vcenter.Datastore{Ref: vcenter.Ref{Type: "Datastore", Value: name}, Name: name, Type: "VMFS", Accessible: true, MaintenanceMode: mode}
	}
	return []vcenter.Cluster{{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c1"}, Name: "c1", Datacenter: "DC0",
		Hosts:      []vcenter.Host{{Ref: vcenter.Ref{Type: "HostSystem", Value: "host-1"}}, {Ref: vcenter.Ref{Type: "HostSystem", Value: "host-2"}}},
		Datastores: []vcenter.Datastore{ds("ds1", "normal"), ds("ds2", ""), ds("ds3", "inMaintenance")}}}, nil
}

func (h *perHV) InstanceUUID() string { return "vc-uuid" }

func (h *perHV) SubFolders(_ context.Context, ds vcenter.Datastore, p vcenter.DatastorePath) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	prefix := p.String() + "/"
	var out []string
	for f := range h.folders {
		if rest, ok := strings.CutPrefix(f, prefix); ok && !strings.Contains(rest, "/") {
			out = append(out, rest)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (h *perHV) MakeDirectory(_ context.Context, dc string, p vcenter.DatastorePath) error {
	h.record("mkdir %s", p)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.folders[p.String()] = true
	return nil
}

func (h *perHV) DeleteDatastoreFile(_ context.Context, dc string, p vcenter.DatastorePath) error {
	h.record("delete %s", p)
	h.mu.Lock()
	defer h.mu.Unlock()
	for f := range h.folders {
		if f == p.String() || strings.HasPrefix(f, p.String()+"/") {
			delete(h.folders, f)
		}
	}
	return nil
}

func (h *perHV) FindVMByInstanceUUID(_ context.Context, uuid string) (vcenter.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, ok := h.vms[uuid]
	if !ok {
		return vcenter.VM{}, fmt.Errorf("find %s: %w", uuid, vcenter.ErrNotFound)
	}
	return vm, nil
}

func (h *perHV) Destroy(_ context.Context, vm vcenter.Ref) error {
	h.record("destroy %s", vm.Value)
	return nil
}

func (h *perHV) PowerOff(_ context.Context, vm vcenter.Ref) error {
	h.record("poweroff %s", vm.Value)
	return nil
}

func (h *perHV) callList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// perCache is the image cache: its folder, and what it was told to forget.
type perCache struct {
	mu     sync.Mutex
	forgot []string
}

func (c *perCache) Folder() string { return "10.0.0.5_base" }

func (c *perCache) Ensure(context.Context, string, string, string, vcenter.FetchFunc, vcenter.DiskKind) (vcenter.DatastorePath, error) {
	return vcenter.DatastorePath{}, fmt.Errorf("not in these tests")
}

func (c *perCache) Forget(dc, ds, image string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgot = append(c.forgot, dc+"/"+ds+"/"+image)
}

// perInstance is an Instance of the tests.
func perInstance(uuid string, fields map[string]any) *ovo.Object {
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", uuid)
	inst.SetInt("id", 42)
	inst.SetString("host", "host1")
	inst.SetString("vm_state", "active")
	inst.SetNull("task_state")
	for k, v := range fields {
		switch v := v.(type) {
		case nil:
			inst.SetNull(k)
		case string:
			inst.SetString(k, v)
		case time.Time:
			inst.SetDateTime(k, v)
		case bool:
			inst.SetBool(k, v)
		}
	}
	inst.ResetChanges()
	return inst
}

func instanceList(items ...*ovo.Object) *ovo.Object {
	return ovo.NewList("InstanceList", "2.6", items...)
}

// TestImageCacheAgeingFollowsVMwareImagecache runs the VMware driver's
// ageing pass over a cache folder: unused images get a timestamp, then
// are removed once older than the minimum age (and forgotten by the
// cache); used images lose their timestamp; datastores in maintenance are
// left alone; with remove_unused_base_images off nothing happens.
func TestImageCacheAgeingFollowsVMwareImagecache(t *testing.T) {
	const base = "10.0.0.5_base"
	old := perNow.Add(-2 * time.Hour).Format(tsFormat)
	recent := perNow.Add(-10 * time.Minute).Format(tsFormat)
	tests := []struct {
		name    string
		disable bool
		folders []string // relative to [ds1] base
		ds3     []string // relative to [ds3] base (in maintenance)
		used    []string // image_ref of this host's instances
		want    []string // datastore calls
		forgot  []string
		after   []string // folders left on ds1
	}{
		{
			name:    "an unused image gets a timestamp",
			folders: []string{"img-a"},
			want:    []string{"mkdir [ds1] " + base + "/img-a/ts-" + perNow.Format(tsFormat)},
			after:   []string{"img-a", "img-a/ts-" + perNow.Format(tsFormat)},
		},
		{
			name:    "an unused image older than the minimum age is removed",
			folders: []string{"img-a", "img-a/ts-" + old},
			want:    []string{"delete [ds1] " + base + "/img-a"},
			forgot:  []string{"DC0/ds1/img-a", "DC0/ds1/img-a"},
		},
		{
			name:    "an unused image younger than the minimum age stays",
			folders: []string{"img-a", "img-a/ts-" + recent},
			after:   []string{"img-a", "img-a/ts-" + recent},
		},
		{
			name:    "a used image loses its timestamp",
			folders: []string{"img-a", "img-a/ts-" + old, "img-b"},
			used:    []string{"img-a", "img-b"},
			want:    []string{"delete [ds1] " + base + "/img-a/ts-" + old},
			after:   []string{"img-a", "img-b"},
		},
		{
			name:    "a datastore in maintenance is not aged",
			ds3:     []string{"img-c", "img-c/ts-" + old},
			folders: []string{},
		},
		{
			name:    "remove_unused_base_images off",
			disable: true,
			folders: []string{"img-a", "img-a/ts-" + old},
			after:   []string{"img-a", "img-a/ts-" + old},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultPeriodicConfig()
			cfg.RemoveUnusedOriginalMinimumAge = time.Hour
			cfg.RemoveUnusedBaseImages = !tc.disable
			e := newPerEnv(t, cfg, func(c condCall) (any, error) {
				if c.String() != "InstanceList.get_by_filters" {
					return nil, fmt.Errorf("unexpected %s", c)
				}
				var insts []*ovo.Object
				for i, img := range tc.used {
					insts = append(insts, perInstance(fmt.Sprintf("00000000-0000-0000-0000-%012d", i), map[string]any{"image_ref": img}))
				}
				return instanceList(insts...), nil
			})
			for _, f := range tc.folders {
				e.hv.folders["[ds1] "+base+"/"+f] = true
			}
			for _, f := range tc.ds3 {
				e.hv.folders["[ds3] "+base+"/"+f] = true
			}
			if err := e.p.imageCachePass(t.Context(), AdminContext()); err != nil {
				t.Fatal(err)
			}
			if got := e.hv.callList(); !slices.Equal(got, tc.want) {
				t.Errorf("datastore calls:\n got  %q\n want %q", got, tc.want)
			}
			if !slices.Equal(e.cache.forgot, tc.forgot) {
				t.Errorf("forgotten: %q, want %q", e.cache.forgot, tc.forgot)
			}
			var left []string
			for f := range e.hv.folders {
				if rest, ok := strings.CutPrefix(f, "[ds1] "+base+"/"); ok {
					left = append(left, rest)
				}
			}
			sort.Strings(left)
			if !slices.Equal(left, tc.after) {
				t.Errorf("left on ds1: %q, want %q", left, tc.after)
			}
			if tc.disable {
				if n := e.cond.names(); len(n) != 0 {
					t.Errorf("conductor calls with ageing off: %v", n)
				}
				return
			}
			gets := e.cond.callsOf("InstanceList.get_by_filters")
			if len(gets) == 0 {
				t.Fatal("no InstanceList.get_by_filters")
			}
			filters, _ := gets[0].Args[0].(map[string]any)
			if filters["deleted"] != false || filters["soft_deleted"] != true || fmt.Sprint(filters["host"]) != "[host1]" {
				t.Errorf("filters %v, want nova's {deleted: False, soft_deleted: True, host: [host1]}", filters)
			}
			if len(tc.forgot) > 0 && len(gets) != 2 {
				t.Errorf("the images in use were read %d times, want again before the removal", len(gets))
			}
		})
	}
}

// TestImageCacheAgeingKeepsAnImageUsedMeanwhile: an image an instance
// started using during the pass is not removed.
func TestImageCacheAgeingKeepsAnImageUsedMeanwhile(t *testing.T) {
	cfg := DefaultPeriodicConfig()
	cfg.RemoveUnusedOriginalMinimumAge = time.Hour
	n := 0
	e := newPerEnv(t, cfg, func(c condCall) (any, error) {
		n++
		if n == 1 {
			return instanceList(), nil
		}
		return instanceList(perInstance("00000000-0000-0000-0000-000000000001", map[string]any{"image_ref": "img-a"})), nil
	})
	e.hv.folders["[ds1] 10.0.0.5_base/img-a"] = true
	e.hv.folders["[ds1] 10.0.0.5_base/img-a/ts-"+perNow.Add(-2*time.Hour).Format(tsFormat)] = true
	if err := e.p.imageCachePass(t.Context(), AdminContext()); err != nil {
		t.Fatal(err)
	}
	if calls := e.hv.callList(); len(calls) != 0 {
		t.Errorf("datastore calls %q, want none", calls)
	}
}

// TestReclaimQueuedDeletes: the SOFT_DELETED instances of this host
// deleted longer ago than reclaim_instance_interval are deleted as nova's
// _delete_instance does (VM destroyed, DELETED saved, instance destroyed),
// without an instance action; the younger ones are left.
func TestReclaimQueuedDeletes(t *testing.T) {
	const oldUUID, youngUUID, noDateUUID = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
	cfg := PeriodicConfig{ReclaimInstanceInterval: time.Hour}
	e := newPerEnv(t, cfg, func(c condCall) (any, error) {
		switch c.String() {
		case "InstanceList.get_by_filters":
			return instanceList(
				perInstance(oldUUID, map[string]any{"vm_state": "soft-delete", "deleted_at": perNow.Add(-2 * time.Hour)}),
				perInstance(youngUUID, map[string]any{"vm_state": "soft-delete", "deleted_at": perNow.Add(-time.Minute)}),
				perInstance(noDateUUID, map[string]any{"vm_state": "soft-delete"}),
			), nil
		case "Instance.save", "Instance.destroy":
			return nil, nil
		}
		return nil, fmt.Errorf("unexpected %s", c)
	})
	e.hv.vms = map[string]vcenter.VM{
		oldUUID:    {Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-old"}},
		youngUUID:  {Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-young"}},
		noDateUUID: {Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-nodate"}},
	}
	if err := e.p.reclaimQueuedDeletes(t.Context(), AdminContext()); err != nil {
		t.Fatal(err)
	}
	if got, want := e.hv.callList(), []string{"destroy vm-old", "destroy vm-nodate"}; !slices.Equal(got, want) {
		t.Errorf("vCenter calls %q, want %q", got, want)
	}
	get := e.cond.callsOf("InstanceList.get_by_filters")[0]
	if f := get.Args[0].(map[string]any); f["vm_state"] != "soft-delete" || f["task_state"] != nil || f["host"] != "host1" || len(f) != 3 {
		t.Errorf("filters %v", f)
	}
	if got, want := e.cond.names(), []string{"InstanceList.get_by_filters", "Instance.save", "Instance.destroy", "Instance.save", "Instance.destroy"}; !slices.Equal(got, want) {
		t.Errorf("conductor calls %q, want %q (no instance action)", got, want)
	}
	for _, s := range e.cond.callsOf("Instance.save") {
		if s.Obj.StringOrEmpty("vm_state") != "deleted" || !s.Obj.Has("terminated_at") || intOr(s.Obj, "power_state", -1) != powerNoState {
			t.Errorf("saved %v", s.Obj.Fields)
		}
	}
}

// TestCleanupRunningDeletedInstances: the VMs of the served clusters whose
// instances nova deleted are destroyed (reap), powered off (shutdown) or
// only logged, once deleted longer than the timeout; VMs elsewhere are
// not asked about.
func TestCleanupRunningDeletedInstances(t *testing.T) {
	const goneUUID, recentUUID, otherUUID = "44444444-4444-4444-8444-444444444444", "55555555-5555-4555-8555-555555555555", "66666666-6666-4666-8666-666666666666"
	tests := []struct {
		action  string
		timeout time.Duration
		want    []string
	}{
		{RunningDeletedReap, 0, []string{"destroy vm-gone", "destroy vm-recent"}},
		{RunningDeletedReap, time.Hour, []string{"destroy vm-gone"}},
		{RunningDeletedShutdown, time.Hour, []string{"poweroff vm-gone"}},
		{RunningDeletedLog, 0, nil},
		{RunningDeletedNoop, 0, nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s after %s", tc.action, tc.timeout), func(t *testing.T) {
			cfg := PeriodicConfig{RunningDeletedInstanceAction: tc.action, RunningDeletedInstanceTimeout: tc.timeout}
			e := newPerEnv(t, cfg, func(c condCall) (any, error) {
				if c.String() != "InstanceList.get_by_filters" {
					return nil, fmt.Errorf("unexpected %s", c)
				}
				return instanceList(
					perInstance(goneUUID, map[string]any{"vm_state": "deleted", "deleted_at": perNow.Add(-2 * time.Hour)}),
					perInstance(recentUUID, map[string]any{"vm_state": "deleted", "deleted_at": perNow.Add(-time.Minute)}),
				), nil
			})
			vm := func(uuid, ref, host string) {
				e.p.l.vms.apply(vcenter.VMEvent{Kind: vcenter.Upsert, State: vcenter.VMState{InstanceUUID: uuid,
					Ref: vcenter.Ref{Type: "VirtualMachine", Value: ref}, Host: vcenter.Ref{Type: "HostSystem", Value: host}, PowerState: vcenter.PowerStateOn}})
			}
			vm(goneUUID, "vm-gone", "host-1")
			vm(recentUUID, "vm-recent", "host-2")
			vm(otherUUID, "vm-other", "host-9") // another cluster's
			if err := e.p.cleanupRunningDeletedInstances(t.Context(), AdminContext()); err != nil {
				t.Fatal(err)
			}
			if got := e.hv.callList(); !slices.Equal(got, tc.want) {
				t.Errorf("vCenter calls %q, want %q", got, tc.want)
			}
			gets := e.cond.callsOf("InstanceList.get_by_filters")
			if tc.action == RunningDeletedNoop {
				if len(gets) != 0 {
					t.Errorf("noop asked conductor")
				}
				return
			}
			if len(gets) != 1 {
				t.Fatalf("get_by_filters calls: %d", len(gets))
			}
			f := gets[0].Args[0].(map[string]any)
			if f["deleted"] != true || f["soft_deleted"] != false || fmt.Sprint(f["uuid"]) != fmt.Sprint([]any{goneUUID, recentUUID}) {
				t.Errorf("filters %v", f)
			}
			if gets[0].Context.String("read_deleted") != "yes" {
				t.Errorf("context read_deleted %q, want yes", gets[0].Context.String("read_deleted"))
			}
		})
	}
}

// TestPollUnconfirmedResizes: a RESIZED instance's migration is confirmed
// as the compute API does (source service up, migration "confirming", the
// confirmResize action, confirm_resize cast to the source host); one in
// ERROR, gone or in another state has its migration set to error; one
// being deleted or still finishing is skipped; a source service that is
// down leaves the migration for a later pass.
func TestPollUnconfirmedResizes(t *testing.T) {
	tests := []struct {
		name      string
		fields    map[string]any // of the instance; nil: InstanceNotFound
		sourceUp  bool
		wantSaves []string // migration statuses saved
		wantCast  bool
	}{
		{"resized instance is confirmed", map[string]any{"vm_state": "resized"}, true, []string{"confirming"}, true},
		{"source compute down", map[string]any{"vm_state": "resized"}, false, nil, false},
		{"instance in ERROR", map[string]any{"vm_state": "error"}, true, []string{"error"}, false},
		{"instance gone", nil, true, []string{"error"}, false},
		{"instance being deleted", map[string]any{"vm_state": "resized", "task_state": "deleting"}, true, nil, false},
		{"instance still finishing", map[string]any{"vm_state": "resized", "task_state": "resize_finish"}, true, nil, false},
		{"instance active", map[string]any{"vm_state": "active"}, true, []string{"error"}, false},
	}
	const uuid = "77777777-7777-4777-8777-777777777777"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source := "host2-" + newUUID()[:8]
			e := newPerEnvWithSource(t, PeriodicConfig{ResizeConfirmWindow: 10 * time.Minute}, source, func(c condCall) (any, error) {
				switch c.String() {
				case "MigrationList.get_unconfirmed_by_dest_compute":
					mig := ovo.New("Migration", "1.7")
					mig.SetInt("id", 9)
					mig.SetString("uuid", "88888888-8888-4888-8888-888888888888")
					mig.SetString("instance_uuid", uuid)
					mig.SetString("status", "finished")
					mig.SetString("source_compute", source)
					mig.SetString("dest_compute", "host1")
					mig.SetBool("cross_cell_move", false)
					return ovo.NewList("MigrationList", "1.5", mig), nil
				case "Instance.get_by_uuid":
					if tc.fields == nil {
						return nil, &rpc.RemoteError{Class: "InstanceNotFound", Module: "nova.exception", Message: "Instance could not be found."}
					}
					return perInstance(uuid, tc.fields), nil
				case "Service.get_by_compute_host":
					svc := ovo.New("Service", "1.22")
					svc.SetString("host", source)
					svc.SetBool("forced_down", false)
					seen := perNow.Add(-5 * time.Second)
					if !tc.sourceUp {
						seen = perNow.Add(-5 * time.Minute)
					}
					svc.SetDateTime("last_seen_up", seen)
					return svc, nil
				case "Migration.save", "InstanceAction.action_start":
					return nil, nil
				}
				return nil, fmt.Errorf("unexpected %s", c)
			})
			if err := e.p.pollUnconfirmedResizes(t.Context(), AdminContext()); err != nil {
				t.Fatal(err)
			}
			get := e.cond.callsOf("MigrationList.get_unconfirmed_by_dest_compute")[0]
			if fmt.Sprint(get.Args) != "[600 host1]" || get.Kwargs["use_slave"] != true {
				t.Errorf("get_unconfirmed_by_dest_compute args %v %v", get.Args, get.Kwargs)
			}
			var saves []string
			for _, s := range e.cond.callsOf("Migration.save") {
				saves = append(saves, s.Obj.StringOrEmpty("status"))
			}
			if !slices.Equal(saves, tc.wantSaves) {
				t.Errorf("migration saves %q, want %q", saves, tc.wantSaves)
			}
			actions := e.cond.callsOf("InstanceAction.action_start")
			if !tc.wantCast {
				if len(actions) != 0 {
					t.Errorf("action recorded: %v", actions)
				}
				time.Sleep(200 * time.Millisecond)
				e.casts.mu.Lock()
				defer e.casts.mu.Unlock()
				if len(e.casts.got) != 0 {
					t.Errorf("casts: %d", len(e.casts.got))
				}
				return
			}
			if len(actions) != 1 || fmt.Sprint(actions[0].Args) != "["+uuid+" confirmResize]" {
				t.Errorf("actions %v", actions)
			}
			r := e.casts.wait(t, "confirm_resize")
			var a struct {
				Instance  json.RawMessage `json:"instance"`
				Migration json.RawMessage `json:"migration"`
			}
			if err := r.DecodeArgs(&a); err != nil {
				t.Fatal(err)
			}
			mig := decodeObj(t, a.Migration)
			if mig.StringOrEmpty("status") != "confirming" || decodeObj(t, a.Instance).StringOrEmpty("uuid") != uuid || r.Version != "6.0" {
				t.Errorf("confirm_resize %s: migration %v", r.Version, mig.Fields)
			}
		})
	}
}

// TestInstanceUsageAudit: once per period, a task_log row brackets the
// exists notifications of the instances active on the host during the
// last completed period; a period already audited is left alone.
func TestInstanceUsageAudit(t *testing.T) {
	for _, done := range []bool{false, true} {
		t.Run(fmt.Sprintf("audited already %v", done), func(t *testing.T) {
			e := newPerEnv(t, PeriodicConfig{InstanceUsageAudit: true, InstanceUsageAuditPeriod: "month"}, func(c condCall) (any, error) {
				switch c.String() {
				case "TaskLog.get":
					if done {
						tl := ovo.New("TaskLog", "1.0")
						tl.SetString("task_name", usageAuditTask)
						return tl, nil
					}
					return nil, nil
				case "InstanceList._get_active_by_window_joined":
					return instanceList(perInstance("99999999-9999-4999-8999-999999999999", nil), perInstance("aaaaaaaa-9999-4999-8999-999999999999", nil)), nil
				case "TaskLog.begin_task", "TaskLog.end_task":
					return nil, nil
				}
				return nil, fmt.Errorf("unexpected %s", c)
			})
			if err := e.p.instanceUsageAudit(t.Context(), AdminContext()); err != nil {
				t.Fatal(err)
			}
			get := e.cond.callsOf("TaskLog.get")[0]
			if fmt.Sprint(get.Args) != "[instance_usage_audit 2026-11-01T00:00:00.000000 2026-12-01T00:00:00.000000 host1]" {
				t.Errorf("TaskLog.get args %v", get.Args)
			}
			if done {
				if got := e.cond.names(); len(got) != 1 {
					t.Errorf("calls after an audited period: %v", got)
				}
				return
			}
			if got, want := e.cond.names(), []string{"TaskLog.get", "InstanceList._get_active_by_window_joined", "TaskLog.begin_task", "TaskLog.end_task"}; !slices.Equal(got, want) {
				t.Fatalf("calls %q, want %q", got, want)
			}
			win := e.cond.callsOf("InstanceList._get_active_by_window_joined")[0]
			if fmt.Sprint(win.Args[:4]) != "[2026-11-01T00:00:00Z 2026-12-01T00:00:00Z <nil> host1]" {
				t.Errorf("window args %v", win.Args)
			}
			begin := e.cond.callsOf("TaskLog.begin_task")[0].Obj
			if intOr(begin, "task_items", 0) != 2 || begin.StringOrEmpty("message") != "Instance usage audit started..." || begin.StringOrEmpty("host") != "host1" {
				t.Errorf("begin_task %v", begin.Fields)
			}
			end := e.cond.callsOf("TaskLog.end_task")[0].Obj
			if intOr(end, "errors", -1) != 0 || !strings.HasPrefix(end.StringOrEmpty("message"), "Instance usage audit ran for host host1, 2 instances in ") {
				t.Errorf("end_task %v", end.Fields)
			}
		})
	}
}

// TestLastCompletedAuditPeriod compares with nova's
// utils.last_completed_audit_period (values computed by nova's code).
func TestLastCompletedAuditPeriod(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse("2006-01-02 15:04:05", s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct{ unit, now, begin, end string }{
		{"month", "2026-12-02 10:30:00", "2026-11-01 00:00:00", "2026-12-01 00:00:00"},
		{"month", "2026-01-01 00:00:00", "2025-11-01 00:00:00", "2025-12-01 00:00:00"},
		{"month@15", "2026-03-10 00:00:00", "2026-01-15 00:00:00", "2026-02-15 00:00:00"},
		{"year", "2026-12-02 10:30:00", "2025-01-01 00:00:00", "2026-01-01 00:00:00"},
		{"year@3", "2026-02-02 10:30:00", "2024-03-01 00:00:00", "2025-03-01 00:00:00"},
		{"day", "2026-12-02 10:30:00", "2026-12-01 00:00:00", "2026-12-02 00:00:00"},
		{"day@18", "2026-12-02 10:30:00", "2026-11-30 18:00:00", "2026-12-01 18:00:00"},
		{"hour", "2026-12-02 10:30:00", "2026-12-02 09:00:00", "2026-12-02 10:00:00"},
		{"hour@45", "2026-12-02 10:30:00", "2026-12-02 08:45:00", "2026-12-02 09:45:00"},
	}
	for _, tc := range tests {
		b, e, err := lastCompletedAuditPeriod(tc.unit, at(tc.now))
		if err != nil || !b.Equal(at(tc.begin)) || !e.Equal(at(tc.end)) {
			t.Errorf("%s at %s: %s - %s (%v), want %s - %s", tc.unit, tc.now, b, e, err, tc.begin, tc.end)
		}
	}
	for _, bad := range []string{"week", "month@", "hour@x", "Month"} {
		if _, _, err := ParseAuditPeriod(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPeriodicSpacing is oslo.service's: 0 is the default interval,
// negative is off.
func TestPeriodicSpacing(t *testing.T) {
	c := PeriodicConfig{Interval: 7 * time.Second}
	for in, want := range map[time.Duration]time.Duration{0: 7 * time.Second, -time.Second: 0, time.Minute: time.Minute} {
		if got := c.spacing(in); got != want {
			t.Errorf("spacing(%s) = %s, want %s", in, got, want)
		}
	}
	if got := (PeriodicConfig{}).spacing(0); got != 60*time.Second {
		t.Errorf("default interval %s", got)
	}
}

// TestSessionStoreListsFolders lists datastore folders through the
// datastore browser of a vCenter simulator, as the ageing does.
func TestSessionStoreListsFolders(t *testing.T) {
	ctx := t.Context()
	sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1, ListenAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	u := sim.URL()
	pass, _ := u.User.Password()
	bare := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s, err := vcenter.New(vcenter.Config{URL: bare.String(), User: u.User.Username(), Password: pass, Insecure: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Logout(context.Background()) }()
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds, dc := clusters[0].Datastores[0], clusters[0].Datacenter
	for _, p := range []string{"h_base/img1", "h_base/img2/ts-2026-01-01-00-00-00"} {
		if err := s.MakeDirectory(ctx, dc, vcenter.DatastorePath{Datastore: ds.Name, Path: p}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Upload(ctx, dc, vcenter.DatastorePath{Datastore: ds.Name, Path: "h_base/img1/img1.vmdk"}, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	store := cacheStoreOf(s)
	if store == nil {
		t.Fatal("a *vcenter.Session is no cacheStore")
	}
	for p, want := range map[string][]string{
		"h_base": {"img1", "img2"}, "h_base/img2": {"ts-2026-01-01-00-00-00"}, "h_base/img1": {}, "missing": {},
	} {
		got, err := store.SubFolders(ctx, ds, vcenter.DatastorePath{Datastore: ds.Name, Path: p})
		sort.Strings(got)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: %q (%v), want %q", p, got, err, want)
		}
	}
}

// TestPeriodicTasksStarted: the loops started for a configuration (nova
// skips a task with a negative interval and returns at once from one not
// configured; the agent does not start those).
func TestPeriodicTasksStarted(t *testing.T) {
	tests := []struct {
		name string
		cfg  PeriodicConfig
		want int
	}{
		{"zero value: none", PeriodicConfig{}, 0},
		{"nova's defaults: ageing and reaping", DefaultPeriodicConfig(), 2},
		{"every task", PeriodicConfig{ImageCacheManagerInterval: 0, RemoveUnusedBaseImages: true, ReclaimInstanceInterval: time.Hour,
			RunningDeletedInstanceAction: RunningDeletedLog, ResizeConfirmWindow: time.Minute, InstanceUsageAudit: true}, 5},
		{"negative intervals", PeriodicConfig{ImageCacheManagerInterval: -time.Second, RemoveUnusedBaseImages: true,
			RunningDeletedInstanceAction: RunningDeletedReap, RunningDeletedInstancePollInterval: -time.Second}, 0},
		{"noop and ageing off", PeriodicConfig{RunningDeletedInstanceAction: RunningDeletedNoop, ImageCacheManagerInterval: time.Minute}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manager{cfg: Config{Host: "host1", Periodic: tc.cfg}, life: &lifecycle{}, rt: &resourceTracker{}, log: zerolog.Nop()}
			n := 0
			m.startPeriodicTasks(t.Context(), func(func()) { n++ })
			if n != tc.want {
				t.Errorf("%d loops, want %d", n, tc.want)
			}
		})
	}
}
