//go:build integration

package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/pbm"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// createTagProfile creates a storage profile with one tag-based rule
// (category tier, the tag) through vCenter's SPBM, as an administrator
// would, and returns its id.
func createTagProfile(ctx context.Context, t *testing.T, vc *vcenter.Session, name, tag string) string {
	t.Helper()
	c, err := pbm.NewClient(ctx, vc.Client())
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.CreateProfile(ctx, pbmtypes.PbmCapabilityProfileCreateSpec{
		Name: name, Category: string(pbmtypes.PbmProfileCategoryEnumREQUIREMENT),
		ResourceType: pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)},
		Constraints: &pbmtypes.PbmCapabilitySubProfileConstraints{SubProfiles: []pbmtypes.PbmCapabilitySubProfile{{
			Name: "tags",
			Capability: []pbmtypes.PbmCapabilityInstance{{
				Id: pbmtypes.PbmCapabilityMetadataUniqueId{Namespace: vcenter.StorageTagNamespace, Id: "tier"},
				Constraint: []pbmtypes.PbmCapabilityConstraintInstance{{PropertyInstance: []pbmtypes.PbmCapabilityPropertyInstance{{
					Id: "com.vmware.storage.tag.tier.property", Value: pbmtypes.PbmCapabilityDiscreteSet{Values: []types.AnyType{tag}},
				}}}},
			}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return id.UniqueId
}

// tagDatastore sets a datastore's tier (the simulator's custom attribute
// standing in for a vSphere tag; "" takes its tier away).
func tagDatastore(ctx context.Context, t *testing.T, vc *vcenter.Session, ds vcenter.Ref, tier string) {
	t.Helper()
	m, err := object.GetCustomFieldsManager(vc.Client())
	if err != nil {
		t.Fatal(err)
	}
	key, err := m.FindKey(ctx, "tier")
	if err != nil {
		def, aerr := m.Add(ctx, "tier", "Datastore", nil, nil)
		if aerr != nil {
			t.Fatal(aerr)
		}
		key = def.Key
	}
	if err := m.Set(ctx, ds.Reference(), key, tier); err != nil {
		t.Fatal(err)
	}
}

// simDatastores returns the simulator's datastores by name.
func simDatastores(ctx context.Context, t *testing.T, vc *vcenter.Session) map[string]vcenter.Datastore {
	t.Helper()
	clusters, err := vc.Clusters(ctx)
	if err != nil || len(clusters) == 0 {
		t.Fatalf("simulator clusters: %v, %v", clusters, err)
	}
	out := map[string]vcenter.Datastore{}
	for _, c := range clusters {
		for _, ds := range c.Datastores {
			out[ds.Name] = ds
		}
	}
	if len(out) < 2 {
		t.Fatalf("simulator datastores: %v", out)
	}
	return out
}

// startVolumeAgent starts an agent with the compute and volume roles, backings
// created at once (vmware_lazy_create off), as host@backendName on the
// given simulator, and waits until cinder-scheduler has its pool.
func startVolumeAgent(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, vcEnv []string, host, backendName string, extraEnv ...string) string {
	t.Helper()
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env, "VCAGENT_ROLES=compute,volume", "VCAGENT_VOLUME_BACKEND="+backendName,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB, "VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_VOLUME_LAZY_CREATE=false")
	startAgent(t, append(env, extraEnv...)...)
	backend := host + "@" + backendName
	waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	waitPool(ctx, t, ctrl, backend+"#"+backendName)
	return backend
}

// poolCapabilities returns the scheduler's capabilities of a pool.
func poolCapabilities(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, pool string) map[string]any {
	t.Helper()
	p, err := ctrl.CinderGET(ctx, "/scheduler-stats/get_pools?detail=true")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range asList(p, "pools") {
		if p["name"] == pool {
			caps, _ := p["capabilities"].(map[string]any)
			return caps
		}
	}
	t.Fatalf("cinder-scheduler has no pool %s", pool)
	return nil
}

// createVolumeType creates a public volume type with extra specs
// (deleted at the end of the test).
func createVolumeType(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, name string, specs map[string]any) {
	t.Helper()
	v, err := ctrl.CinderPOST(ctx, "/types", map[string]any{"volume_type": map[string]any{"name": name, "extra_specs": specs}})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := v["volume_type"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.CinderDELETE(context.Background(), "/types/"+id) })
}

// createVolumeOf creates a 1 GB volume of a type, waits until it is no
// longer creating and returns its id and end status (deleted at the end
// of the test).
func createVolumeOf(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, name, typ string) (string, string) {
	t.Helper()
	v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": name, "size": 1, "volume_type": typ}})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := v["volume"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id); err == nil {
			_, _ = ctrl.CinderVolumeStatus(dctx, id, "deleting", "available", "error")
		}
	})
	st, err := ctrl.CinderVolumeStatus(ctx, id, "creating")
	if err != nil {
		t.Fatal(err)
	}
	return id, st
}

