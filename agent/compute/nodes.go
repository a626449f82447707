package compute

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"sync"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// HypervisorType is what nova's VMware driver reports.
const HypervisorType = "VMware vCenter Server"

// capabilityTraits are the traits nova derives from the VMware driver's
// capabilities (ComputeDriver.capabilities_as_traits): true ones are set on
// each node's provider, false ones removed.
func capabilityTraits() map[string]bool {
	return map[string]bool{
		"COMPUTE_IMAGE_TYPE_ISO":                true,
		"COMPUTE_IMAGE_TYPE_VMDK":               true,
		"COMPUTE_NET_ATTACH_INTERFACE":          true,
		"COMPUTE_SAME_HOST_COLD_MIGRATE":        true,
		"COMPUTE_NET_ATTACH_INTERFACE_WITH_TAG": false,
		"COMPUTE_DEVICE_TAGGING":                false,
		"COMPUTE_VOLUME_ATTACH_WITH_TAG":        false,
		"COMPUTE_VOLUME_EXTEND":                 false,
		"COMPUTE_VOLUME_MULTI_ATTACH":           false,
		"COMPUTE_TRUSTED_CERTS":                 false,
		"COMPUTE_IMAGE_TYPE_AMI":                false,
		"COMPUTE_IMAGE_TYPE_AKI":                false,
		"COMPUTE_IMAGE_TYPE_ARI":                false,
		"COMPUTE_IMAGE_TYPE_QCOW2":              false,
		"COMPUTE_IMAGE_TYPE_RAW":                false,
		"COMPUTE_IMAGE_TYPE_VDI":                false,
		"COMPUTE_IMAGE_TYPE_VHD":                false,
		"COMPUTE_IMAGE_TYPE_VHDX":               false,
		"COMPUTE_IMAGE_TYPE_PLOOP":              false,
		"COMPUTE_ACCELERATORS":                  false,
		"COMPUTE_SOCKET_PCI_NUMA_AFFINITY":      false,
		"COMPUTE_REMOTE_MANAGED_PORTS":          false,
		"COMPUTE_ADDRESS_SPACE_PASSTHROUGH":     false,
		"COMPUTE_ADDRESS_SPACE_EMULATED":        false,
		"COMPUTE_RESCUE_BFV":                    false,
		"COMPUTE_EPHEMERAL_ENCRYPTION":          false,
	}
}

// VCenter is what the compute role reads of vCenter.
type VCenter interface {
	Clusters(ctx context.Context, names ...string) ([]vcenter.Cluster, error)
	InstanceUUID() string
	About() vcenter.About
}

// Placement is what the compute role needs of placement.
type Placement interface {
	EnsureProvider(ctx context.Context, uuid, name string) (cloud.Provider, error)
	SetInventory(ctx context.Context, uuid string, inv map[string]cloud.Inventory) error
	Inventories(ctx context.Context, uuid string) (map[string]cloud.Inventory, error)
	Traits(ctx context.Context, uuid string) ([]string, error)
	SetTraits(ctx context.Context, uuid string, traits []string) error
	DeleteAllocations(ctx context.Context, consumerUUID string) (bool, error)
}

// resourceTracker keeps one ComputeNode per vCenter cluster, and its
// placement provider, current: nova's update_available_resource.
type resourceTracker struct {
	cond      *Conductor
	vc        VCenter
	placement Placement
	host      string
	hostIP    string
	clusters  []string
	dsRegex   *regexp.Regexp
	res       cloud.ResourceConfig
	log       zerolog.Logger

	nodes map[string]*ovo.Object // by hypervisor_hostname; owned by the one goroutine that updates

	// vmsOn counts the agent's VMs on a cluster's hosts (the VM watcher's
	// index), for running_vms; nil counts none.
	vmsOn func(hosts []vcenter.Host) int
	// served are the clusters of the last update, for metrics.
	servedMu sync.Mutex
	served   []vcenter.Cluster
}

// instancesPerCluster returns how many of the agent's VMs run on each
// served cluster now (the watcher's index over the last update's hosts).
func (rt *resourceTracker) instancesPerCluster() map[string]int {
	rt.servedMu.Lock()
	served := rt.served
	rt.servedMu.Unlock()
	out := make(map[string]int, len(served))
	for _, c := range served {
		if rt.vmsOn != nil {
			out[c.Name] = rt.vmsOn(c.Hosts)
		}
	}
	return out
}

