package vcenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Ref identifies a vCenter managed object, e.g. {Type: "HostSystem", Value:
// "host-42"}. Values are unique per type within one vCenter.
type Ref struct {
	Type  string
	Value string
}

func refFrom(r types.ManagedObjectReference) Ref {
	return Ref{Type: r.Type, Value: r.Value}
}

func refFromPtr(r *types.ManagedObjectReference) Ref {
	if r == nil {
		return Ref{}
	}
	return refFrom(*r)
}

// Reference returns r as a govmomi managed object reference, so that a Ref
// can be handed to govmomi's object package.
func (r Ref) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: r.Type, Value: r.Value}
}

// String returns "Type:Value".
func (r Ref) String() string { return r.Type + ":" + r.Value }

// IsZero reports whether r is the zero Ref.
func (r Ref) IsZero() bool { return r == Ref{} }

// Product names a software product and its version.
type Product struct {
	Name     string
	FullName string
	Version  string
	Build    string
}

// Host is an ESXi host of a cluster.
type Host struct {
	Ref  Ref
	Name string
	// ConnectionState is "connected", "disconnected" or "notResponding".
	ConnectionState string
	// InMaintenance reports maintenance mode.
	InMaintenance bool
	// PowerState is "poweredOn", "poweredOff", "standBy" or "unknown".
	PowerState string
	// CPUPackages, CPUCores and CPUThreads count physical sockets, cores
	// and hardware threads.
	CPUPackages int
	CPUCores    int
	CPUThreads  int
	// CPUMhz is the speed of one core.
	CPUMhz int
	// CPUModel is the processor description, e.g. "Intel(R) Xeon(R) ...".
	CPUModel string
	// CPUVendor is the processor vendor as vSphere reports it ("intel",
	// "amd", "arm", "hygon", "unknown"); empty if not reported.
	CPUVendor string
	// MemoryBytes is the physical memory.
	MemoryBytes int64
	// MemoryUsedMB and CPUUsedMhz are the current usage (quick stats).
	MemoryUsedMB int64
	CPUUsedMhz   int64
	// Product is the hypervisor software, e.g. VMware ESXi 8.0.3.
	Product Product
	// Vendor and Model describe the server hardware.
	Vendor string
	Model  string
}

// Usable reports whether the host counts towards a cluster's capacity: it is
// connected and not in maintenance mode.
func (h Host) Usable() bool {
	return h.ConnectionState == string(types.HostSystemConnectionStateConnected) && !h.InMaintenance
}

// Datastore is a datastore mounted by a cluster.
type Datastore struct {
	Ref  Ref
	Name string
	// Type is the file system type: "VMFS", "NFS", "NFS41", "vsan",
	// "vvol", ...
	Type string
	// URL is the datastore's unique locator, e.g. ds:///vmfs/volumes/<uuid>/.
	URL           string
	CapacityBytes int64
	FreeBytes     int64
	// Accessible reports whether the datastore is reachable.
	Accessible bool
	// MaintenanceMode is "normal", "enteringMaintenance" or
	// "inMaintenance"; empty means the server does not report it.
	MaintenanceMode string
}

// Cluster is a vCenter cluster with its hosts and datastores.
type Cluster struct {
	Ref  Ref
	Name string
	// Datacenter is the name of the datacenter holding the cluster.
	Datacenter string
	// ResourcePool is the cluster's root resource pool.
	ResourcePool Ref
	// Hosts and Datastores are sorted by name.
	Hosts      []Host
	Datastores []Datastore
	// DRSEnabled reports whether DRS is enabled on the cluster.
	DRSEnabled bool
}

// Clusters reads the clusters named in names (all clusters when names is
// empty), each with its hosts and datastores. A name matches every cluster
// of that name, in any datacenter; a name that matches none fails with an
// error wrapping ErrNotFound. The result is sorted by datacenter and name.
//
// Cost: 3 SOAP round trips whatever the inventory size (CreateContainerView,
// one RetrievePropertiesEx collecting every datacenter, cluster, host and
// datastore plus the folders above the clusters, DestroyView), plus one
// ContinueRetrievePropertiesEx per extra page if vCenter pages the result.
// If vCenter drops the session in the middle, the read is redone once after
// the re-login. Each cluster's configurationEx is read whole (for the DRS
// flag); it is the largest part of the payload on clusters with many rules
// or per-VM overrides. Safe for concurrent use.
func (s *Session) Clusters(ctx context.Context, names ...string) ([]Cluster, error) {
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr("read clusters", ErrNotLoggedIn)
	}
	var inv *inventory
	for attempt := 0; ; attempt++ {
		var err error
		inv, err = s.readInventory(ctx, c)
		if errors.Is(err, errViewLost) && attempt == 0 {
			s.log.Debug().Err(err).Msg("container view lost with the session; reading inventory again")
			continue
		}
		if err != nil {
			return nil, wrapErr("read clusters", err)
		}
		break
	}
	clusters, err := inv.clusters(names)
	if err != nil {
		return nil, wrapErr("read clusters", err)
	}
	return clusters, nil
}

