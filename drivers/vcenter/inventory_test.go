package vcenter

import (
	"errors"
	"fmt"
	"regexp"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// TestClustersRoundTrips checks that reading N clusters of M hosts costs the
// same few SOAP calls whatever N and M are.
func TestClustersRoundTrips(t *testing.T) {
	t.Parallel()
	want := map[string]int64{"CreateContainerView": 1, "RetrievePropertiesEx": 1, "DestroyView": 1}
	tests := []struct {
		clusters, hosts, datastores int
	}{
		{clusters: 2, hosts: 3, datastores: 2},
		{clusters: 10, hosts: 10, datastores: 3},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%dx%d", tc.clusters, tc.hosts), func(t *testing.T) {
			t.Parallel()
			sim := startSim(t, SimulatorConfig{Clusters: tc.clusters, HostsPerCluster: tc.hosts, Datastores: tc.datastores})
			s := login(t, simConfig(sim))

			before := s.Calls()
			clusters, err := s.Clusters(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			got := delta(before, s.Calls())
			t.Logf("%d clusters x %d hosts: SOAP calls %v", tc.clusters, tc.hosts, got)
			if !equalCalls(got, want) {
				t.Errorf("calls = %v, want %v", got, want)
			}

			if len(clusters) != tc.clusters {
				t.Fatalf("got %d clusters, want %d", len(clusters), tc.clusters)
			}
			for i, c := range clusters {
				if wantName := fmt.Sprintf("DC0_C%d", i); c.Name != wantName && tc.clusters <= 10 {
					t.Errorf("cluster %d name = %q, want %q", i, c.Name, wantName)
				}
				if len(c.Hosts) != tc.hosts || len(c.Datastores) != tc.datastores {
					t.Errorf("cluster %s has %d hosts and %d datastores, want %d and %d",
						c.Name, len(c.Hosts), len(c.Datastores), tc.hosts, tc.datastores)
				}
				r := c.Resources(nil)
				if r.Hosts != tc.hosts || r.VCPUs != int64(2*tc.hosts) {
					t.Errorf("cluster %s resources = %+v, want %d hosts, %d vCPUs", c.Name, r, tc.hosts, 2*tc.hosts)
				}
			}
		})
	}
}

func TestClustersContents(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	s := login(t, simConfig(sim))
	clusters, err := s.Clusters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(clusters) != 2 {
		t.Fatalf("got %d clusters, want 2", len(clusters))
	}
	c := clusters[0]
	if c.Name != "DC0_C0" || c.Datacenter != "DC0" || c.Ref.Type != "ClusterComputeResource" || c.Ref.Value == "" ||
		c.ResourcePool.Type != "ResourcePool" || !c.DRSEnabled {
		t.Errorf("cluster = %+v", c)
	}
	if c.Ref.Reference() != (types.ManagedObjectReference{Type: c.Ref.Type, Value: c.Ref.Value}) || c.Ref.String() != "ClusterComputeResource:"+c.Ref.Value {
		t.Errorf("Ref conversions: %v %s", c.Ref.Reference(), c.Ref)
	}

	h := c.Hosts[0]
	wantHost := Host{
		Ref: h.Ref, Name: "DC0_C0_H0", ConnectionState: "connected", PowerState: "poweredOn",
		CPUPackages: 2, CPUCores: 2, CPUThreads: 2, CPUMhz: 2294,
		CPUModel: "Intel(R) Core(TM) i7-3615QM CPU @ 2.30GHz", CPUVendor: "intel",
		MemoryBytes: 4294430720, MemoryUsedMB: 1404, CPUUsedMhz: 67,
		Product: h.Product, Vendor: "VMware, Inc.", Model: "VMware Virtual Platform",
	}
	if h != wantHost || h.Ref.Type != "HostSystem" || h.Product.Name != "VMware ESXi" || h.Product.Version == "" {
		t.Errorf("host =\n%+v\nwant\n%+v", h, wantHost)
	}

	if len(c.Datastores) != 2 {
		t.Fatalf("datastores = %+v", c.Datastores)
	}
	const tib = int64(1) << 40
	for i, d := range c.Datastores {
		wantCap := (4 + 2*int64(i)) * tib
		if d.Name != fmt.Sprintf("LocalDS_%d", i) || d.Type != "VMFS" || !d.Accessible || d.MaintenanceMode != "normal" ||
			d.CapacityBytes != wantCap || d.FreeBytes <= 0 || d.FreeBytes >= d.CapacityBytes || d.URL == "" {
			t.Errorf("datastore %d = %+v", i, d)
		}
	}
	// Both clusters see the same, shared datastores.
	if clusters[1].Datastores[0].Ref != c.Datastores[0].Ref {
		t.Errorf("datastores not shared: %v vs %v", clusters[1].Datastores[0].Ref, c.Datastores[0].Ref)
	}

	tests := []struct {
		name  string
		regex *regexp.Regexp
		want  Resources
	}{
		{
			name: "all datastores",
			want: Resources{
				Hosts: 3, VCPUs: 6, MaxVCPUsPerHost: 2, MemoryMB: 3 * 4095, MemoryUsedMB: 3 * 1404, MaxMemoryMBPerHost: 4095,
				Datastore:   c.Datastores[1].Ref,
				DiskTotalGB: 6 * 1024, DiskFreeGB: c.Datastores[1].FreeBytes >> 30,
				DatastoresTotalGB: 10 * 1024, MaxDatastoreFreeGB: c.Datastores[1].FreeBytes >> 30,
				CPUInfo: CPUInfo{Vendor: "intel", Model: h.CPUModel, Sockets: 6, Cores: 6, Threads: 6, MinMhz: 2294},
			},
		},
		{
			name:  "regex",
			regex: regexp.MustCompile("LocalDS_0$"),
			want: Resources{
				Hosts: 3, VCPUs: 6, MaxVCPUsPerHost: 2, MemoryMB: 3 * 4095, MemoryUsedMB: 3 * 1404, MaxMemoryMBPerHost: 4095,
				Datastore:   c.Datastores[0].Ref,
				DiskTotalGB: 4 * 1024, DiskFreeGB: c.Datastores[0].FreeBytes >> 30,
				DatastoresTotalGB: 4 * 1024, MaxDatastoreFreeGB: c.Datastores[0].FreeBytes >> 30,
				CPUInfo: CPUInfo{Vendor: "intel", Model: h.CPUModel, Sockets: 6, Cores: 6, Threads: 6, MinMhz: 2294},
			},
		},
	}
	for _, tc := range tests {
		if got := c.Resources(tc.regex); got != tc.want {
			t.Errorf("%s: Resources =\n%+v\nwant\n%+v", tc.name, got, tc.want)
		}
	}
}