// eventIDs are the event ids of a resource's user messages.
func eventIDs(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, id string) []string {
	t.Helper()
	m, err := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, msg := range asList(m, "messages") {
		e, _ := msg["event_id"].(string)
		out = append(out, e)
	}
	return out
}

// gib is a byte count in GiB rounded as the driver's stats are.
func gib(b int64) float64 { return math.RoundToEven(float64(b) / (1 << 30)) }

// TestVolumeStorageProfiles: storage profiles through the real cinder-api
// and cinder-scheduler, on a vCenter whose first datastore is tagged gold
// and its second silver. The backend monitors gold
// (vmware_storage_profile): its pool's capacity is the gold datastore's.
// A volume of a type with vmware:storage_profile gold lands on the gold
// datastore, its backing associated with the gold profile in vCenter, and
// its connection info carries the profile's id; a type naming a profile
// vCenter lacks fails as the driver fails (error, the driver's user
// message); a retype to the silver type moves the backing to the silver
// datastore and changes its profile.
func TestVolumeStorageProfiles(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vcEnv, vc := testVCenter(t)
	dss := simDatastores(ctx, t, vc)
	goldDS, silverDS := dss["LocalDS_0"], dss["LocalDS_1"]
	gold := createTagProfile(ctx, t, vc, "gold", "gold")
	silver := createTagProfile(ctx, t, vc, "silver", "silver")
	tagDatastore(ctx, t, vc, goldDS.Ref, "gold")
	tagDatastore(ctx, t, vc, silverDS.Ref, "silver")

	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	backendName := "volspbm" + suffix
	backend := startVolumeAgent(ctx, t, ctrl, vcEnv, "vcagent-volspbm-"+suffix, backendName, "VCAGENT_VOLUME_STORAGE_PROFILE=gold")
	caps := poolCapabilities(ctx, t, ctrl, backend+"#"+backendName)
	if caps["total_capacity_gb"] != gib(goldDS.CapacityBytes) || caps["free_capacity_gb"] != gib(goldDS.FreeBytes) {
		t.Errorf("pool capacity %v / %v GB, want the gold datastore's %v / %v", caps["total_capacity_gb"], caps["free_capacity_gb"],
			gib(goldDS.CapacityBytes), gib(goldDS.FreeBytes))
	}
	goldType, silverType, badType := "vcagent-gold-"+suffix, "vcagent-silver-"+suffix, "vcagent-bronze-"+suffix
	createVolumeType(ctx, t, ctrl, goldType, map[string]any{"volume_backend_name": backendName, "vmware:storage_profile": "gold"})
	createVolumeType(ctx, t, ctrl, silverType, map[string]any{"volume_backend_name": backendName, "vmware:storage_profile": "silver"})
	createVolumeType(ctx, t, ctrl, badType, map[string]any{"volume_backend_name": backendName, "vmware:storage_profile": "bronze"})
	policies := vcenter.NewStoragePolicies(vc)

	id, st := createVolumeOf(ctx, t, ctrl, "vcagent-gold", goldType)
	if st != "available" {
		t.Fatalf("gold volume %s: %q, want available; messages %v", id, st, eventIDs(ctx, t, ctrl, id))
	}
	b, err := vc.FindBacking(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Datastores) != 1 || b.Datastores[0] != goldDS.Ref {
		t.Errorf("gold volume's backing on %v, want %s (the gold datastore)", b.Datastores, goldDS.Name)
	}
	if p, err := policies.BackingProfile(ctx, b.Ref); err != nil || p != gold {
		t.Errorf("gold volume's backing has profile %q (%v), want gold's %s", p, err, gold)
	}
	r, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-initialize_connection": map[string]any{
		"connector": map[string]any{"ip": "127.0.0.1", "host": "compute-spbm", "initiator": nil}}})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := r["connection_info"].(map[string]any)
	data, _ := info["data"].(map[string]any)
	if data["profile_id"] != gold || data["volume"] != b.Ref.Value {
		t.Errorf("connection info %v, want profile_id %s", info, gold)
	}

	t.Run("unknown-profile", func(t *testing.T) {
		bad, st := createVolumeOf(ctx, t, ctrl, "vcagent-bronze", badType)
		if st != "error" {
			t.Fatalf("volume of a type with a profile vCenter lacks: %q, want error", st)
		}
		// the driver's failure at each of the scheduler's three attempts
		// (ProfileNotFoundException is rescheduled), then the scheduler's
		if events := strings.Join(eventIDs(ctx, t, ctrl, bad), " "); strings.Count(events, "VOLUME_VOLUME_008_012") != 3 || !strings.Contains(events, "VOLUME_VOLUME_001_003") {
			t.Errorf("user messages %v, want the driver's VOLUME_VOLUME_008_012 three times and the scheduler's VOLUME_VOLUME_001_003", events)
		}
		if _, err := vc.FindBacking(ctx, bad); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("the failed volume has a backing: %v", err)
		}
	})

	t.Run("retype-to-silver", func(t *testing.T) {
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-retype": map[string]any{"new_type": silverType, "migration_policy": "never"}}); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "retyping"); err != nil || st != "available" {
			t.Fatalf("volume after retype: %q, %v", st, err)
		}
		g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if typ, _ := g["volume"].(map[string]any)["volume_type"].(string); typ != silverType {
			t.Errorf("volume type after retype %q, want %s", typ, silverType)
		}
		after, err := vc.FindBacking(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		// govmomi's simulator relocates a VM's datastore but not its files,
		// so the old datastore comes back in its list at the next
		// reconfiguration (the profile change): the relocation's target
		// is the first
		if after.Ref != b.Ref || len(after.Datastores) == 0 || after.Datastores[0] != silverDS.Ref {
			t.Errorf("backing after retype: %s on %v, want %s relocated to %s", after.Ref.Value, after.Datastores, b.Ref.Value, silverDS.Name)
		}
		if p, err := policies.BackingProfile(ctx, after.Ref); err != nil || p != silver {
			t.Errorf("backing's profile after retype %q (%v), want silver's %s", p, err, silver)
		}
	})
}

