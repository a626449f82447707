package ovo

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
)

// TestObjectFixturesRoundTrip replays obj_to_primitive() of real nova and
// cinder objects: decode then encode gives the same primitive, and the
// changes Go computes are oslo's obj_what_changed().
func TestObjectFixturesRoundTrip(t *testing.T) {
	for _, name := range fixtureNames(t, "obj_*.json") {
		fx := loadFixture(t, name)
		codec := codecFor(t, fx["namespace"].(string))
		reg := registryFor(fx["namespace"].(string))
		cases := []struct{ prim, changed string }{
			{"new", "new_what_changed"},
			{"reset", ""},
			{"modified", "modified_what_changed"},
		}
		for _, tc := range cases {
			prim, ok := fx[tc.prim]
			if !ok {
				continue
			}
			t.Run(name+"/"+tc.prim, func(t *testing.T) {
				obj, err := codec.Unmarshal(rawJSON(t, prim))
				if err != nil {
					t.Fatal(err)
				}
				got, err := codec.Encode(obj)
				if err != nil {
					t.Fatal(err)
				}
				sameJSON(t, "re-encoded primitive", got, prim)

				var want []string
				if tc.changed != "" {
					want = stringList(t, fx[tc.changed])
				}
				if g := sortedCopy(obj.WhatChanged()); !slices.Equal(g, sortedCopy(want)) {
					t.Errorf("WhatChanged = %v, want %v", g, want)
				}
				if err := reg.Check(obj); err != nil {
					t.Errorf("Check: %v", err)
				}
				if err := reg.Validate(obj); err != nil {
					t.Errorf("Validate: %v", err)
				}
				// Marshal gives the same as Encode.
				b, err := codec.Marshal(obj)
				if err != nil {
					t.Fatal(err)
				}
				again, err := codec.Unmarshal(b)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(canonical(t, mustEncode(t, codec, again)), canonical(t, got)) {
					t.Error("Marshal/Unmarshal is not stable")
				}
			})
		}
	}
}