func TestClustersByName(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 3, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	tests := []struct {
		names   []string
		want    []string
		wantErr error
	}{
		{names: nil, want: []string{"DC0_C0", "DC0_C1", "DC0_C2"}},
		{names: []string{"DC0_C1"}, want: []string{"DC0_C1"}},
		{names: []string{"DC0_C2", "DC0_C0"}, want: []string{"DC0_C0", "DC0_C2"}},
		{names: []string{"nope"}, wantErr: ErrNotFound},
		{names: []string{"DC0_C0", "nope"}, wantErr: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.names), func(t *testing.T) {
			clusters, err := s.Clusters(t.Context(), tc.names...)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range clusters {
				got = append(got, c.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("clusters = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestClustersNestedFolderAndHostStates creates a cluster in nested host
// folders and changes host states, then checks what Clusters reports.
func TestClustersNestedFolderAndHostStates(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 2, HostsPerCluster: 3, Datastores: 1})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	c := s.Client()

	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts := clusters[0].Hosts

	dc := object.NewDatacenter(c, sim.model.Map().Any("Datacenter").Reference())
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	outer, err := folders.HostFolder.CreateFolder(ctx, "outer")
	if err != nil {
		t.Fatal(err)
	}
	inner, err := outer.CreateFolder(ctx, "inner")
	if err != nil {
		t.Fatal(err)
	}
	wait := func(task *object.Task, err error) {
		t.Helper()
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Creating hosts and clusters reads simulator package state that
	// building another simulator writes; see simulatorBuild.
	func() {
		simulatorBuild.RLock()
		defer simulatorBuild.RUnlock()
		nested, err := inner.CreateCluster(ctx, "nested", types.ClusterConfigSpecEx{})
		if err != nil {
			t.Fatal(err)
		}
		wait(nested.AddHost(ctx, types.HostConnectSpec{HostName: "nested_H0"}, true, nil, nil))
	}()
	wait(object.NewHostSystem(c, hosts[0].Ref.Reference()).EnterMaintenanceMode(ctx, 0, false, nil))
	wait(object.NewHostSystem(c, hosts[1].Ref.Reference()).Disconnect(ctx))

	before := s.Calls()
	clusters, err = s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := delta(before, s.Calls()); got["RetrievePropertiesEx"] != 1 || len(got) != 3 {
		t.Errorf("calls = %v, want 3 round trips", got)
	}
	if len(clusters) != 3 || clusters[2].Name != "nested" || len(clusters[2].Hosts) != 1 {
		t.Fatalf("clusters = %+v, want the nested one last", clusters)
	}
	for _, cl := range clusters {
		if cl.Datacenter != "DC0" {
			t.Errorf("cluster %s datacenter = %q, want DC0", cl.Name, cl.Datacenter)
		}
	}
	h := clusters[0].Hosts
	if !h[0].InMaintenance || h[1].ConnectionState != "disconnected" || h[2].Usable() != true {
		t.Errorf("host states = %+v", h)
	}
	if r := clusters[0].Resources(nil); r.Hosts != 1 || r.VCPUs != 2 || r.MemoryMB != 4095 {
		t.Errorf("resources with 1 usable host = %+v", r)
	}
}
