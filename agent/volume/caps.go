package volume

import (
	"context"
	"math"
	"regexp"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// DriverVersion is the version of cinder's VMDK driver (VMwareVcVmdkDriver
// .VERSION in Zed) the role reports as.
const DriverVersion = "3.4.4"

// Inventory is the part of the vCenter session the volume role reads.
type Inventory interface {
	Clusters(ctx context.Context, names ...string) ([]vcenter.Cluster, error)
}

// Capacity is the backend's capacity as the VMDK driver computes it with
// vmware_enable_volume_stats: the sum over the datastores the clusters
// can use (accessible, not in maintenance, matching the datastore regex),
// each counted once, rounded to GiB as Python's round() does.
type Capacity struct {
	TotalGB, FreeGB int64
}

// capacityOf sums the clusters' usable datastores, each once; when
// monitored is not nil (vmware_storage_profile), only those in it.
func capacityOf(clusters []vcenter.Cluster, re *regexp.Regexp, monitored map[vcenter.Ref]bool) Capacity {
	seen := map[string]bool{}
	var total, free int64
	for _, c := range clusters {
		for _, ds := range c.UsableDatastores(re) {
			if seen[ds.Ref.Value] || monitored != nil && !monitored[ds.Ref] {
				continue
			}
			seen[ds.Ref.Value] = true
			total += ds.CapacityBytes
			free += ds.FreeBytes
		}
	}
	const gi = 1 << 30
	return Capacity{
		TotalGB: int64(math.RoundToEven(float64(total) / gi)),
		FreeGB:  int64(math.RoundToEven(float64(free) / gi)),
	}
}

// capabilities is the stats dict cinder-volume reports to the scheduler:
// the VMDK driver's _get_volume_stats, completed by the volume manager
// (allocated_capacity_gb, filter and goodness functions). A nil capacity
// (vCenter unreadable) reports "unknown", as the driver does without
// volume stats.
func capabilities(backendName string, reservedPercentage int, capa *Capacity, allocatedGB int64) map[string]any {
	caps := map[string]any{
		"volume_backend_name":   backendName,
		"vendor_name":           "VMware",
		"driver_version":        DriverVersion,
		"storage_protocol":      "vmdk",
		"reserved_percentage":   reservedPercentage,
		"total_capacity_gb":     "unknown",
		"free_capacity_gb":      "unknown",
		"shared_targets":        false,
		"allocated_capacity_gb": allocatedGB,
		"filter_function":       nil,
		"goodness_function":     nil,
	}
	if capa != nil {
		caps["total_capacity_gb"] = capa.TotalGB
		caps["free_capacity_gb"] = capa.FreeGB
	}
	return caps
}

// driverProperties are the VMDK driver's capability properties (cinder's
// init_capabilities common ones), returned by get_capabilities.
func driverProperties() map[string]any {
	prop := func(title, desc string) map[string]any {
		return map[string]any{"title": title, "description": desc, "type": "boolean"}
	}
	return map[string]any{
		"thin_provisioning":   prop("Thin Provisioning", "Sets thin provisioning."),
		"compression":         prop("Compression", "Enables compression."),
		"qos":                 prop("QoS", "Enables QoS."),
		"replication_enabled": prop("Replication", "Enables replication."),
	}
}
