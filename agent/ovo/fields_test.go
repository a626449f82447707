package ovo

import (
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"testing"
	"time"
)

// TestDateTimeCases replays oslo's DateTimeField from_primitive then
// to_primitive on a range of inputs (fixtures/nova/datetime_cases.json).
func TestDateTimeCases(t *testing.T) {
	var cases []struct {
		In    string `json:"in"`
		Out   string `json:"out"`
		UTC   string `json:"utc"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(readFixture(t, "datetime_cases.json"), &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		got, err := NormalizeDateTime(c.In)
		if c.Error != "" {
			if err == nil {
				t.Errorf("%q: oslo raised %s, Go gave %q", c.In, c.Error, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.In, err)
			continue
		}
		if got != c.Out {
			t.Errorf("%q: got %q, oslo %q", c.In, got, c.Out)
		}
		tm, _ := ParseDateTime(c.In)
		if u := tm.UTC().Format("2006-01-02T15:04:05.000000Z"); u != c.UTC {
			t.Errorf("%q: instant %s, oslo %s", c.In, u, c.UTC)
		}
		// The normalised form is a fixed point.
		if again, err := NormalizeDateTime(got); err != nil || again != got {
			t.Errorf("%q: not a fixed point: %q, %v", got, again, err)
		}
	}
}

func TestFormatDateTime(t *testing.T) {
	ts := time.Date(2026, 11, 24, 6, 20, 0, 999999999, time.UTC)
	if got := FormatDateTime(ts); got != "2026-11-24T06:20:00Z" {
		t.Errorf("got %s", got)
	}
	// Another location is written in UTC.
	cet := time.FixedZone("CET", 3600)
	if got := FormatDateTime(ts.In(cet)); got != "2026-11-24T06:20:00Z" {
		t.Errorf("CET: got %s", got)
	}
	// Years below 1000 are not padded (glibc strftime %Y), as oslo writes.
	if got := FormatDateTime(time.Date(126, 1, 2, 3, 4, 5, 0, time.UTC)); got != "126-01-02T03:04:05Z" {
		t.Errorf("year 126: got %s", got)
	}
	// Round trip of a real primitive's datetimes is exact.
	fx := loadFixture(t, "obj_instance_action_event.json")
	ev, err := NovaCodec().Decode(fx["reset"])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"start_time", "finish_time"} {
		tm, err := ev.DateTime(f)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := ev.String(f)
		if FormatDateTime(tm) != s {
			t.Errorf("%s: %s -> %s", f, s, FormatDateTime(tm))
		}
	}
	// The recorder set 06:20:03.999999; oslo sends whole seconds.
	if s, _ := ev.String("finish_time"); s != "2026-11-24T06:20:03Z" {
		t.Errorf("finish_time = %s", s)
	}
	if _, err := ev.DateTime("created_at"); !errors.Is(err, ErrNull) {
		t.Errorf("created_at: %v", err)
	}
}

func TestFormatFloat(t *testing.T) {
	// Python's repr / json.dumps of each value.
	tests := []struct {
		f    float64
		want string
	}{
		{16.0, "16.0"},
		{1.5, "1.5"},
		{0.1, "0.1"},
		{1e+16, "1e+16"},
		{1000000000000000.0, "1000000000000000.0"},
		{123456789012345.6, "123456789012345.6"},
		{0.0001, "0.0001"},
		{1e-05, "1e-05"},
		{1.5e-05, "1.5e-05"},
		{-2.5, "-2.5"},
		{1e+22, "1e+22"},
		{0.30000000000000004, "0.30000000000000004"},
		{5e-324, "5e-324"},
		{1.7976931348623157e+308, "1.7976931348623157e+308"},
		{100.0, "100.0"},
		{12345.678, "12345.678"},
		{math.Copysign(0, -1), "-0.0"},
		{0.0, "0.0"},
		{9999999999999998.0, "9999999999999998.0"},
		{0.0001234, "0.0001234"},
	}
	for _, tc := range tests {
		if got := FormatFloat(tc.f); got != tc.want {
			t.Errorf("FormatFloat(%v) = %s, want %s", tc.f, got, tc.want)
		}
	}
}

func TestToPrimitive(t *testing.T) {
	ts := time.Date(2026, 11, 24, 6, 20, 0, 123456000, time.UTC)
	s := "x"
	var nilPtr *string
	tests := []struct {
		in   any
		want string
	}{
		{nil, `null`},
		{true, `true`},
		{"s", `"s"`},
		{int64(-3), `-3`},
		{uint8(7), `7`},
		{float32(0.5), `0.5`},
		{16.0, `16.0`},
		{ts, `"2026-11-24T06:20:00Z"`},
		{netip.MustParseAddr("192.0.2.2"), `"192.0.2.2"`},
		{netip.MustParsePrefix("10.0.0.0/24"), `"10.0.0.0/24"`},
		{[]string{"b", "a"}, `["b","a"]`},
		{[]string(nil), `[]`},
		{map[string]string{"k": "v"}, `{"k":"v"}`},
		{map[string]any{"t": ts, "n": 1}, `{"n":1,"t":"2026-11-24T06:20:00Z"}`},
		{&s, `"x"`},
		{nilPtr, `null`},
		{json.RawMessage(`{"a": 1.50}`), `{"a":1.50}`},
	}
	for _, tc := range tests {
		p, err := ToPrimitive(tc.in)
		if err != nil {
			t.Errorf("%#v: %v", tc.in, err)
			continue
		}
		if got := string(mustMarshal(t, p)); got != tc.want {
			t.Errorf("%#v: got %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, bad := range []any{math.NaN(), math.Inf(1), make(chan int), map[int]string{1: "a"}, netip.Addr{}, struct{}{}} {
		if _, err := ToPrimitive(bad); err == nil {
			t.Errorf("%#v accepted", bad)
		}
	}
}

// TestTypedAccessors reads a real Instance primitive through the typed
// getters.
func TestTypedAccessors(t *testing.T) {
	fx := loadFixture(t, "obj_instance.json")
	inst, err := NovaCodec().Decode(fx["reset"])
	if err != nil {
		t.Fatal(err)
	}
	if s, err := inst.String("uuid"); err != nil || !IsUUID(s) {
		t.Errorf("uuid %q %v", s, err)
	}
	if n, err := inst.Int("memory_mb"); err != nil || n != 2048 {
		t.Errorf("memory_mb %d %v", n, err)
	}
	if b, err := inst.Bool("locked"); err != nil || b {
		t.Errorf("locked %v %v", b, err)
	}
	if tm, err := inst.DateTime("launched_at"); err != nil || !tm.Equal(time.Date(2026, 11, 24, 6, 10, 5, 0, time.UTC)) {
		t.Errorf("launched_at %v %v", tm, err)
	}
	if a, err := inst.IPAddress("access_ip_v6"); err != nil || a != netip.MustParseAddr("2001:db8::10") {
		t.Errorf("access_ip_v6 %v %v", a, err)
	}
	if _, err := inst.String("key_name"); !errors.Is(err, ErrNull) {
		t.Errorf("key_name: %v", err)
	}
	if _, err := inst.String("fault"); !errors.Is(err, ErrNotSet) {
		t.Errorf("fault: %v", err)
	}
	var fte *FieldTypeError
	if _, err := inst.Int("hostname"); !errors.As(err, &fte) {
		t.Errorf("hostname as int: %v", err)
	}
	sm, err := inst.StringDict("system_metadata")
	if err != nil || sm["image_disk_format"] == nil || *sm["image_disk_format"] != "vmdk" || sm["clean_attempts"] != nil {
		t.Errorf("system_metadata %v %v", sm, err)
	}
	flavor, err := inst.Object("flavor")
	if err != nil {
		t.Fatal(err)
	}
	if f, err := flavor.Float("rxtx_factor"); err != nil || f != 1.0 {
		t.Errorf("rxtx_factor %v %v", f, err)
	}
	if raw := flavor.Fields["rxtx_factor"]; raw != json.Number("1.0") {
		t.Errorf("rxtx_factor primitive %v", raw)
	}
	cache, err := inst.Object("info_cache")
	if err != nil {
		t.Fatal(err)
	}
	var vifs []struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Network struct {
			Bridge string `json:"bridge"`
		} `json:"network"`
		Details map[string]any `json:"details"`
	}
	if err := cache.JSON("network_info", &vifs); err != nil || len(vifs) != 1 || vifs[0].Type != "ovs" || vifs[0].Network.Bridge != "br-int" {
		t.Errorf("network_info %+v %v", vifs, err)
	}
	sg, err := inst.Object("security_groups")
	if err != nil {
		t.Fatal(err)
	}
	if items, err := sg.Items(); err != nil || len(items) != 0 {
		t.Errorf("security_groups %v %v", items, err)
	}

	// Setters write the wire forms.
	o := New("InstanceInfoCache", "1.5")
	if err := o.SetJSON("network_info", []map[string]any{{"id": "p"}}); err != nil {
		t.Fatal(err)
	}
	if o.Fields["network_info"] != `[{"id":"p"}]` {
		t.Errorf("network_info %v", o.Fields["network_info"])
	}
	o.SetStringSet("s", []string{"b", "a", "b"})
	o.SetStrings("l", []string{"b", "a"})
	o.SetStringDict("d", map[string]string{"k": "v"})
	o.SetIPAddress("ip", netip.Addr{})
	o.SetDateTime("t", time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC))
	o.SetBool("b", true)
	if err := o.SetFloat("f", math.NaN()); err == nil {
		t.Error("NaN accepted")
	}
	got := string(mustMarshal(t, mustEncode(t, NovaCodec(), o)["nova_object.data"]))
	want := `{"b":true,"d":{"k":"v"},"ip":null,"l":["b","a"],"network_info":"[{\"id\":\"p\"}]","s":["a","b"],"t":"2026-01-02T03:04:05Z"}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if l, err := o.Strings("s"); err != nil || len(l) != 2 {
		t.Errorf("Strings %v %v", l, err)
	}
}
