package vcenter

import (
	"reflect"
	"regexp"
	"testing"
)

func TestDatastoreUsable(t *testing.T) {
	t.Parallel()
	ok := Datastore{Name: "ds-gold-1", Type: "VMFS", Accessible: true, MaintenanceMode: "normal"}
	with := func(f func(*Datastore)) Datastore { d := ok; f(&d); return d }
	tests := []struct {
		name  string
		ds    Datastore
		regex string // "" = nil
		want  bool
	}{
		{name: "VMFS", ds: ok, want: true},
		{name: "NFS", ds: with(func(d *Datastore) { d.Type = "NFS" }), want: true},
		{name: "NFS41", ds: with(func(d *Datastore) { d.Type = "NFS41" }), want: true},
		{name: "vsan", ds: with(func(d *Datastore) { d.Type = "vsan" }), want: true},
		{name: "OTHER type", ds: with(func(d *Datastore) { d.Type = "OTHER" }), want: false},
		{name: "vvol type", ds: with(func(d *Datastore) { d.Type = "VVOL" }), want: false},
		{name: "inaccessible", ds: with(func(d *Datastore) { d.Accessible = false }), want: false},
		{name: "maintenance unreported", ds: with(func(d *Datastore) { d.MaintenanceMode = "" }), want: true},
		{name: "in maintenance", ds: with(func(d *Datastore) { d.MaintenanceMode = "inMaintenance" }), want: false},
		{name: "entering maintenance", ds: with(func(d *Datastore) { d.MaintenanceMode = "enteringMaintenance" }), want: false},
		{name: "regex prefix", ds: ok, regex: "ds-gold", want: true},
		{name: "regex anchored at start only", ds: ok, regex: "gold", want: false},
		{name: "regex with wildcard", ds: ok, regex: ".*gold", want: true},
		{name: "regex alternation", ds: ok, regex: "ds-silver|ds-gold", want: true},
		{name: "regex full match", ds: ok, regex: "ds-gold$", want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var re *regexp.Regexp
			if tc.regex != "" {
				re = regexp.MustCompile(tc.regex)
			}
			if got := tc.ds.Usable(re); got != tc.want {
				t.Errorf("Usable(%q) = %t, want %t", tc.regex, got, tc.want)
			}
		})
	}
}

func TestClusterResources(t *testing.T) {
	t.Parallel()
	host := func(name string, threads int, memMB int64, mutate ...func(*Host)) Host {
		h := Host{
			Ref: Ref{"HostSystem", name}, Name: name, ConnectionState: "connected", PowerState: "poweredOn",
			CPUPackages: 2, CPUCores: threads / 2, CPUThreads: threads, CPUMhz: 2600,
			CPUModel: "Xeon", CPUVendor: "intel", MemoryBytes: memMB<<20 + 12345, MemoryUsedMB: 1000,
		}
		for _, m := range mutate {
			m(&h)
		}
		return h
	}
	const tib, gibB = int64(1) << 40, int64(1) << 30
	ds := func(name, typ string, capacity, free int64) Datastore {
		return Datastore{Ref: Ref{"Datastore", name}, Name: name, Type: typ, CapacityBytes: capacity, FreeBytes: free, Accessible: true, MaintenanceMode: "normal"}
	}
	cluster := Cluster{
		Hosts: []Host{
			host("h1", 32, 262144),
			host("h2", 48, 524288, func(h *Host) { h.CPUModel = "Epyc"; h.CPUVendor = "amd"; h.CPUMhz = 2000 }),
			host("h3", 96, 1048576, func(h *Host) { h.InMaintenance = true }),
			host("h4", 96, 1048576, func(h *Host) { h.ConnectionState = "disconnected" }),
			host("h5", 96, 1048576, func(h *Host) { h.ConnectionState = "notResponding" }),
		},
		Datastores: []Datastore{
			ds("gold-1", "VMFS", 10*tib, 2*tib+gibB/2),
			ds("gold-2", "NFS", 4*tib, 3*tib),
			ds("silver-1", "VMFS", 20*tib, 15*tib),
			ds("local", "OTHER", 50*tib, 50*tib),
		},
	}

	tests := []struct {
		name  string
		c     Cluster
		regex string
		want  Resources
	}{
		{
			name: "all datastores",
			c:    cluster,
			want: Resources{
				Hosts: 2, VCPUs: 80, MaxVCPUsPerHost: 48,
				MemoryMB: 786432, MemoryUsedMB: 2000, MaxMemoryMBPerHost: 524288,
				Datastore:   Ref{"Datastore", "silver-1"},
				DiskTotalGB: 20 * 1024, DiskFreeGB: 15 * 1024,
				DatastoresTotalGB: 34 * 1024, MaxDatastoreFreeGB: 15 * 1024,
				CPUInfo: CPUInfo{Sockets: 4, Cores: 40, Threads: 80, MinMhz: 2000},
			},
		},
		{
			name:  "regex selects gold",
			c:     cluster,
			regex: "gold",
			want: Resources{
				Hosts: 2, VCPUs: 80, MaxVCPUsPerHost: 48,
				MemoryMB: 786432, MemoryUsedMB: 2000, MaxMemoryMBPerHost: 524288,
				Datastore:   Ref{"Datastore", "gold-2"},
				DiskTotalGB: 4 * 1024, DiskFreeGB: 3 * 1024,
				DatastoresTotalGB: 14 * 1024, MaxDatastoreFreeGB: 3 * 1024,
				CPUInfo: CPUInfo{Sockets: 4, Cores: 40, Threads: 80, MinMhz: 2000},
			},
		},
		{
			name:  "regex matches nothing",
			c:     Cluster{Hosts: cluster.Hosts[:1], Datastores: cluster.Datastores},
			regex: "bronze",
			want: Resources{
				Hosts: 1, VCPUs: 32, MaxVCPUsPerHost: 32,
				MemoryMB: 262144, MemoryUsedMB: 1000, MaxMemoryMBPerHost: 262144,
				CPUInfo: CPUInfo{Vendor: "intel", Model: "Xeon", Sockets: 2, Cores: 16, Threads: 32, MinMhz: 2600},
			},
		},
		{
			name: "GiB rounded down per figure",
			c:    Cluster{Datastores: []Datastore{ds("a", "VMFS", gibB+gibB/2, gibB/2), ds("b", "VMFS", gibB+gibB/2, gibB-1)}},
			want: Resources{
				Datastore:   Ref{"Datastore", "b"},
				DiskTotalGB: 1, DiskFreeGB: 0, DatastoresTotalGB: 3, MaxDatastoreFreeGB: 0,
			},
		},
		{
			name: "empty cluster",
			c:    Cluster{},
			want: Resources{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var re *regexp.Regexp
			if tc.regex != "" {
				re = regexp.MustCompile(tc.regex)
			}
			if got := tc.c.Resources(re); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resources(%q) =\n%+v\nwant\n%+v", tc.regex, got, tc.want)
			}
		})
	}
}

func TestBestDatastoreTie(t *testing.T) {
	t.Parallel()
	c := Cluster{Datastores: []Datastore{
		{Name: "a", Type: "VMFS", Accessible: true, FreeBytes: 5},
		{Name: "b", Type: "VMFS", Accessible: true, FreeBytes: 5},
	}}
	if best, ok := c.BestDatastore(nil); !ok || best.Name != "a" {
		t.Errorf("BestDatastore = %q, %t; want a, true", best.Name, ok)
	}
	if _, ok := (Cluster{}).BestDatastore(nil); ok {
		t.Error("BestDatastore of an empty cluster found one")
	}
}
