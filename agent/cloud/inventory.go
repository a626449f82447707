package cloud

import "math"

// Standard resource classes the VMware driver reports (os-resource-classes).
const (
	ResourceVCPU     = "VCPU"
	ResourceMemoryMB = "MEMORY_MB"
	ResourceDiskGB   = "DISK_GB"
)

// Inventory is one placement inventory record of a resource class.
type Inventory struct {
	Total           int64   `json:"total"`
	Reserved        int64   `json:"reserved"`
	MinUnit         int64   `json:"min_unit"`
	MaxUnit         int64   `json:"max_unit"`
	StepSize        int64   `json:"step_size"`
	AllocationRatio float64 `json:"allocation_ratio"`
}

// ratioTolerance absorbs the single-precision rounding of allocation_ratio in
// placement's database when comparing what it holds with what we would set.
const ratioTolerance = 1e-6

// equal reports whether two records are the same for placement.
func (i Inventory) equal(o Inventory) bool {
	if i.Total != o.Total || i.Reserved != o.Reserved || i.MinUnit != o.MinUnit ||
		i.MaxUnit != o.MaxUnit || i.StepSize != o.StepSize {
		return false
	}
	d := math.Abs(i.AllocationRatio - o.AllocationRatio)
	return d <= ratioTolerance*math.Max(1, math.Abs(o.AllocationRatio))
}

// inventoriesEqual is nova's ProviderTree.has_inventory_changed negated, for
// records that carry every field.
func inventoriesEqual(a, b map[string]Inventory) bool {
	if len(a) != len(b) {
		return false
	}
	for rc, ai := range a {
		bi, ok := b[rc]
		if !ok || !ai.equal(bi) {
			return false
		}
	}
	return true
}

// ResourceConfig holds the nova.conf options that shape the compute node's
// inventory. Use DefaultResourceConfig for nova Zed's defaults.
type ResourceConfig struct {
	// ReservedHostCPUs is [DEFAULT] reserved_host_cpus (default 0): VCPU reserved.
	ReservedHostCPUs int64
	// ReservedHostMemoryMB is [DEFAULT] reserved_host_memory_mb (default
	// 512): MEMORY_MB reserved.
	ReservedHostMemoryMB int64
	// ReservedHostDiskMB is [DEFAULT] reserved_host_disk_mb (default 0):
	// DISK_GB reserved, rounded up to whole GB.
	ReservedHostDiskMB int64

	// CPUAllocationRatio is [DEFAULT] cpu_allocation_ratio (default unset,
	// 0 here). When set it overrides any ratio already in placement.
	CPUAllocationRatio float64
	// RAMAllocationRatio is [DEFAULT] ram_allocation_ratio (default unset, 0).
	RAMAllocationRatio float64
	// DiskAllocationRatio is [DEFAULT] disk_allocation_ratio (default unset, 0).
	DiskAllocationRatio float64

	// InitialCPUAllocationRatio is [DEFAULT] initial_cpu_allocation_ratio
	// (Zed default 16.0): the VCPU ratio when placement has no VCPU
	// inventory yet and cpu_allocation_ratio is unset.
	InitialCPUAllocationRatio float64
	// InitialRAMAllocationRatio is [DEFAULT] initial_ram_allocation_ratio
	// (Zed default 1.5).
	InitialRAMAllocationRatio float64
	// InitialDiskAllocationRatio is [DEFAULT] initial_disk_allocation_ratio
	// (Zed default 1.0).
	InitialDiskAllocationRatio float64
}

// DefaultResourceConfig returns nova Zed's defaults (nova/conf/compute.py).
func DefaultResourceConfig() ResourceConfig {
	return ResourceConfig{
		ReservedHostCPUs:           0,
		ReservedHostMemoryMB:       512,
		ReservedHostDiskMB:         0,
		InitialCPUAllocationRatio:  16.0,
		InitialRAMAllocationRatio:  1.5,
		InitialDiskAllocationRatio: 1.0,
	}
}