// errViewLost reports that the container view vanished between its creation
// and its use, which happens when the session is replaced in between.
var errViewLost = errors.New("container view no longer exists")

// inventory is one raw read of the datacenters, clusters, hosts, datastores
// and the folders above the clusters.
type inventory struct {
	datacenters map[types.ManagedObjectReference]mo.Datacenter
	folders     map[types.ManagedObjectReference]mo.Folder
	clusterObjs []mo.ClusterComputeResource
	hosts       map[types.ManagedObjectReference]mo.HostSystem
	datastores  map[types.ManagedObjectReference]mo.Datastore
}

// readInventory reads the whole inventory with one container view and one
// property retrieval.
func (s *Session) readInventory(ctx context.Context, c *vim25.Client) (*inventory, error) {
	kinds := []string{"Datacenter", "ClusterComputeResource", "HostSystem", "Datastore"}
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, kinds, true)
	if err != nil {
		return nil, fmt.Errorf("create container view: %w", err)
	}
	defer func() {
		// Destroy even if ctx is cancelled: views live until the session ends.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := v.Destroy(dctx); err != nil {
			s.log.Debug().Err(err).Str("view", v.Reference().Value).Msg("cannot destroy container view")
		}
	}()

	// From the view to every object in it; from a cluster up through its
	// parent folders (to find its datacenter). vCenter applies a traversal
	// only to objects of its Type.
	folderUp := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "folderUp"},
		Type:          "Folder",
		Path:          "parent",
		Skip:          types.NewBool(false),
		SelectSet:     []types.BaseSelectionSpec{&types.SelectionSpec{Name: "folderUp"}},
	}
	clusterUp := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "clusterUp"},
		Type:          "ClusterComputeResource",
		Path:          "parent",
		Skip:          types.NewBool(false),
		SelectSet:     []types.BaseSelectionSpec{folderUp},
	}
	spec := types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  v.Reference(),
			Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
				Type:      "ContainerView",
				Path:      "view",
				Skip:      types.NewBool(false),
				SelectSet: []types.BaseSelectionSpec{clusterUp},
			}},
		}},
		PropSet: []types.PropertySpec{
			// Property paths are kept narrow: payload size dominates the
			// cost of a retrieval on a large vCenter.
			{Type: "Datacenter", PathSet: []string{"name", "hostFolder"}},
			{Type: "Folder", PathSet: []string{"parent"}},
			{Type: "ClusterComputeResource", PathSet: []string{
				"name", "parent", "resourcePool", "host", "datastore", "configurationEx",
			}},
			{Type: "HostSystem", PathSet: []string{
				"name", "runtime.connectionState", "runtime.inMaintenanceMode", "runtime.powerState",
				"summary.hardware", "summary.quickStats", "summary.config.product", "hardware.cpuPkg",
			}},
			{Type: "Datastore", PathSet: []string{"summary"}},
		},
	}
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This:    c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{spec},
	})
	if err != nil {
		var nf *types.ManagedObjectNotFound
		if _, ok := fault.As(err, &nf); ok && nf.Obj == v.Reference() {
			return nil, fmt.Errorf("%w: %w", errViewLost, err)
		}
		return nil, fmt.Errorf("retrieve properties: %w", err)
	}
	return s.decodeInventory(objects)
}

// decodeInventory sorts the retrieved objects by type.
func (s *Session) decodeInventory(objects []types.ObjectContent) (*inventory, error) {
	inv := &inventory{
		datacenters: make(map[types.ManagedObjectReference]mo.Datacenter),
		folders:     make(map[types.ManagedObjectReference]mo.Folder),
		hosts:       make(map[types.ManagedObjectReference]mo.HostSystem),
		datastores:  make(map[types.ManagedObjectReference]mo.Datastore),
	}
	for _, oc := range objects {
		if missingNotAuthenticated(oc) {
			return nil, fmt.Errorf("%s: %w", oc.Obj, ErrNotAuthenticated)
		}
		if len(oc.MissingSet) > 0 {
			paths := make([]string, 0, len(oc.MissingSet))
			for _, m := range oc.MissingSet {
				paths = append(paths, m.Path)
			}
			s.log.Warn().Str("object", oc.Obj.String()).Strs("paths", paths).Msg("vCenter did not return some properties")
			oc.MissingSet = nil
		}
		obj, err := mo.ObjectContentToType(oc)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
		}
		switch o := obj.(type) {
		case mo.Datacenter:
			inv.datacenters[oc.Obj] = o
		case mo.Folder:
			inv.folders[oc.Obj] = o
		case mo.ClusterComputeResource:
			inv.clusterObjs = append(inv.clusterObjs, o)
		case mo.HostSystem:
			inv.hosts[oc.Obj] = o
		case mo.Datastore:
			inv.datastores[oc.Obj] = o
		}
	}
	return inv, nil
}

