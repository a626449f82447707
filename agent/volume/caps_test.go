package volume

import (
	"regexp"
	"strings"
	"testing"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

func ds(ref, name string, capGiB, freeGiB float64, mods ...func(*vcenter.Datastore)) vcenter.Datastore {
	d := vcenter.Datastore{Ref: vcenter.Ref{Type: "Datastore", Value: ref}, Name: name, Type: "VMFS", Accessible: true, MaintenanceMode: "normal",
		CapacityBytes: int64(capGiB * (1 << 30)), FreeBytes: int64(freeGiB * (1 << 30))}
	for _, m := range mods {
		m(&d)
	}
	return d
}

// TestCapacityOf: the VMDK driver's volume stats: usable datastores summed
// once each across clusters, rounded half to even as Python's round().
func TestCapacityOf(t *testing.T) {
	shared := ds("datastore-1", "shared-1", 100.4, 50.5)
	clusters := []vcenter.Cluster{
		{Name: "c1", Datastores: []vcenter.Datastore{shared, ds("datastore-2", "local-1", 10, 9)}},
		{Name: "c2", Datastores: []vcenter.Datastore{
			shared,
			ds("datastore-3", "maint", 1000, 1000, func(d *vcenter.Datastore) { d.MaintenanceMode = "inMaintenance" }),
			ds("datastore-4", "gone", 1000, 1000, func(d *vcenter.Datastore) { d.Accessible = false }),
			ds("datastore-5", "shared-2", 20, 1.5),
		}},
	}
	ref := func(v string) vcenter.Ref { return vcenter.Ref{Type: "Datastore", Value: v} }
	for _, tc := range []struct {
		name      string
		re        *regexp.Regexp
		monitored map[vcenter.Ref]bool
		want      Capacity
	}{
		{"all datastores", nil, nil, Capacity{TotalGB: 130, FreeGB: 61}},
		{"datastore_regex shared", regexp.MustCompile("shared"), nil, Capacity{TotalGB: 120, FreeGB: 52}},
		// vmware_storage_profile: only the compliant datastores count
		{"profiles", nil, map[vcenter.Ref]bool{ref("datastore-2"): true, ref("datastore-5"): true, ref("datastore-3"): true}, Capacity{TotalGB: 30, FreeGB: 10}},
		{"profiles and regex", regexp.MustCompile("shared"), map[vcenter.Ref]bool{ref("datastore-2"): true, ref("datastore-5"): true}, Capacity{TotalGB: 20, FreeGB: 2}},
		{"profiles without datastores", nil, map[vcenter.Ref]bool{}, Capacity{}},
	} {
		if got := capacityOf(clusters, tc.re, tc.monitored); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if got := capacityOf(nil, nil, nil); got != (Capacity{}) {
		t.Errorf("no cluster: %+v", got)
	}
}

func TestCapabilities(t *testing.T) {
	c := capabilities("vmware", 5, &Capacity{TotalGB: 130, FreeGB: 61}, 7)
	want := map[string]any{
		"volume_backend_name": "vmware", "vendor_name": "VMware", "driver_version": DriverVersion,
		"storage_protocol": "vmdk", "reserved_percentage": 5, "total_capacity_gb": int64(130),
		"free_capacity_gb": int64(61), "shared_targets": false, "allocated_capacity_gb": int64(7),
		"filter_function": nil, "goodness_function": nil,
	}
	if len(c) != len(want) {
		t.Errorf("capabilities %v, want %v", c, want)
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("%s = %#v, want %#v", k, c[k], v)
		}
	}
	if u := capabilities("vmware", 0, nil, 0); u["total_capacity_gb"] != "unknown" || u["free_capacity_gb"] != "unknown" {
		t.Errorf("without vCenter: %v", u)
	}
}

func TestNotificationFields(t *testing.T) {
	if got := isoTime("2026-11-24T06:22:05.068894Z"); got != "2026-11-24T06:22:05.068894+00:00" {
		t.Errorf("isoTime = %v", got)
	}
	if got, _ := isoTime(nil).(string); !strings.HasSuffix(got, "+00:00") {
		t.Errorf("isoTime(nil) = %v", got)
	}
	got := metadataList(map[string]any{"purpose": "fixture", "a": "b"})
	if len(got) != 2 || got[0].(map[string]any)["key"] != "a" || got[1].(map[string]any)["value"] != "fixture" {
		t.Errorf("metadataList = %v", got)
	}
}
