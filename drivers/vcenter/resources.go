package vcenter

import (
	"regexp"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// Resources is the capacity a cluster offers, computed from its hosts and
// datastores the way the long-standing VMware compute driver does it
// (see Cluster.Resources). Sizes in MB and GB are MiB and GiB, rounded down.
type Resources struct {
	// Hosts is the number of hosts counted: connected and not in
	// maintenance mode. Only these contribute CPU and memory.
	Hosts int

	// VCPUs is the sum of the counted hosts' hardware threads; the
	// overcommit ratio is the caller's business.
	VCPUs int64
	// MaxVCPUsPerHost is the largest thread count of one counted host: the
	// most one virtual machine can get.
	MaxVCPUsPerHost int64

	// MemoryMB is the sum over counted hosts of each host's memory in MiB.
	MemoryMB int64
	// MemoryUsedMB is the sum of the counted hosts' current memory usage.
	MemoryUsedMB int64
	// MaxMemoryMBPerHost is the largest memory of one counted host.
	MaxMemoryMBPerHost int64

	// Datastore is the usable datastore with the most free space, the one
	// new disks go to; zero if there is none.
	Datastore Ref
	// DiskTotalGB and DiskFreeGB are that datastore's capacity and free
	// space (0 when there is no usable datastore).
	DiskTotalGB int64
	DiskFreeGB  int64

	// DatastoresTotalGB is the summed capacity of all usable datastores.
	DatastoresTotalGB int64
	// MaxDatastoreFreeGB is the largest free space of one usable datastore:
	// the largest disk that fits.
	MaxDatastoreFreeGB int64

	// CPUInfo describes the counted hosts' processors.
	CPUInfo CPUInfo
}

// CPUInfo summarises the processors of a cluster's counted hosts.
type CPUInfo struct {
	// Vendor and Model are shared by every counted host; each is empty when
	// the hosts differ or report nothing.
	Vendor string
	Model  string
	// Sockets, Cores and Threads are totals over the counted hosts.
	Sockets int
	Cores   int
	Threads int
	// MinMhz is the slowest core speed among the counted hosts.
	MinMhz int
}

// supportedDatastoreTypes are the file system types virtual machine disks
// may be placed on.
func supportedDatastoreType(t string) bool {
	switch t {
	case "VMFS", "NFS", "NFS41", "vsan":
		return true
	}
	return false
}

// Usable reports whether new disks may be placed on d: it is accessible, not
// in (or entering) maintenance mode, of type VMFS, NFS, NFS41 or vsan, and
// its name matches nameRegex. A nil nameRegex matches every name. The match
// is anchored at the start of the name only, like Python's re.match: "ds1"
// matches "ds10"; end the expression with $ for an exact match.
func (d Datastore) Usable(nameRegex *regexp.Regexp) bool {
	return d.Accessible &&
		(d.MaintenanceMode == "" || d.MaintenanceMode == "normal") &&
		supportedDatastoreType(d.Type) &&
		matchFromStart(nameRegex, d.Name)
}

// matchFromStart reports whether re matches s at position 0. The leftmost
// match starts at 0 whenever any match does.
func matchFromStart(re *regexp.Regexp, s string) bool {
	if re == nil {
		return true
	}
	loc := re.FindStringIndex(s)
	return loc != nil && loc[0] == 0
}

// UsableDatastores returns the cluster's datastores for which
// Datastore.Usable(nameRegex) holds, in name order.
func (c Cluster) UsableDatastores(nameRegex *regexp.Regexp) []Datastore {
	var out []Datastore
	for _, d := range c.Datastores {
		if d.Usable(nameRegex) {
			out = append(out, d)
		}
	}
	return out
}

// BestDatastore returns the usable datastore with the most free space (the
// first in name order on a tie) and false if none is usable.
func (c Cluster) BestDatastore(nameRegex *regexp.Regexp) (Datastore, bool) {
	var best Datastore
	found := false
	for _, d := range c.UsableDatastores(nameRegex) {
		if !found || d.FreeBytes > best.FreeBytes {
			best, found = d, true
		}
	}
	return best, found
}

// Resources computes the cluster's capacity. CPU and memory are summed over
// hosts that are connected and not in maintenance mode, counting hardware
// threads as vCPUs and each host's memory rounded down to MiB, with per-host
// maxima. Disk figures come from the datastores for which
// Datastore.Usable(nameRegex) holds: the one with the most free space gives
// DiskTotalGB and DiskFreeGB, and all of them give DatastoresTotalGB (sum of
// capacities) and MaxDatastoreFreeGB. It does no I/O.
func (c Cluster) Resources(nameRegex *regexp.Regexp) Resources {
	var r Resources
	vendor, model, first := "", "", true
	for _, h := range c.Hosts {
		if !h.Usable() {
			continue
		}
		r.Hosts++
		threads := int64(h.CPUThreads)
		r.VCPUs += threads
		r.MaxVCPUsPerHost = max(r.MaxVCPUsPerHost, threads)
		memMB := h.MemoryBytes / mib
		r.MemoryMB += memMB
		r.MaxMemoryMBPerHost = max(r.MaxMemoryMBPerHost, memMB)
		r.MemoryUsedMB += h.MemoryUsedMB

		r.CPUInfo.Sockets += h.CPUPackages
		r.CPUInfo.Cores += h.CPUCores
		r.CPUInfo.Threads += h.CPUThreads
		if first {
			vendor, model, r.CPUInfo.MinMhz, first = h.CPUVendor, h.CPUModel, h.CPUMhz, false
			continue
		}
		if h.CPUVendor != vendor {
			vendor = ""
		}
		if h.CPUModel != model {
			model = ""
		}
		r.CPUInfo.MinMhz = min(r.CPUInfo.MinMhz, h.CPUMhz)
	}
	r.CPUInfo.Vendor, r.CPUInfo.Model = vendor, model

	var capacity, maxFree int64
	for _, d := range c.UsableDatastores(nameRegex) {
		capacity += d.CapacityBytes
		maxFree = max(maxFree, d.FreeBytes)
	}
	r.DatastoresTotalGB = capacity / gib
	r.MaxDatastoreFreeGB = maxFree / gib
	if best, ok := c.BestDatastore(nameRegex); ok {
		r.Datastore = best.Ref
		r.DiskTotalGB = best.CapacityBytes / gib
		r.DiskFreeGB = best.FreeBytes / gib
	}
	return r
}
