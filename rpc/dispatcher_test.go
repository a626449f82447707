package rpc

import (
	"context"
	"encoding/json"
	"testing"
)

// TestDispatchRules replays oslo's dispatch table (oslo-wire contract §4.4):
// endpoints at 1.3 in the null namespace and baseapi at 1.1.
func TestDispatchRules(t *testing.T) {
	ok := func(context.Context, *Request) (any, error) { return "ok", nil }
	d := dispatcher{endpoints: []Endpoint{
		{Version: "1.3", Methods: map[string]Handler{"echo": ok, "_private": ok}},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]Handler{"ping": ok}},
	}}
	tests := []struct {
		name  string
		inner string
		class string // "" = dispatched
		msg   string
	}{
		{"no version", `{"method":"echo","args":{}}`, "", ""},
		{"1.0", `{"method":"echo","version":"1.0"}`, "", ""},
		{"1.3", `{"method":"echo","version":"1.3"}`, "", ""},
		{"1.2.9", `{"method":"echo","version":"1.2.9"}`, "", ""},
		{"1.3.1", `{"method":"echo","version":"1.3.1"}`, "UnsupportedVersion", "Endpoint does not support RPC version 1.3.1. Attempted method: echo"},
		{"1.4", `{"method":"echo","version":"1.4"}`, "UnsupportedVersion", "Endpoint does not support RPC version 1.4. Attempted method: echo"},
		{"2.0", `{"method":"echo","version":"2.0"}`, "UnsupportedVersion", "Endpoint does not support RPC version 2.0. Attempted method: echo"},
		{"0.9", `{"method":"echo","version":"0.9"}`, "UnsupportedVersion", "Endpoint does not support RPC version 0.9. Attempted method: echo"},
		{"private", `{"method":"_private"}`, "NoSuchMethod", "Endpoint does not support RPC method _private"},
		{"unknown", `{"method":"nope"}`, "NoSuchMethod", "Endpoint does not support RPC method nope"},
		{"ping baseapi", `{"method":"ping","namespace":"baseapi"}`, "", ""},
		{"ping baseapi 1.1", `{"method":"ping","namespace":"baseapi","version":"1.1"}`, "", ""},
		{"ping baseapi 1.2", `{"method":"ping","namespace":"baseapi","version":"1.2"}`, "UnsupportedVersion", "Endpoint does not support RPC version 1.2. Attempted method: ping"},
		{"ping null ns", `{"method":"ping"}`, "NoSuchMethod", "Endpoint does not support RPC method ping"},
		{"unknown ns", `{"method":"echo","namespace":"nope"}`, "UnsupportedVersion", "Endpoint does not support RPC version 1.0. Attempted method: echo"},
		{"no method", `{"args":{}}`, "TypeError", "attribute name must be string, not 'NoneType'"},
		{"numeric method", `{"method":5}`, "TypeError", "attribute name must be string, not 'int'"},
		{"no method, bad version", `{"version":"9.0"}`, "UnsupportedVersion", "Endpoint does not support RPC version 9.0"},
		{"null version", `{"method":"echo","version":null}`, "UnsupportedVersion", "Endpoint does not support RPC version None. Attempted method: echo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal([]byte(tc.inner), &fields); err != nil {
				t.Fatal(err)
			}
			h, err := d.lookup(parseRequest(fields, "q"))
			if tc.class == "" {
				if err != nil || h == nil {
					t.Fatalf("want dispatch, got %v", err)
				}
				return
			}
			re := asRemoteError(err)
			if re.Class != tc.class || re.Message != tc.msg {
				t.Fatalf("got %s %q, want %s %q", re.Class, re.Message, tc.class, tc.msg)
			}
		})
	}
}

func TestVersionCompatible(t *testing.T) {
	tests := []struct {
		imp, v string
		want   bool
	}{
		{"6.1", "6.0", true}, {"6.1", "6.1", true}, {"6.1", "6.2", false}, {"6.1", "5.13", false},
		{"2.0", "2.0", true}, {"2.0", "2.1", false}, {"2.0", "3.0", false}, {"2.0", "2.0.1", false},
		{"1.3.2", "1.3.1", true},
	}
	for _, tc := range tests {
		got, err := versionCompatible(tc.imp, tc.v)
		if err != nil || got != tc.want {
			t.Errorf("versionCompatible(%s, %s) = %v, %v; want %v", tc.imp, tc.v, got, err, tc.want)
		}
	}
	if _, err := versionCompatible("1.0", "abc"); err == nil {
		t.Error("a version without a number must be refused")
	}
}

func TestUniqueIDWindowIs16(t *testing.T) {
	u := newUniqueIDs(16)
	if !u.add("a") || u.add("a") {
		t.Fatal("second a must be a duplicate")
	}
	for i := 0; i < 15; i++ {
		u.add(uuidHex())
	}
	if u.add("a") {
		t.Fatal("a after 15 others is still a duplicate (oslo: dispatched once)")
	}
	for i := 0; i < 16; i++ {
		u.add(uuidHex())
	}
	if !u.add("a") {
		t.Fatal("a after 16 others has been evicted (oslo: dispatched again)")
	}
}