// NodeName is the VMware driver's node name: "<cluster moref>.<vCenter instance uuid>".
func NodeName(cluster vcenter.Cluster, vcenterUUID string) string {
	return cluster.Ref.Value + "." + vcenterUUID
}

// update reads the clusters (one inventory read for all of them) and
// creates or saves each cluster's ComputeNode, then its placement
// provider, inventories and traits.
func (rt *resourceTracker) update(ctx context.Context, rc rpc.Context) error {
	clusters, err := rt.vc.Clusters(ctx, rt.clusters...)
	if err != nil {
		return fmt.Errorf("read vCenter clusters: %w", err)
	}
	rt.servedMu.Lock()
	rt.served = clusters
	rt.servedMu.Unlock()
	about := rt.vc.About()
	hvVersion, _ := about.VersionNumber()
	var firstErr error
	for _, c := range clusters {
		name := NodeName(c, rt.vc.InstanceUUID())
		if err := rt.updateNode(ctx, rc, c, name, hvVersion); err != nil {
			rt.log.Error().Err(err).Str("nodename", name).Msg("updating the compute node failed")
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return firstErr
}

func (rt *resourceTracker) updateNode(ctx context.Context, rc rpc.Context, c vcenter.Cluster, name string, hvVersion int64) error {
	r := c.Resources(rt.dsRegex)
	node := rt.nodes[name]
	if node == nil {
		v, err := rt.cond.ClassAction(ctx, rc, "ComputeNode", "get_by_host_and_nodename", []any{rt.host, name}, nil)
		switch {
		case err == nil:
			node, _ = v.(*ovo.Object)
		case isRemote(err, "ComputeHostNotFound"):
		default:
			return err
		}
	}
	created := node == nil
	if created {
		node = ovo.New("ComputeNode", rt.cond.version("ComputeNode"))
		node.SetString("uuid", newUUID())
		node.SetString("host", rt.host)
		node.SetString("hypervisor_hostname", name)
		node.SetString("hypervisor_type", HypervisorType)
		node.SetString("cpu_info", "")
		node.SetNull("numa_topology")
		node.SetNull("disk_available_least")
		node.SetString("metrics", "[]")
		node.SetStringDict("stats", map[string]string{"failed_builds": "0"})
		// nova's _copy_resources(initial=True): the configured ratio, or
		// the initial one when none is configured.
		_ = node.Set("cpu_allocation_ratio", orDefault(rt.res.CPUAllocationRatio, rt.res.InitialCPUAllocationRatio))
		_ = node.Set("ram_allocation_ratio", orDefault(rt.res.RAMAllocationRatio, rt.res.InitialRAMAllocationRatio))
		_ = node.Set("disk_allocation_ratio", orDefault(rt.res.DiskAllocationRatio, rt.res.InitialDiskAllocationRatio))
		specs := make([]*ovo.Object, 0, 2)
		for _, arch := range []string{"i686", "x86_64"} {
			hv := ovo.New("HVSpec", rt.cond.version("HVSpec"))
			hv.SetString("arch", arch)
			hv.SetString("hv_type", "vmware")
			hv.SetString("vm_mode", "hvm")
			specs = append(specs, hv)
		}
		node.SetObjects("supported_hv_specs", specs)
		node.SetObject("pci_device_pools", ovo.NewList("PciDevicePoolList", rt.cond.version("PciDevicePoolList")))
	}
	usedMB := r.MemoryUsedMB
	setIntIfChanged(node, "vcpus", r.VCPUs)
	setIntIfChanged(node, "memory_mb", r.MemoryMB)
	setIntIfChanged(node, "local_gb", r.DiskTotalGB)
	setIntIfChanged(node, "vcpus_used", 0)
	setIntIfChanged(node, "memory_mb_used", usedMB)
	setIntIfChanged(node, "local_gb_used", r.DiskTotalGB-r.DiskFreeGB)
	setIntIfChanged(node, "free_ram_mb", r.MemoryMB-usedMB)
	setIntIfChanged(node, "free_disk_gb", r.DiskFreeGB)
	setIntIfChanged(node, "hypervisor_version", hvVersion)
	running := 0
	if rt.vmsOn != nil {
		running = rt.vmsOn(c.Hosts)
	}
	setIntIfChanged(node, "running_vms", int64(running))
	setIntIfChanged(node, "current_workload", 0)
	if rt.hostIP != "" && node.StringOrEmpty("host_ip") != rt.hostIP {
		node.SetString("host_ip", rt.hostIP)
	}
	switch {
	case created:
		if _, err := rt.cond.ObjectAction(ctx, rc, node, "create", nil, nil); err != nil {
			return err
		}
		rt.log.Info().Str("nodename", name).Str("cluster", c.Name).Int64("vcpus", r.VCPUs).Int64("memory_mb", r.MemoryMB).Int64("local_gb", r.DiskTotalGB).Msg("compute node record created")
	case len(node.WhatChanged()) > 0:
		if _, err := rt.cond.ObjectAction(ctx, rc, node, "save", nil, nil); err != nil {
			// Forget the node so the next cycle starts from conductor's copy.
			delete(rt.nodes, name)
			return err
		}
	}
	rt.nodes[name] = node
	// nova logs the same at INFO every period.
	rt.log.Info().Str("nodename", name).Int64("phys_ram_mb", r.MemoryMB).Int64("used_ram_mb", usedMB).
		Int64("phys_disk_gb", r.DiskTotalGB).Int64("total_vcpus", r.VCPUs).Msg("final resource view")
	return rt.updateProvider(ctx, node, name, c)
}

// updateProvider mirrors the node in placement, as nova's resource tracker
// does through the driver's update_provider_tree.
func (rt *resourceTracker) updateProvider(ctx context.Context, node *ovo.Object, name string, c vcenter.Cluster) error {
	if rt.placement == nil {
		return nil
	}
	uuid := node.StringOrEmpty("uuid")
	if _, err := rt.placement.EnsureProvider(ctx, uuid, name); err != nil {
		return fmt.Errorf("placement provider %s: %w", name, err)
	}
	current, err := rt.placement.Inventories(ctx, uuid)
	if err != nil {
		return fmt.Errorf("placement inventory of %s: %w", name, err)
	}
	r := c.Resources(rt.dsRegex)
	var spaces []cloud.DatastoreSpace
	for _, ds := range c.UsableDatastores(rt.dsRegex) {
		spaces = append(spaces, cloud.DatastoreSpace{CapacityBytes: ds.CapacityBytes, FreeSpaceBytes: ds.FreeBytes})
	}
	inv := cloud.VMwareInventory(cloud.ClusterStats{
		VCPUs: r.VCPUs, MaxVCPUsPerHost: r.MaxVCPUsPerHost,
		MemoryMB: r.MemoryMB, MaxMemoryMBPerHost: r.MaxMemoryMBPerHost,
	}, spaces, current, rt.res)
	if err := rt.placement.SetInventory(ctx, uuid, inv); err != nil {
		return fmt.Errorf("placement inventory of %s: %w", name, err)
	}
	currentTraits, err := rt.placement.Traits(ctx, uuid)
	if err != nil {
		return fmt.Errorf("placement traits of %s: %w", name, err)
	}
	want := map[string]bool{"COMPUTE_NODE": true}
	for _, t := range currentTraits {
		want[t] = true
	}
	for t, supported := range capabilityTraits() {
		if supported {
			want[t] = true
		} else {
			delete(want, t)
		}
	}
	traits := make([]string, 0, len(want))
	for t := range want {
		traits = append(traits, t)
	}
	sort.Strings(traits)
	sort.Strings(currentTraits)
	if fmt.Sprint(traits) == fmt.Sprint(currentTraits) {
		return nil
	}
	if err := rt.placement.SetTraits(ctx, uuid, traits); err != nil {
		return fmt.Errorf("placement traits of %s: %w", name, err)
	}
	return nil
}

func setIntIfChanged(o *ovo.Object, field string, v int64) {
	if cur, err := o.Int(field); err == nil && cur == v {
		return
	}
	o.SetInt(field, v)
}

func orDefault(v, def float64) float64 {
	if v != 0 {
		return v
	}
	return def
}
