package ovo

import (
	"errors"
	"maps"
	"slices"
	"testing"
)

// TestRegistryMatchesRecording compares the generated Go registries with
// what the recorder read from the real nova and cinder: versions, list
// classes and oslo's obj_tree_get_versions() of every class.
func TestRegistryMatchesRecording(t *testing.T) {
	fx := loadFixture(t, "registry_zed.json")
	for _, tc := range []struct {
		project string
		reg     *Registry
	}{{"nova", NovaZed()}, {"cinder", CinderZed()}} {
		t.Run(tc.project, func(t *testing.T) {
			want := fx[tc.project].(map[string]any)
			versions := map[string]string{}
			for k, v := range want["versions"].(map[string]any) {
				versions[k] = v.(string)
			}
			if got := tc.reg.Versions(); !maps.Equal(got, versions) {
				t.Errorf("versions differ:\n got %v\nwant %v", got, versions)
			}
			var lists []string
			for _, n := range tc.reg.Names() {
				if s, _ := tc.reg.Lookup(n); s.List {
					lists = append(lists, n)
				}
			}
			if w := stringList(t, want["lists"]); !slices.Equal(lists, w) {
				t.Errorf("lists = %v, want %v", lists, w)
			}
			for name, tree := range want["trees"].(map[string]any) {
				wantTree := map[string]string{}
				for k, v := range tree.(map[string]any) {
					wantTree[k] = v.(string)
				}
				got, err := tc.reg.TreeVersions(name)
				if _, bad := wantTree["error"]; bad {
					if err == nil {
						t.Errorf("%s: oslo failed (%s), Go did not", name, wantTree["error"])
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if !maps.Equal(got, wantTree) {
					t.Errorf("TreeVersions(%s):\n got %v\nwant %v", name, got, wantTree)
				}
			}
		})
	}
	if n, ok := fx["nova_service_version"].(interface{ String() string }); !ok || n.String() != "64" || NovaZedServiceVersion != 64 {
		t.Errorf("service version %v / %d", fx["nova_service_version"], NovaZedServiceVersion)
	}
	if fx["cinder_history_version"] != CinderZedObjectsVersion {
		t.Errorf("cinder history %v / %s", fx["cinder_history_version"], CinderZedObjectsVersion)
	}
}

func TestZedVersions(t *testing.T) {
	nova := NovaZedVersions()
	for name, want := range map[string]string{
		"Instance": "2.7", "InstanceList": "2.6", "ComputeNode": "1.19", "Service": "1.22",
		"Flavor": "1.2", "BlockDeviceMapping": "1.21", "BlockDeviceMappingList": "1.18",
		"InstanceAction": "1.2", "InstanceActionEvent": "1.4", "InstanceInfoCache": "1.5",
		"Migration": "1.7", "RequestSpec": "1.14", "ImageMetaProps": "1.34",
	} {
		if nova[name] != want {
			t.Errorf("nova %s = %q, want %s", name, nova[name], want)
		}
	}
	cinder := CinderZedVersions()
	for name, want := range map[string]string{"Volume": "1.9", "Snapshot": "1.6", "VolumeAttachment": "1.3", "Service": "1.6", "Backup": "1.7"} {
		if cinder[name] != want {
			t.Errorf("cinder %s = %q, want %s", name, cinder[name], want)
		}
	}
	// Fresh maps: changing one does not change the next.
	nova["Instance"] = "9.9"
	if NovaZedVersions()["Instance"] != "2.7" {
		t.Error("NovaZedVersions shares state")
	}
	s, _ := NovaZed().Lookup("Instance")
	s.Fields["bogus"] = FieldSpec{Type: "String"}
	if s2, _ := NovaZed().Lookup("Instance"); s2.Fields["bogus"].Type != "" {
		t.Error("Lookup shares state")
	}
	if f := s.Fields["launched_at"]; f.Type != "DateTime" || !f.Nullable {
		t.Errorf("Instance.launched_at = %+v", f)
	}
	if f := s.Fields["flavor"]; f.Type != "Object<Flavor>" || f.Nullable {
		t.Errorf("Instance.flavor = %+v", f)
	}
	ic, _ := NovaZed().Lookup("InstanceInfoCache")
	if ic.Fields["network_info"].Type != "JSON" {
		t.Errorf("network_info = %+v", ic.Fields["network_info"])
	}
	if _, err := NovaZed().TreeVersions("NoSuch"); err == nil {
		t.Error("TreeVersions of an unknown class")
	}
}

func TestIsCompatible(t *testing.T) {
	tests := []struct {
		requested, current string
		want               bool
	}{
		{"2.7", "2.7", true},
		{"2.6", "2.7", true},
		{"2.8", "2.7", false},
		{"1.7", "2.7", false},
		{"3.0", "2.7", false},
		{"1.19", "1.2", false}, // numeric, not lexical
		{"1.2", "1.19", true},
		{"1.5.1", "1.5", false},
		{"1.5", "1.5.1", true},
		{"1.5.1", "1.6", true},
	}
	for _, tc := range tests {
		got, err := IsCompatible(tc.requested, tc.current)
		if err != nil || got != tc.want {
			t.Errorf("IsCompatible(%s, %s) = %v, %v; want %v", tc.requested, tc.current, got, err, tc.want)
		}
	}
	if _, err := IsCompatible("a.b", "1.0"); err == nil {
		t.Error("bad version accepted")
	}
	if c, _ := CompareVersions("1.10", "1.9"); c != 1 {
		t.Errorf("CompareVersions(1.10, 1.9) = %d", c)
	}
}

func TestCheck(t *testing.T) {
	reg := NovaZed()
	inst := New("Instance", "2.7")
	flavor := New("Flavor", "1.2")
	inst.SetObject("flavor", flavor)
	if err := reg.Check(inst); err != nil {
		t.Fatal(err)
	}
	// A z-version is cut to x.y before giving up.
	inst.Version = "2.7.1"
	if err := reg.Check(inst); err != nil {
		t.Errorf("2.7.1: %v", err)
	}
	// A newer nested object makes the whole tree incompatible.
	inst.Version = "2.7"
	flavor.Version = "1.3"
	var inc *IncompatibleVersionError
	if err := reg.Check(inst); !errors.As(err, &inc) || inc.Name != "Flavor" || inc.Supported != "1.2" {
		t.Errorf("Check = %v", err)
	}
	flavor.Version = "1.2"
	inst.SetObjects("bogus", []*Object{New("NoSuchThing", "1.0")})
	var unreg *UnregisteredObjectError
	if err := reg.Check(inst); !errors.As(err, &unreg) {
		t.Errorf("Check = %v", err)
	}
}

func TestRegistrySetAndValidate(t *testing.T) {
	reg := NovaZed()
	cn := New("ComputeNode", "1.19")
	for _, tc := range []struct {
		field string
		value any
		want  string // JSON of the stored primitive
	}{
		{"updated_at", "2026-11-24T06:20:00.999999Z", `"2026-11-24T06:20:00Z"`},
		{"host_ip", "2001:DB8:0:0::1", `"2001:db8::1"`},
		{"cpu_allocation_ratio", 16, `16.0`},
		{"ram_allocation_ratio", 1.5, `1.5`},
		{"vcpus", 96.0, `96`},
		{"disk_available_least", nil, `null`},
	} {
		if err := reg.Set(cn, tc.field, tc.value); err != nil {
			t.Errorf("Set(%s): %v", tc.field, err)
			continue
		}
		if got := short(cn.Fields[tc.field]); got != tc.want {
			t.Errorf("Set(%s, %v) stored %s, want %s", tc.field, tc.value, got, tc.want)
		}
		if !cn.Changed(tc.field) {
			t.Errorf("Set(%s) not tracked", tc.field)
		}
	}
	for _, tc := range []struct {
		field string
		value any
	}{
		{"no_such_field", 1},
		{"vcpus", "many"},
		{"vcpus", nil}, // not nullable
		{"updated_at", "yesterday"},
		{"host_ip", "not-an-ip"},
		{"stats", []string{"a"}},
		{"supported_hv_specs", []*Object{New("HVSpec", "1.2"), nil}},
		{"pci_device_pools", New("Flavor", "1.2")},
	} {
		before := cn.Clone()
		if err := reg.Set(cn, tc.field, tc.value); err == nil {
			t.Errorf("Set(%s, %v) accepted", tc.field, tc.value)
		}
		sameJSON(t, "object after a refused Set", mustEncode(t, NovaCodec(), cn), mustEncode(t, NovaCodec(), before))
	}
	if err := reg.Set(New("Nope", "1.0"), "x", 1); err == nil {
		t.Error("Set on an unregistered class")
	}
	bad := New("ComputeNode", "1.19")
	bad.Fields["metrics"] = 5.0
	if err := reg.Validate(bad); err == nil {
		t.Error("Validate accepted a float in a String field")
	}
}