// allocationRatios is nova.virt.driver.ComputeDriver._get_allocation_ratios:
// per class, [DEFAULT] *_allocation_ratio if set (non-zero), else the initial
// ratio if current (what placement holds) has no record of the class, else
// current's ratio, so a ratio set through the placement API survives.
func (c ResourceConfig) allocationRatios(current map[string]Inventory) map[string]float64 {
	pick := func(rc string, conf, initial float64) float64 {
		if conf != 0 {
			return conf
		}
		if cur, ok := current[rc]; ok {
			return cur.AllocationRatio
		}
		return initial
	}
	return map[string]float64{
		ResourceVCPU:     pick(ResourceVCPU, c.CPUAllocationRatio, c.InitialCPUAllocationRatio),
		ResourceMemoryMB: pick(ResourceMemoryMB, c.RAMAllocationRatio, c.InitialRAMAllocationRatio),
		ResourceDiskGB:   pick(ResourceDiskGB, c.DiskAllocationRatio, c.InitialDiskAllocationRatio),
	}
}

// ClusterStats are the cluster figures nova's vm_util.get_stats_from_cluster
// gathers, counting only hosts that are connected and not in maintenance
// mode.
type ClusterStats struct {
	// VCPUs is the sum of the hosts' summary.hardware.numCpuThreads.
	VCPUs int64
	// MaxVCPUsPerHost is the largest numCpuThreads of one host.
	MaxVCPUsPerHost int64
	// MemoryMB is the sum over hosts of summary.hardware.memorySize / MiB
	// (each host rounded down).
	MemoryMB int64
	// MaxMemoryMBPerHost is the largest memorySize / MiB of one host.
	MaxMemoryMBPerHost int64
}

// DatastoreSpace is one datastore the driver may place disks on (those of
// the cluster that match [vmware] datastore_regex), in bytes.
type DatastoreSpace struct {
	CapacityBytes  int64
	FreeSpaceBytes int64
}

const gib = 1 << 30

// VMwareInventory builds the VCPU, MEMORY_MB and DISK_GB inventory of one
// cluster's compute node provider exactly as nova's VMware driver
// update_provider_tree does. current is the provider's inventory as placement
// holds it (nil for a new provider); it only feeds the allocation ratios.
//
// DISK_GB total is the datastores' summed capacity in whole GiB and its
// max_unit the largest free space in whole GiB. Placement rejects a total or
// max_unit below 1 (e.g. every host in maintenance, no datastore matched);
// nova fails those updates too, and so will SetInventory, with a 400.
func VMwareInventory(stats ClusterStats, datastores []DatastoreSpace, current map[string]Inventory, cfg ResourceConfig) map[string]Inventory {
	ratios := cfg.allocationRatios(current)
	var capacity, maxFree int64
	for _, ds := range datastores {
		capacity += ds.CapacityBytes
		maxFree = max(maxFree, ds.FreeSpaceBytes)
	}
	return map[string]Inventory{
		ResourceVCPU: {
			Total:           stats.VCPUs,
			Reserved:        cfg.ReservedHostCPUs,
			MinUnit:         1,
			MaxUnit:         stats.MaxVCPUsPerHost,
			StepSize:        1,
			AllocationRatio: ratios[ResourceVCPU],
		},
		ResourceMemoryMB: {
			Total:           stats.MemoryMB,
			Reserved:        cfg.ReservedHostMemoryMB,
			MinUnit:         1,
			MaxUnit:         stats.MaxMemoryMBPerHost,
			StepSize:        1,
			AllocationRatio: ratios[ResourceMemoryMB],
		},
		ResourceDiskGB: {
			Total:           capacity / gib,
			Reserved:        mbToCeilGB(cfg.ReservedHostDiskMB),
			MinUnit:         1,
			MaxUnit:         maxFree / gib,
			StepSize:        1,
			AllocationRatio: ratios[ResourceDiskGB],
		},
	}
}

// mbToCeilGB is nova.compute.utils.convert_mb_to_ceil_gb.
func mbToCeilGB(mb int64) int64 {
	if mb <= 0 {
		return 0
	}
	return (mb + 1023) / 1024
}