// clusters builds the plain Cluster values, keeping those named in names
// (all when names is empty).
func (inv *inventory) clusters(names []string) ([]Cluster, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = false
	}

	var out []Cluster
	for _, cc := range inv.clusterObjs {
		if _, ok := want[cc.Name]; len(names) > 0 && !ok {
			continue
		}
		want[cc.Name] = true
		out = append(out, inv.cluster(cc))
	}

	var missing []string
	for n, found := range want {
		if !found {
			missing = append(missing, fmt.Sprintf("%q", n))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("cluster %s: %w", strings.Join(missing, ", "), ErrNotFound)
	}

	slices.SortFunc(out, func(a, b Cluster) int {
		return cmp.Or(cmp.Compare(a.Datacenter, b.Datacenter), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Ref.Value, b.Ref.Value))
	})
	return out, nil
}

// cluster converts one cluster and resolves its hosts, datastores and
// datacenter. Members missing from the read (removed meanwhile) are left
// out.
func (inv *inventory) cluster(cc mo.ClusterComputeResource) Cluster {
	out := Cluster{
		Ref:          refFrom(cc.Self),
		Name:         cc.Name,
		Datacenter:   inv.datacenterOf(cc.Parent),
		ResourcePool: refFromPtr(cc.ResourcePool),
	}
	if cfg, ok := cc.ConfigurationEx.(*types.ClusterConfigInfoEx); ok && cfg != nil {
		out.DRSEnabled = cfg.DrsConfig.Enabled != nil && *cfg.DrsConfig.Enabled
	}
	for _, ref := range cc.Host {
		if h, ok := inv.hosts[ref]; ok {
			out.Hosts = append(out.Hosts, hostFrom(h))
		}
	}
	for _, ref := range cc.Datastore {
		if ds, ok := inv.datastores[ref]; ok {
			out.Datastores = append(out.Datastores, datastoreFrom(ds))
		}
	}
	slices.SortFunc(out.Hosts, func(a, b Host) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Ref.Value, b.Ref.Value))
	})
	slices.SortFunc(out.Datastores, func(a, b Datastore) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Ref.Value, b.Ref.Value))
	})
	return out
}

// datacenterOf walks up from parent through folders to a datacenter and
// returns its name, or "" if the chain is incomplete.
func (inv *inventory) datacenterOf(parent *types.ManagedObjectReference) string {
	for range 64 { // bound the walk; vCenter nests folders far less deep
		if parent == nil {
			return ""
		}
		if dc, ok := inv.datacenters[*parent]; ok {
			return dc.Name
		}
		f, ok := inv.folders[*parent]
		if !ok {
			return ""
		}
		parent = f.Parent
	}
	return ""
}

func hostFrom(h mo.HostSystem) Host {
	out := Host{
		Ref:             refFrom(h.Self),
		Name:            h.Name,
		ConnectionState: string(h.Runtime.ConnectionState),
		InMaintenance:   h.Runtime.InMaintenanceMode,
		PowerState:      string(h.Runtime.PowerState),
		MemoryUsedMB:    int64(h.Summary.QuickStats.OverallMemoryUsage),
		CPUUsedMhz:      int64(h.Summary.QuickStats.OverallCpuUsage),
	}
	if hw := h.Summary.Hardware; hw != nil {
		out.CPUPackages = int(hw.NumCpuPkgs)
		out.CPUCores = int(hw.NumCpuCores)
		out.CPUThreads = int(hw.NumCpuThreads)
		out.CPUMhz = int(hw.CpuMhz)
		out.CPUModel = hw.CpuModel
		out.MemoryBytes = hw.MemorySize
		out.Vendor = hw.Vendor
		out.Model = hw.Model
	}
	if h.Hardware != nil && len(h.Hardware.CpuPkg) > 0 {
		out.CPUVendor = h.Hardware.CpuPkg[0].Vendor
	}
	if p := h.Summary.Config.Product; p != nil {
		out.Product = Product{Name: p.Name, FullName: p.FullName, Version: p.Version, Build: p.Build}
	}
	return out
}

func datastoreFrom(ds mo.Datastore) Datastore {
	sum := ds.Summary
	return Datastore{
		Ref:             refFrom(ds.Self),
		Name:            sum.Name,
		Type:            sum.Type,
		URL:             sum.Url,
		CapacityBytes:   sum.Capacity,
		FreeBytes:       sum.FreeSpace,
		Accessible:      sum.Accessible,
		MaintenanceMode: sum.MaintenanceMode,
	}
}
