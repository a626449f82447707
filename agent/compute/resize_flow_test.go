package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// rszCasts records the compute RPC casts of a resize test: a compute
// server on the test's exchange for the destination host.
type rszCasts struct {
	mu  sync.Mutex
	got []*rpc.Request
}

func (c *rszCasts) handler(ctx context.Context, r *rpc.Request) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, r)
	return nil, nil
}

func (c *rszCasts) wait(t *testing.T, method string) *rpc.Request {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		for _, r := range c.got {
			if r.Method == method {
				c.mu.Unlock()
				return r
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			c.mu.Lock()
			var got []string
			for _, r := range c.got {
				got = append(got, r.Method)
			}
			c.mu.Unlock()
			t.Fatalf("no %s cast (got %v)", method, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rszFlowEnv is a lifecycle on host1 talking to a fake conductor, with a
// compute server for host2 recording what host1 casts to it.
func rszFlowEnv(t *testing.T) (*lifecycle, *rszHV, *fakeConductor, *rszCasts) {
	t.Helper()
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(`[{"obj_what_changed": []}, null]`),
		"object_class_action_versions": json.RawMessage(`null`),
	}, got: map[string][]json.RawMessage{}}
	cond := startFakeConductor(t, f)
	u, err := rpc.ParseTransportURL("rabbit://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rpc.NewTransport(rpc.Config{URL: u, Options: rpc.DefaultOptions(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	exchange := "vcagent_resize_test_" + newUUID()[:8]
	casts := &rszCasts{}
	handlers := map[string]rpc.Handler{}
	for _, m := range []string{"resize_instance", "finish_resize", "finish_revert_resize",
		"post_live_migration_at_destination", "rollback_live_migration_at_destination"} {
		handlers[m] = casts.handler
	}
	// pre_live_migration answers the migrate data back.
	handlers["pre_live_migration"] = func(ctx context.Context, r *rpc.Request) (any, error) {
		_, _ = casts.handler(ctx, r)
		var a struct {
			MigrateData json.RawMessage `json:"migrate_data"`
		}
		if err := r.DecodeArgs(&a); err != nil {
			return nil, err
		}
		return a.MigrateData, nil
	}
	consuming := make(chan struct{})
	var once sync.Once
	srv, err := tr.NewServer(rpc.ServerConfig{
		Target:    rpc.Target{Exchange: exchange, Topic: Topic, Server: "host2"},
		Endpoints: []rpc.Endpoint{{Version: "6.0", Methods: handlers}},
		OnConsuming: func(on bool) {
			if on {
				once.Do(func() { close(consuming) })
			}
		},
	})
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
	l, hv := rszEnvHV(vcenter.PowerStateOn)
	l.cond = cond
	l.log = zerolog.Nop()
	l.tasks = tr.NewClient(rpc.Target{Exchange: exchange, Topic: "conductor", Namespace: "compute_task", Version: "1.19"})
	l.sched = tr.NewClient(rpc.Target{Exchange: exchange, Topic: "scheduler", Fanout: true, Version: "4.2"})
	return l, hv, f, casts
}

func rszRequest(t *testing.T, method string, args map[string]any) *rpc.Request {
	t.Helper()
	all := map[string]any{}
	for k, v := range args {
		if o, ok := v.(*ovo.Object); ok {
			enc, err := ovo.NovaCodec().Encode(o)
			if err != nil {
				t.Fatal(err)
			}
			v = enc
		}
		all[k] = v
	}
	raw, _ := json.Marshal(all)
	rc, _ := rpc.NewContext(map[string]any{"request_id": "req-rsz", "user_id": "u", "project_id": "p"})
	return &rpc.Request{Context: rc, Method: method, Version: "6.0", Args: raw}
}

// rszSaves lists the conductor saves: object, the fields of interest and
// expected_task_state.
func rszSaves(t *testing.T, f *fakeConductor) []string {
	t.Helper()
	var out []string
	for _, a := range sentObjects(t, f) {
		if a["objmethod"] != "save" {
			continue
		}
		obj := a["objinst"].(map[string]any)
		data := obj["nova_object.data"].(map[string]any)
		kw, _ := a["kwargs"].(map[string]any)
		switch obj["nova_object.name"] {
		case "Migration":
			out = append(out, fmt.Sprintf("migration %v", data["status"]))
		case "Instance":
			out = append(out, fmt.Sprintf("instance %v/%v host=%v node=%v progress=%v exp=%v",
				data["vm_state"], data["task_state"], data["host"], data["node"], data["progress"], kw["expected_task_state"]))
		}
	}
	return out
}

// TestResizeInstanceAndFinishResizeFollowNova drives resize_instance on
// the source and finish_resize on the destination as nova's manager does
// them: the migration statuses, the instance's task states with their
// expected_task_state, the progress saves, the hand-over of host and node,
// the casts, and the VM powered off, moved to the destination cluster,
// resized and powered on.
//
// Not parallel: fake conductors of concurrent tests would share the
// "conductor" queue.
func TestResizeInstanceAndFinishResizeFollowNova(t *testing.T) {
	l, hv, f, casts := rszFlowEnv(t)
	ctx := t.Context()
	inst := srInstance()
	inst.SetString("host", "host1")
	inst.SetString("node", "domain-c1.vc-uuid")
	inst.SetString("task_state", "resize_prep")
	inst.SetObject("flavor", rszFlavor(1, 1, 64, 1))
	inst.SetObject("new_flavor", rszFlavor(2, 2, 256, 2))
	inst.ResetChanges()
	mig := ovo.New("Migration", "1.7")
	mig.SetString("uuid", "6f0b3c1e-1111-4a2b-9c3d-5e6f7a8b9c0d")
	mig.SetInt("id", 7)
	mig.SetString("status", "pre-migrating")
	mig.SetString("source_compute", "host1")
	mig.SetString("source_node", "domain-c1.vc-uuid")
	mig.SetString("dest_compute", "host2")
	mig.SetString("dest_node", "domain-c2.vc-uuid")
	mig.SetInt("old_instance_type_id", 1)
	mig.SetInt("new_instance_type_id", 2)
	mig.ResetChanges()

	_, err := l.ResizeInstance(ctx, rszRequest(t, "resize_instance", map[string]any{
		"instance": inst, "migration": mig, "flavor": rszFlavor(2, 2, 256, 2), "image": map[string]any{},
		"clean_shutdown": true, "request_spec": nil,
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"migration migrating",
		"instance active/resize_migrating host=host1 node=domain-c1.vc-uuid progress=<nil> exp=resize_prep",
		"instance active/resize_migrating host=host1 node=domain-c1.vc-uuid progress=0 exp=<nil>",
		"instance active/resize_migrating host=host1 node=domain-c1.vc-uuid progress=17 exp=<nil>",
		"migration post-migrating",
		"instance active/resize_migrated host=host2 node=domain-c2.vc-uuid progress=17 exp=resize_migrating",
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("resize_instance saves\n got %q\nwant %q", got, want)
	}
	if !slices.Equal(hv.calls, []string{"PowerOff"}) {
		t.Errorf("resize_instance VM calls %q", hv.calls)
	}
	fin := casts.wait(t, "finish_resize")
	var fa map[string]any
	if err := fin.DecodeArgs(&fa); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"instance", "migration", "image", "disk_info", "request_spec"} {
		if _, ok := fa[k]; !ok {
			t.Errorf("finish_resize cast without %s: %v", k, fa)
		}
	}

	// finish_resize on the destination, with what the source sent.
	f.mu.Lock()
	f.got = map[string][]json.RawMessage{}
	f.mu.Unlock()
	hv.calls = nil
	req := &rpc.Request{Context: fin.Context, Method: "finish_resize", Version: "6.0", Args: fin.Args}
	if _, err := l.FinishResize(ctx, req); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"instance active/resize_finish host=host2 node=domain-c2.vc-uuid progress=17 exp=resize_migrated",
		"instance active/resize_finish host=host2 node=domain-c2.vc-uuid progress=83 exp=<nil>",
		"instance active/resize_finish host=host2 node=domain-c2.vc-uuid progress=100 exp=<nil>",
		"migration finished",
		"instance resized/<nil> host=host2 node=domain-c2.vc-uuid progress=100 exp=resize_finish",
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("finish_resize saves\n got %q\nwant %q", got, want)
	}
	wantCalls := []string{"RelocateVM resgroup-2 ds-local2 host-2", "ResizeVM 2 256 2000 2097152", "PowerOn"}
	if !slices.Equal(hv.calls, wantCalls) {
		t.Errorf("finish_resize VM calls\n got %q\nwant %q", hv.calls, wantCalls)
	}
}

// TestFinishRevertResizeAndConfirmFollowNova drives finish_revert_resize
// on the source (the old flavor, host and node back, the VM moved back,
// resized down and powered on) and confirm_resize (the migration
// confirmed, the instance ACTIVE with nova's expected task states, the
// stashed flavors dropped).
// Not parallel, as TestResizeInstanceAndFinishResizeFollowNova.
func TestFinishRevertResizeAndConfirmFollowNova(t *testing.T) {
	l, hv, f, _ := rszFlowEnv(t)
	ctx := t.Context()
	hv.vm.ResourcePool = vcenter.Ref{Type: "ResourcePool", Value: "resgroup-2"}
	hv.vm.VMPathName = "[local2] " + srUUID + "/" + srUUID + ".vmx"
	inst := srInstance()
	inst.SetString("host", "host2")
	inst.SetString("node", "domain-c2.vc-uuid")
	inst.SetString("vm_state", "resized")
	inst.SetString("task_state", "resize_reverting")
	inst.SetObject("flavor", rszFlavor(2, 2, 256, 2))
	inst.SetObject("old_flavor", rszFlavor(1, 1, 64, 1))
	inst.SetObject("new_flavor", rszFlavor(2, 2, 256, 2))
	inst.ResetChanges()
	mig := ovo.New("Migration", "1.7")
	mig.SetString("uuid", "6f0b3c1e-2222-4a2b-9c3d-5e6f7a8b9c0d")
	mig.SetString("status", "reverted")
	mig.SetString("source_compute", "host1")
	mig.SetString("source_node", "domain-c1.vc-uuid")
	mig.SetString("dest_compute", "host2")
	mig.SetString("dest_node", "domain-c2.vc-uuid")
	mig.ResetChanges()
	if _, err := l.FinishRevertResize(ctx, rszRequest(t, "finish_revert_resize", map[string]any{
		"instance": inst, "migration": mig, "request_spec": nil,
	})); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"instance resized/resize_reverting host=host1 node=domain-c1.vc-uuid progress=<nil> exp=[resize_reverting]",
		"instance resized/resize_reverting host=host1 node=domain-c1.vc-uuid progress=<nil> exp=resize_reverting",
		"instance active/<nil> host=host1 node=domain-c1.vc-uuid progress=<nil> exp=<nil>",
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("finish_revert_resize saves\n got %q\nwant %q", got, want)
	}
	wantCalls := []string{"PowerOff", "RelocateVM resgroup-1 ds-shared ", "ResizeVM 1 64 0 0", "PowerOn"}
	if !slices.Equal(hv.calls, wantCalls) {
		t.Errorf("finish_revert_resize VM calls\n got %q\nwant %q", hv.calls, wantCalls)
	}
	for _, a := range sentObjects(t, f) {
		data := a["objinst"].(map[string]any)["nova_object.data"].(map[string]any)
		if a["objmethod"] == "save" && data["task_state"] == nil {
			if data["old_flavor"] != nil || data["new_flavor"] != nil {
				t.Errorf("stashed flavors kept after the revert: %v %v", data["old_flavor"], data["new_flavor"])
			}
		}
	}

	// confirm_resize of a finished migration.
	f.mu.Lock()
	f.got = map[string][]json.RawMessage{}
	f.mu.Unlock()
	inst.SetString("vm_state", "resized")
	inst.SetNull("task_state")
	inst.SetInt("power_state", powerRunning)
	inst.ResetChanges()
	mig.SetString("status", "confirming")
	mig.ResetChanges()
	if _, err := l.ConfirmResize(ctx, rszRequest(t, "confirm_resize", map[string]any{"instance": inst, "migration": mig})); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"migration confirmed",
		"instance active/<nil> host=host2 node=domain-c2.vc-uuid progress=<nil> exp=[<nil> deleting soft-deleting]",
		"instance active/<nil> host=host2 node=domain-c2.vc-uuid progress=<nil> exp=<nil>",
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("confirm_resize saves\n got %q\nwant %q", got, want)
	}
	// An already confirmed migration is left alone.
	f.mu.Lock()
	f.got = map[string][]json.RawMessage{}
	f.mu.Unlock()
	mig.SetString("status", "confirmed")
	if _, err := l.ConfirmResize(ctx, rszRequest(t, "confirm_resize", map[string]any{"instance": inst, "migration": mig})); err != nil {
		t.Fatal(err)
	}
	if got := rszSaves(t, f); len(got) != 0 {
		t.Errorf("confirming a confirmed migration saved %q", got)
	}
}

// TestLiveMigrationChecksAndPostFollowNova checks the live migration
// calls: check_can_live_migrate_source answers the VMware migrate data
// with is_volume_backed, or MigrationPreCheckError for a cluster vCenter
// does not have; pre_live_migration answers it back with nova's fields;
// post_live_migration_at_destination puts the instance on this host and
// the node of the VM's cluster with expected_task_state migrating.
//
// Not parallel, as TestResizeInstanceAndFinishResizeFollowNova.
func TestLiveMigrationChecksAndPostFollowNova(t *testing.T) {
	l, _, f, _ := rszFlowEnv(t)
	ctx := t.Context()
	inst := srInstance()
	inst.SetString("host", "host0")
	inst.SetString("task_state", "migrating")
	inst.SetInt("power_state", powerRunning)
	inst.ResetChanges()
	data := ovo.New("VMwareLiveMigrateData", "1.0")
	data.SetString("cluster_name", "C1")
	data.SetString("datastore_regex", "")
	res, err := l.CheckCanLiveMigrateSource(ctx, rszRequest(t, "check_can_live_migrate_source", map[string]any{"instance": inst, "dest_check_data": data}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeObject(res)
	if err != nil || got.Name != "VMwareLiveMigrateData" || got.StringOrEmpty("cluster_name") != "C1" {
		t.Fatalf("check_can_live_migrate_source = %v, %v", got, err)
	}
	if b, err := got.Bool("is_volume_backed"); err != nil || b {
		t.Errorf("is_volume_backed = %t, %v; want false for an image-backed instance", b, err)
	}
	data.SetString("cluster_name", "C9")
	_, err = l.CheckCanLiveMigrateSource(ctx, rszRequest(t, "check_can_live_migrate_source", map[string]any{"instance": inst, "dest_check_data": data}))
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "MigrationPreCheckError" || re.Message != "Migration pre-check error: Cannot find destination cluster C9 for live migration" {
		t.Errorf("unknown cluster: %v", err)
	}

	data.SetString("cluster_name", "C1")
	res, err = l.PreLiveMigration(ctx, rszRequest(t, "pre_live_migration", map[string]any{"instance": inst, "disk": nil, "migrate_data": data}))
	if err != nil {
		t.Fatal(err)
	}
	if got, err = decodeObject(res); err != nil || !got.Has("old_vol_attachment_ids") || !got.Has("wait_for_vif_plugged") {
		t.Errorf("pre_live_migration = %v, %v", got, err)
	}

	f.mu.Lock()
	f.got = map[string][]json.RawMessage{}
	f.mu.Unlock()
	if _, err := l.PostLiveMigrationAtDestination(ctx, rszRequest(t, "post_live_migration_at_destination", map[string]any{"instance": inst, "block_migration": false})); err != nil {
		t.Fatal(err)
	}
	want := []string{"instance active/<nil> host=host1 node=domain-c1.vc-uuid progress=0 exp=migrating"}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("post_live_migration_at_destination saves\n got %q\nwant %q", got, want)
	}
}

// TestLiveMigrationRelocatesOrRollsBack drives live_migration on the
// source: the migration goes queued, preparing (pre_live_migration called
// on the destination), running, then completed with
// post_live_migration_at_destination called, or, when the relocation
// fails, failed with the task state cleared and
// rollback_live_migration_at_destination cast.
//
// Not parallel, as TestResizeInstanceAndFinishResizeFollowNova.
func TestLiveMigrationRelocatesOrRollsBack(t *testing.T) {
	for _, fail := range []bool{false, true} {
		// A subtest each: its clean-up stops its host2 server, which
		// would otherwise share the queue with the next one's.
		t.Run(fmt.Sprint("fail=", fail), func(t *testing.T) { rszLiveMigration(t, fail) })
	}
}

func rszLiveMigration(t *testing.T, fail bool) {
	l, hv, f, casts := rszFlowEnv(t)
	if fail {
		hv.fail = "RelocateVM"
	}
	inst := srInstance()
	inst.SetString("host", "host1")
	inst.SetString("task_state", "migrating")
	inst.ResetChanges()
	mig := ovo.New("Migration", "1.7")
	mig.SetString("uuid", "6f0b3c1e-3333-4a2b-9c3d-5e6f7a8b9c0d")
	mig.SetString("status", "accepted")
	mig.ResetChanges()
	data := ovo.New("VMwareLiveMigrateData", "1.0")
	data.SetString("cluster_name", "C2")
	data.SetString("datastore_regex", "")
	_, err := l.LiveMigration(t.Context(), rszRequest(t, "live_migration", map[string]any{
		"instance": inst, "dest": "host2", "block_migration": false, "migration": mig, "migrate_data": data,
	}))
	if fail != (err != nil) {
		t.Errorf("fail %t: live_migration returned %v", fail, err)
	}
	casts.wait(t, "pre_live_migration")
	want := []string{"migration queued", "migration preparing", "migration running", "migration completed"}
	next := "post_live_migration_at_destination"
	if fail {
		want = []string{"migration queued", "migration preparing", "migration running",
			"instance active/<nil> host=host1 node=domain-c9.vc-uuid progress=0 exp=[migrating]", "migration failed"}
		next = "rollback_live_migration_at_destination"
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("fail %t: saves\n got %q\nwant %q", fail, got, want)
	}
	casts.wait(t, next)
	if !slices.Equal(hv.calls, []string{"RelocateVM resgroup-2 ds-local2 host-2"}) {
		t.Errorf("fail %t: VM calls %q", fail, hv.calls)
	}
}