// TestVolumeReschedule: cinder's create flow reschedules a failed create
// to another backend. Two agents serve the same volume_backend_name on two
// vCenters, both monitoring the gold profile; the first has two gold
// datastores (the larger pool, so cinder-scheduler picks it first), the
// second one. The first vCenter's datastores then lose their gold tag
// (its pool's capacity is not reported again yet), so its create of a
// gold volume fails (no compliant datastore) and it hands the volume back
// to cinder-scheduler with the retry information, which creates it on the
// second: the volume is available there, its backing on the second
// vCenter's gold datastore and none on the first, the first backend's
// failure in the user messages and in the scheduler's retry log.
func TestVolumeReschedule(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	backendName := "volresched" + suffix

	envA, vcA := testVCenter(t)
	dssA := simDatastores(ctx, t, vcA)
	createTagProfile(ctx, t, vcA, "gold", "gold")
	for _, ds := range dssA {
		tagDatastore(ctx, t, vcA, ds.Ref, "gold")
	}
	envB, vcB := testVCenter(t)
	dssB := simDatastores(ctx, t, vcB)
	goldB := createTagProfile(ctx, t, vcB, "gold", "gold")
	tagDatastore(ctx, t, vcB, dssB["LocalDS_0"].Ref, "gold")

	backendA := startVolumeAgent(ctx, t, ctrl, envA, "vcagent-reschedA-"+suffix, backendName, "VCAGENT_VOLUME_STORAGE_PROFILE=gold")
	backendB := startVolumeAgent(ctx, t, ctrl, envB, "vcagent-reschedB-"+suffix, backendName, "VCAGENT_VOLUME_STORAGE_PROFILE=gold")
	poolA, poolB := backendA+"#"+backendName, backendB+"#"+backendName
	freeA, _ := poolCapabilities(ctx, t, ctrl, poolA)["free_capacity_gb"].(float64)
	freeB, _ := poolCapabilities(ctx, t, ctrl, poolB)["free_capacity_gb"].(float64)
	if freeA <= freeB || freeB <= 0 {
		t.Fatalf("free capacity of the pools: %v and %v; the first must be larger for the scheduler to try it first", freeA, freeB)
	}
	for _, ds := range dssA {
		tagDatastore(ctx, t, vcA, ds.Ref, "")
	}
	typ := "vcagent-resched-" + suffix
	createVolumeType(ctx, t, ctrl, typ, map[string]any{"volume_backend_name": backendName, "vmware:storage_profile": "gold"})

	id, st := createVolumeOf(ctx, t, ctrl, "vcagent-resched", typ)
	g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
	if err != nil {
		t.Fatal(err)
	}
	vol, _ := g["volume"].(map[string]any)
	if st != "available" || vol["os-vol-host-attr:host"] != poolB {
		t.Fatalf("rescheduled volume %s: %q on %v, want available on %s; messages %v", id, st, vol["os-vol-host-attr:host"], poolB, eventIDs(ctx, t, ctrl, id))
	}
	b, err := vcB.FindBacking(ctx, id)
	if err != nil {
		t.Fatalf("no backing on the second vCenter: %v", err)
	}
	if len(b.Datastores) != 1 || b.Datastores[0] != dssB["LocalDS_0"].Ref {
		t.Errorf("backing on %v, want the second vCenter's gold datastore", b.Datastores)
	}
	if p, err := vcenter.NewStoragePolicies(vcB).BackingProfile(ctx, b.Ref); err != nil || p != goldB {
		t.Errorf("backing's profile %q (%v), want gold's %s", p, err, goldB)
	}
	if _, err := vcA.FindBacking(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("the first vCenter has a backing of the volume: %v", err)
	}
	// the first backend's driver failure, as cinder's message API has it
	if events := eventIDs(ctx, t, ctrl, id); !strings.Contains(strings.Join(events, " "), "VOLUME_VOLUME_008_012") {
		t.Errorf("user messages %v, want the first backend's VOLUME_VOLUME_008_012", events)
	}
	// cinder-scheduler logs the retry information the first backend sent
	// back (retry.exc) when it schedules the volume again
	logPath := filepath.Join(ctrl.Work, "log", "cinder-scheduler.log")
	want := "Error scheduling " + id + " from last vol-service: " + poolA + " : "
	deadline := time.Now().Add(30 * time.Second)
	for {
		raw, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(raw), want)
		if i >= 0 {
			if line, _, _ := strings.Cut(string(raw[i:]), "\n"); !strings.Contains(line, "no valid datastore") {
				t.Errorf("scheduler's retry log without the first backend's failure: %s", line)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cinder-scheduler did not log the retry of %s from %s", id, poolA)
		}
		time.Sleep(time.Second)
	}
	db, err := sql.Open("mysql", ctrl.CinderDB)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitNoWorker(ctx, t, db, "Volume", id)
}
