package volume

import (
	"context"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// vcCalls is what an operation cost in vCenter round trips: the SOAP
// calls other than task polls by method, and the task polls.
type vcCalls struct {
	calls map[string]int64
	polls int64
}

// total is every round trip, task polls included.
func (c vcCalls) total() int64 {
	n := c.polls
	for _, v := range c.calls {
		n += v
	}
	return n
}

// measureCalls runs op and returns the round trips it cost.
func measureCalls(t *testing.T, s *vcenter.Session, op func() error) vcCalls {
	t.Helper()
	before, polls := s.Calls(), s.TaskPolls()
	if err := op(); err != nil {
		t.Fatal(err)
	}
	c := vcCalls{calls: map[string]int64{}, polls: s.TaskPolls() - polls}
	for k, v := range s.Calls() {
		if n := v - before[k]; n != 0 {
			c.calls[k] = n
		}
	}
	c.calls["RetrievePropertiesEx"] -= c.polls // a task poll is a RetrievePropertiesEx
	if c.calls["RetrievePropertiesEx"] == 0 {
		delete(c.calls, "RetrievePropertiesEx")
	}
	return c
}

// TestDriverCallCounts: delete volume, create snapshot and delete snapshot
// cost the vCenter calls the VMDK driver needs and no more, with warm
// caches (the backend's inventory, however old, and the project's
// folders): delete looks the backing up by instance UUID only, the
// snapshot's datacenter comes from the cached inventory and its
// provider_location from the folder's path (the same path vCenter reports
// for the template). Task polls depend on how fast the simulator is, so
// they are counted apart (at least one per task).
func TestDriverCallCounts(t *testing.T) {
	d, s := simDriver(t, nil)
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil || len(clusters) == 0 {
		t.Fatalf("clusters: %v %v", clusters, err)
	}
	v := volumeSpec{ID: "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8", SizeGB: 1, ProjectID: "p1", DiskType: vcenter.BackingDiskThin, AdapterType: "lsiLogic", CloneType: "full"}
	if _, err := d.createBacking(ctx, v, vcenter.Ref{}); err != nil {
		t.Fatal(err)
	}
	// warm the snapshot folder's cache with a first snapshot
	if _, err := d.createSnapshot(ctx, v, "warm"); err != nil {
		t.Fatal(err)
	}
	// an inventory older than its TTL still names the backing's datacenter
	d.mu.Lock()
	d.invAt = time.Now().Add(-time.Hour)
	d.mu.Unlock()

	var loc string
	steps := []struct {
		name      string
		op        func() error
		want      map[string]int64
		wantTasks int64
		check     func(t *testing.T)
	}{
		{
			name: "create snapshot",
			op: func() (err error) {
				loc, err = d.createSnapshot(ctx, v, "s1")
				return err
			},
			// was FindAllByUuid, 2 RetrievePropertiesEx (backing, template's
			// inventory path), CloneVM_Task, and the inventory's reads once stale
			want:      map[string]int64{"FindAllByUuid": 1, "RetrievePropertiesEx": 1, "CloneVM_Task": 1},
			wantTasks: 1,
			check: func(t *testing.T) {
				ref, err := s.FindByInventoryPath(ctx, loc)
				if err != nil {
					t.Fatalf("provider_location %q: %v", loc, err)
				}
				path, err := s.InventoryPath(ctx, ref)
				if err != nil || path != loc {
					t.Errorf("vCenter's path of the template = %q, %v; provider_location %q", path, err, loc)
				}
				if want := "/" + clusters[0].Datacenter + "/vm/OpenStack/Project (p1)/Volumes/Snapshots/snapshot-s1"; loc != want {
					t.Errorf("provider_location = %q, want %q", loc, want)
				}
			},
		},
		{
			name:      "delete snapshot",
			op:        func() error { return d.deleteSnapshot(ctx, loc) },
			want:      map[string]int64{"FindByInventoryPath": 1, "Destroy_Task": 1},
			wantTasks: 1,
			check: func(t *testing.T) {
				if _, err := s.FindByInventoryPath(ctx, loc); err == nil {
					t.Error("snapshot template left after delete")
				}
			},
		},
		{
			name: "delete volume",
			op:   func() error { return d.deleteVolume(ctx, v.ID) },
			// was FindAllByUuid, RetrievePropertiesEx (the backing), Destroy_Task
			want:      map[string]int64{"FindAllByUuid": 1, "Destroy_Task": 1},
			wantTasks: 1,
			check: func(t *testing.T) {
				if _, ok, err := d.findBacking(ctx, v.ID); ok || err != nil {
					t.Errorf("backing after delete: %v, %v", ok, err)
				}
			},
		},
		{
			name: "delete volume without backing",
			op:   func() error { return d.deleteVolume(ctx, v.ID) },
			want: map[string]int64{"FindAllByUuid": 1},
		},
	}
	for _, st := range steps {
		got := measureCalls(t, s, st.op)
		t.Logf("%s: %d vCenter calls (%v + %d task polls)", st.name, got.total(), got.calls, got.polls)
		if !equalCalls(got.calls, st.want) {
			t.Errorf("%s: calls besides task polls = %v, want %v", st.name, got.calls, st.want)
		}
		if got.polls < st.wantTasks || (st.wantTasks == 0) != (got.polls == 0) {
			t.Errorf("%s: %d task polls for %d tasks", st.name, got.polls, st.wantTasks)
		}
		if st.check != nil {
			st.check(t)
		}
	}
	// the warm-up snapshot goes too
	if err := d.deleteSnapshot(context.WithoutCancel(ctx), vcenter.VMInventoryPath(clusters[0].Datacenter, d.volumeFolderPath(v.ProjectID, true), "snapshot-warm")); err != nil {
		t.Error(err)
	}
}

func equalCalls(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
