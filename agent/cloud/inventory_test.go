package cloud

import (
	"testing"
)

// The expected inventories are what nova Zed's VMwareVCDriver.
// update_provider_tree produces for the same cluster stats, datastores,
// existing inventory and options (run with vm_util.get_stats_from_cluster and
// ds_util.get_available_datastores mocked).
func TestVMwareInventory(t *testing.T) {
	stats := ClusterStats{VCPUs: 48, MaxVCPUsPerHost: 16, MemoryMB: 196608, MaxMemoryMBPerHost: 65536}
	rec := func(total, reserved, maxUnit int64, ratio float64) Inventory {
		return Inventory{Total: total, Reserved: reserved, MinUnit: 1, MaxUnit: maxUnit, StepSize: 1, AllocationRatio: ratio}
	}
	tests := []struct {
		name    string
		ds      []DatastoreSpace
		current map[string]Inventory
		cfg     func(*ResourceConfig)
		want    map[string]Inventory
	}{
		{
			name: "nova Zed defaults",
			ds:   []DatastoreSpace{{500*gib + 123, 200*gib + 5}, {1000 * gib, 700*gib - 1}},
			want: map[string]Inventory{
				ResourceVCPU:     rec(48, 0, 16, 16.0),
				ResourceMemoryMB: rec(196608, 512, 65536, 1.5),
				ResourceDiskGB:   rec(1500, 0, 699, 1.0),
			},
		},
		{
			name:    "ratio already in placement is kept; reserved options; capacity summed before rounding",
			ds:      []DatastoreSpace{{3 * gib / 2, gib}, {3 * gib / 2, gib / 2}},
			current: map[string]Inventory{ResourceVCPU: {Total: 1, AllocationRatio: 2.0}},
			cfg: func(c *ResourceConfig) {
				c.ReservedHostDiskMB, c.ReservedHostMemoryMB, c.ReservedHostCPUs = 1025, 0, 2
			},
			want: map[string]Inventory{
				ResourceVCPU:     rec(48, 2, 16, 2.0),
				ResourceMemoryMB: rec(196608, 0, 65536, 1.5),
				ResourceDiskGB:   rec(3, 2, 1, 1.0),
			},
		},
		{
			name: "configured ratios override placement's",
			ds:   []DatastoreSpace{{gib, gib}},
			current: map[string]Inventory{
				ResourceVCPU:     {Total: 1, AllocationRatio: 2.0},
				ResourceMemoryMB: {Total: 1, AllocationRatio: 3.0},
			},
			cfg: func(c *ResourceConfig) { c.CPUAllocationRatio, c.DiskAllocationRatio = 8.0, 1.2 },
			want: map[string]Inventory{
				ResourceVCPU:     rec(48, 0, 16, 8.0),
				ResourceMemoryMB: rec(196608, 512, 65536, 3.0),
				ResourceDiskGB:   rec(1, 0, 1, 1.2),
			},
		},
		{
			name: "no datastore gives an empty DISK_GB",
			want: map[string]Inventory{
				ResourceVCPU:     rec(48, 0, 16, 16.0),
				ResourceMemoryMB: rec(196608, 512, 65536, 1.5),
				ResourceDiskGB:   rec(0, 0, 0, 1.0),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultResourceConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			got := VMwareInventory(stats, tc.ds, tc.current, cfg)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for rc, w := range tc.want {
				if got[rc] != w {
					t.Errorf("%s = %+v, want %+v", rc, got[rc], w)
				}
			}
		})
	}
}

func TestMBToCeilGB(t *testing.T) {
	for mb, want := range map[int64]int64{0: 0, 1: 1, 1024: 1, 1025: 2, 2048: 2, 10240: 10} {
		if got := mbToCeilGB(mb); got != want {
			t.Errorf("mbToCeilGB(%d) = %d, want %d", mb, got, want)
		}
	}
}

func TestInventoryEqual(t *testing.T) {
	base := Inventory{Total: 10, Reserved: 1, MinUnit: 1, MaxUnit: 4, StepSize: 1, AllocationRatio: 1.1}
	tests := []struct {
		name string
		mod  func(*Inventory)
		want bool
	}{
		{"same", func(*Inventory) {}, true},
		{"float32 rounding of the ratio", func(i *Inventory) { i.AllocationRatio = float64(float32(1.1)) }, true},
		{"ratio", func(i *Inventory) { i.AllocationRatio = 1.2 }, false},
		{"total", func(i *Inventory) { i.Total = 11 }, false},
		{"reserved", func(i *Inventory) { i.Reserved = 0 }, false},
		{"max_unit", func(i *Inventory) { i.MaxUnit = 5 }, false},
	}
	for _, tc := range tests {
		o := base
		tc.mod(&o)
		if got := base.equal(o); got != tc.want {
			t.Errorf("%s: equal = %v, want %v", tc.name, got, tc.want)
		}
	}
	if inventoriesEqual(map[string]Inventory{"VCPU": base}, map[string]Inventory{"MEMORY_MB": base}) {
		t.Error("different classes compare equal")
	}
	if !inventoriesEqual(nil, map[string]Inventory{}) {
		t.Error("nil and empty differ")
	}
}