func mustEncode(t testing.TB, c Codec, o *Object) map[string]any {
	t.Helper()
	p, err := c.Encode(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestObjectFixturesModified replays the assignments the recorder made on
// the reset object: Go's Registry.Set on the decoded "reset" primitive
// gives oslo's "modified" primitive (values normalised the same way,
// changes the same).
func TestObjectFixturesModified(t *testing.T) {
	for _, name := range fixtureNames(t, "obj_*.json") {
		fx := loadFixture(t, name)
		set, ok := fx["set"].(map[string]any)
		if !ok {
			continue
		}
		t.Run(name, func(t *testing.T) {
			ns := fx["namespace"].(string)
			codec, reg := codecFor(t, ns), registryFor(ns)
			obj, err := codec.Unmarshal(rawJSON(t, fx["reset"]))
			if err != nil {
				t.Fatal(err)
			}
			if len(obj.WhatChanged()) != 0 {
				t.Fatalf("reset object has changes %v", obj.WhatChanged())
			}
			for _, k := range sortedKeys(set) {
				if err := reg.Set(obj, k, set[k]); err != nil {
					t.Fatal(err)
				}
			}
			sameJSON(t, "modified primitive", mustEncode(t, codec, obj), fx["modified"])
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	nova := NovaCodec()
	tests := []struct {
		name, in    string
		unsupported bool
	}{
		{"not an object", `[1]`, false},
		{"no name", `{"nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{}}`, false},
		{"no version", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.data":{}}`, false},
		{"bad version", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.x","nova_object.data":{}}`, false},
		{"no data", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0"}`, false},
		{"data not object", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":[]}`, false},
		{"changes not list", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{},"nova_object.changes":"a"}`, false},
		{"cinder prefix", `{"versioned_object.name":"Volume","versioned_object.namespace":"cinder","versioned_object.version":"1.9","versioned_object.data":{}}`, false},
		{"other namespace", `{"nova_object.name":"Volume","nova_object.namespace":"cinder","nova_object.version":"1.9","nova_object.data":{}}`, true},
		{"bad nested", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{"f":{"nova_object.name":"Y"}}}`, false},
		{"trailing data", `{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{}} {}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nova.Unmarshal([]byte(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			var u *UnsupportedObjectError
			if errors.As(err, &u) != tc.unsupported {
				t.Errorf("UnsupportedObjectError = %v, want %v (%v)", !tc.unsupported, tc.unsupported, err)
			}
		})
	}
}

func TestEncodeShape(t *testing.T) {
	flavor := New("Flavor", "1.2")
	flavor.SetString("name", "m1.small")
	flavor.ResetChanges()
	inst := New("Instance", "2.7")
	inst.SetString("uuid", "a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b")
	inst.SetObject("flavor", flavor)
	inst.SetObject("info_cache", nil)
	inst.ResetChanges()

	p := mustEncode(t, NovaCodec(), inst)
	if _, ok := p["nova_object.changes"]; ok {
		t.Error("changes present without changes")
	}
	want := `{"nova_object.data":{"flavor":{"nova_object.data":{"name":"m1.small"},"nova_object.name":"Flavor","nova_object.namespace":"nova","nova_object.version":"1.2"},"info_cache":null,"uuid":"a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b"},"nova_object.name":"Instance","nova_object.namespace":"nova","nova_object.version":"2.7"}`
	if got := string(mustMarshal(t, p)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	// A nested change shows in the parent's changes, as obj_what_changed.
	flavor.SetInt("memory_mb", 2048)
	p = mustEncode(t, NovaCodec(), inst)
	if got := p["nova_object.changes"]; !reflect.DeepEqual(got, []any{"flavor"}) {
		t.Errorf("changes = %v, want [flavor]", got)
	}
	// A change to an unset field is not sent.
	inst.MarkChanged("hostname")
	p = mustEncode(t, NovaCodec(), inst)
	if got := p["nova_object.changes"]; !reflect.DeepEqual(got, []any{"flavor"}) {
		t.Errorf("changes = %v, want [flavor] (hostname is not set)", got)
	}

	// cinder prefix
	vol := New("Volume", "1.9")
	vol.SetInt("size", 10)
	p = mustEncode(t, CinderCodec(), vol)
	want = `{"versioned_object.changes":["size"],"versioned_object.data":{"size":10},"versioned_object.name":"Volume","versioned_object.namespace":"cinder","versioned_object.version":"1.9"}`
	if got := string(mustMarshal(t, p)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	if _, err := json.Marshal(vol); err == nil {
		t.Error("json.Marshal of *Object must fail")
	}
}

// TestChangeTracking checks oslo's change rules on a real primitive.
func TestChangeTracking(t *testing.T) {
	fx := loadFixture(t, "obj_compute_node.json")
	codec := NovaCodec()
	cn, err := codec.Unmarshal(rawJSON(t, fx["reset"]))
	if err != nil {
		t.Fatal(err)
	}
	if len(cn.WhatChanged()) != 0 {
		t.Fatalf("changes %v", cn.WhatChanged())
	}

	// Objects inside a plain list field do not propagate (base
	// obj_what_changed looks at VersionedObject values only) ...
	specs, err := cn.Objects("supported_hv_specs")
	if err != nil {
		t.Fatal(err)
	}
	specs[0].SetString("arch", "x86_64")
	if cn.Changed("supported_hv_specs") {
		t.Error("list-of-objects field propagated a child change")
	}
	// ... but an ObjectList's "objects" do, and the list object then
	// propagates to its parent.
	pools, err := cn.Object("pci_device_pools")
	if err != nil {
		t.Fatal(err)
	}
	pool := New("PciDevicePool", "1.1")
	pool.SetInt("count", 1)
	pools.Fields["objects"] = []any{pool}
	if !pools.Changed("objects") || !cn.Changed("pci_device_pools") {
		t.Errorf("ObjectList child change not propagated: %v / %v", pools.WhatChanged(), cn.WhatChanged())
	}

	// Non-recursive reset keeps nested changes.
	cn.SetInt("vcpus_used", 3)
	cn.ResetChanges()
	if got := cn.WhatChanged(); !slices.Equal(got, []string{"pci_device_pools"}) {
		t.Errorf("after ResetChanges: %v", got)
	}
	// Resetting some fields only.
	cn.SetInt("vcpus_used", 3)
	cn.SetInt("running_vms", 3)
	cn.ResetChanges("vcpus_used")
	if got := sortedCopy(cn.WhatChanged()); !slices.Equal(got, []string{"pci_device_pools", "running_vms"}) {
		t.Errorf("after ResetChanges(vcpus_used): %v", got)
	}
	// Recursive reset clears the changed subtree; the unchanged list field
	// keeps its child's change, as in oslo.
	cn.ResetChangesRecursive()
	if got := cn.WhatChanged(); len(got) != 0 || pool.Changed("count") {
		t.Errorf("after ResetChangesRecursive: %v / %v", got, pool.WhatChanged())
	}
	if !specs[0].Changed("arch") {
		t.Error("recursive reset reached an unchanged list field")
	}

	// Setting the same value is still a change.
	cn.SetString("host", cn.StringOrEmpty("host"))
	if !cn.Changed("host") {
		t.Error("same-value set not tracked")
	}

	// Clone is deep.
	c := cn.Clone()
	c.SetString("host", "other")
	cs, _ := c.Objects("supported_hv_specs")
	cs[0].SetString("arch", "i686")
	if cn.StringOrEmpty("host") == "other" || specs[0].StringOrEmpty("arch") != "x86_64" {
		t.Error("Clone shares state")
	}
}

func TestEntities(t *testing.T) {
	codec := NovaCodec()
	inst := New("Instance", "2.7")
	inst.SetString("uuid", "a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b")
	v, err := codec.EncodeEntity(map[string]any{
		"instance": inst,
		"list":     []*Object{inst},
		"n":        3,
		"f":        2.0,
		"set":      []string{"a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := mustMarshal(t, v)
	want := `{"f":2.0,"instance":{"nova_object.changes":["uuid"],"nova_object.data":{"uuid":"a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b"},"nova_object.name":"Instance","nova_object.namespace":"nova","nova_object.version":"2.7"},"list":[{"nova_object.changes":["uuid"],"nova_object.data":{"uuid":"a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b"},"nova_object.name":"Instance","nova_object.namespace":"nova","nova_object.version":"2.7"}],"n":3,"set":["a"]}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	back, err := codec.UnmarshalEntity(b)
	if err != nil {
		t.Fatal(err)
	}
	m := back.(map[string]any)
	if o, ok := m["instance"].(*Object); !ok || o.StringOrEmpty("uuid") == "" {
		t.Errorf("instance not decoded: %#v", m["instance"])
	}
	if l := m["list"].([]any); len(l) != 1 {
		t.Errorf("list: %v", l)
	} else if _, ok := l[0].(*Object); !ok {
		t.Errorf("list item not decoded: %T", l[0])
	}
	if m["n"] != json.Number("3") || m["f"] != json.Number("2.0") {
		t.Errorf("numbers: %v %v", m["n"], m["f"])
	}

	// float64 input (a decoder without UseNumber)
	var plain any
	if err := json.Unmarshal([]byte(`{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{"i":3,"f":1.5}}`), &plain); err != nil {
		t.Fatal(err)
	}
	o, err := codec.Decode(plain)
	if err != nil {
		t.Fatal(err)
	}
	if i, err := o.Int("i"); err != nil || i != 3 {
		t.Errorf("Int = %v, %v", i, err)
	}
	if f, err := o.Float("f"); err != nil || f != 1.5 {
		t.Errorf("Float = %v, %v", f, err)
	}
}

// TestNewList builds BlockDeviceMappingList(objects=[...]) as the recorder
// did and compares with oslo's primitive.
func TestNewList(t *testing.T) {
	fx := loadFixture(t, "obj_bdm_list.json")
	codec := NovaCodec()
	recorded, err := codec.Decode(fx["new"])
	if err != nil {
		t.Fatal(err)
	}
	items, err := recorded.Items()
	if err != nil {
		t.Fatal(err)
	}
	l := NewList("BlockDeviceMappingList", "1.18", items...)
	sameJSON(t, "list primitive", mustEncode(t, codec, l), fx["new"])

	// Get / IsNull / SetNull / Delete on an item.
	bdm := items[1]
	if v, ok := bdm.Get("volume_size"); !ok || v != json.Number("10") {
		t.Errorf("Get(volume_size) = %v, %v", v, ok)
	}
	if !bdm.IsNull("snapshot_id") || bdm.IsNull("volume_id") || bdm.IsNull("no_such") {
		t.Error("IsNull")
	}
	bdm.ResetChanges()
	bdm.SetNull("tag")
	if !bdm.IsNull("tag") || !bdm.Changed("tag") {
		t.Error("SetNull")
	}
	bdm.Delete("tag")
	if bdm.Has("tag") {
		t.Error("Delete")
	}
	if p := mustEncode(t, codec, bdm); p["nova_object.changes"] != nil {
		t.Errorf("change of a deleted field sent: %v", p["nova_object.changes"])
	}
	if v, ok := NovaZed().Version("BlockDeviceMappingList"); !ok || v != "1.18" {
		t.Errorf("Version = %s, %v", v, ok)
	}

	// DecodeEntity on an already decoded reply.
	var plain any
	if err := json.Unmarshal(rawJSON(t, []any{fx["new"], 1}), &plain); err != nil {
		t.Fatal(err)
	}
	ent, err := codec.DecodeEntity(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ent.([]any)[0].(*Object); !ok {
		t.Errorf("DecodeEntity left %T", ent.([]any)[0])
	}
}
