package ovo

import (
	"reflect"
	"testing"
)

// FuzzDecode feeds arbitrary JSON to both codecs. Decoding never panics,
// and whatever decodes encodes back to a primitive that decodes to the
// same thing (encode is a fixed point after one decode).
func FuzzDecode(f *testing.F) {
	for _, pattern := range []string{"obj_*.json", "conductor_*.json"} {
		for _, name := range fixtureNames(f, pattern) {
			fx := loadFixture(f, name)
			for _, k := range []string{"new", "reset", "modified", "after", "result"} {
				if v, ok := fx[k]; ok {
					f.Add(mustMarshal(f, v))
				}
			}
			if args, ok := fx["args"].(map[string]any); ok {
				if v, ok := args["objinst"]; ok {
					f.Add(mustMarshal(f, v))
				}
			}
		}
	}
	f.Add([]byte(`{"nova_object.name":"X","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{"a":[{"nova_object.name":"Y","nova_object.namespace":"nova","nova_object.version":"1.0","nova_object.data":{}}]},"nova_object.changes":["a","a"]}`))
	f.Add([]byte(`{"versioned_object.name":"Volume","versioned_object.namespace":"cinder","versioned_object.version":"1.9","versioned_object.data":{"size":1e400}}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		for _, codec := range []Codec{NovaCodec(), CinderCodec(), {SerialNamespace: "versioned_object"}} {
			obj, err := codec.Unmarshal(data)
			if err != nil {
				continue
			}
			b, err := codec.Marshal(obj)
			if err != nil {
				t.Fatalf("Marshal after Unmarshal: %v", err)
			}
			again, err := codec.Unmarshal(b)
			if err != nil {
				t.Fatalf("Unmarshal of own output: %v\n%s", err, b)
			}
			b2, err := codec.Marshal(again)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != string(b2) {
				t.Fatalf("not a fixed point:\n%s\n%s", b, b2)
			}
			// Changes of unset fields are dropped on encode; the rest
			// come back.
			var sent []string
			for _, n := range obj.WhatChanged() {
				if obj.Has(n) {
					sent = append(sent, n)
				}
			}
			if got := again.WhatChanged(); !reflect.DeepEqual(sortedCopy(got), sortedCopy(sent)) {
				t.Fatalf("changes %v, sent %v", got, sent)
			}
			_ = NovaZed().Check(obj)
			_ = NovaZed().Validate(obj)
		}
	})
}
