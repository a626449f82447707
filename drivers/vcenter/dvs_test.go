package vcenter

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// dvsEnv is a vmEnv with the simulator's switch.
type dvsEnv struct {
	*vmEnv
	dvs DVS
}

func newDVSEnv(t *testing.T) *dvsEnv {
	t.Helper()
	e := newVMEnv(t)
	d, err := e.s.DVSByName(t.Context(), SimulatorDVS)
	if err != nil {
		t.Fatalf("DVSByName(%s): %v", SimulatorDVS, err)
	}
	return &dvsEnv{vmEnv: e, dvs: d}
}

// ensure creates or checks a port group, failing the test on error.
func (e *dvsEnv) ensure(t *testing.T, spec PortgroupSpec) Portgroup {
	t.Helper()
	pg, err := e.s.EnsurePortgroup(t.Context(), e.dvs, spec)
	if err != nil {
		t.Fatalf("EnsurePortgroup(%+v): %v", spec, err)
	}
	return pg
}

// portsByKey lists the ports of pg by key.
func (e *dvsEnv) portsByKey(t *testing.T, pgKey string) map[string]DVPort {
	t.Helper()
	ports, err := e.s.Ports(t.Context(), e.dvs, pgKey)
	if err != nil {
		t.Fatalf("Ports: %v", err)
	}
	out := map[string]DVPort{}
	for _, p := range ports {
		if p.PortgroupKey != pgKey {
			t.Errorf("Ports(%s) returned port %s of %s", pgKey, p.Key, p.PortgroupKey)
		}
		out[p.Key] = p
	}
	return out
}

func TestDVSByName(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	var d DVS
	calls := vmMeasure(t, e.s, "DVSByName", func() (err error) {
		d, err = e.s.DVSByName(t.Context(), SimulatorDVS)
		return err
	})
	if want := map[string]int64{"RetrievePropertiesEx": 1}; !maps.Equal(calls, want) {
		t.Errorf("DVSByName calls = %v, want %v", calls, want)
	}
	if d.Name != SimulatorDVS || d.UUID == "" || d.Ref.Type != "VmwareDistributedVirtualSwitch" && d.Ref.Type != "DistributedVirtualSwitch" {
		t.Errorf("DVSByName = %+v", d)
	}
	if _, err := e.s.DVSByName(t.Context(), "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DVSByName(nope) = %v, want ErrNotFound", err)
	}
	pgs, err := e.s.Portgroups(t.Context(), d)
	if err != nil || len(pgs) != 0 {
		t.Errorf("Portgroups of a new switch = %+v, %v; want none (the uplink group left out)", pgs, err)
	}
}

func TestPortgroupLifecycle(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	spec := PortgroupSpec{Name: "DVS0net-1", VLAN: 100, NumPorts: 4, Description: "Managed By Neutron"}

	var pg Portgroup
	calls := vmMeasure(t, e.s, "EnsurePortgroup (create)", func() (err error) {
		pg, err = e.s.EnsurePortgroup(ctx, e.dvs, spec)
		return err
	})
	if calls["AddDVPortgroup_Task"] != 1 || calls["ReconfigureDVPortgroup_Task"] != 0 {
		t.Errorf("create calls = %v", calls)
	}
	want := Portgroup{Ref: pg.Ref, Key: pg.Key, Name: spec.Name, VLAN: 100, NumPorts: 4, Description: spec.Description}
	if pg != want || pg.Ref.Type != "DistributedVirtualPortgroup" || pg.Key == "" {
		t.Errorf("created %+v, want %+v", pg, want)
	}

	calls = vmMeasure(t, e.s, "EnsurePortgroup (as is)", func() error {
		again, err := e.s.EnsurePortgroup(ctx, e.dvs, spec)
		if again != pg {
			t.Errorf("second EnsurePortgroup = %+v, want %+v", again, pg)
		}
		return err
	})
	if want := map[string]int64{"RetrievePropertiesEx": 1}; !maps.Equal(calls, want) {
		t.Errorf("no-op EnsurePortgroup calls = %v, want %v", calls, want)
	}

	// A VLAN change and blocking reconfigure it; fewer ports do not shrink it.
	spec2 := spec
	spec2.VLAN, spec2.Blocked, spec2.NumPorts = 200, true, 2
	calls = vmMeasure(t, e.s, "EnsurePortgroup (VLAN)", func() (err error) {
		pg, err = e.s.EnsurePortgroup(ctx, e.dvs, spec2)
		return err
	})
	if calls["ReconfigureDVPortgroup_Task"] != 1 || calls["AddDVPortgroup_Task"] != 0 {
		t.Errorf("reconfigure calls = %v", calls)
	}
	pgs, err := e.s.Portgroups(ctx, e.dvs)
	if err != nil || len(pgs) != 1 {
		t.Fatalf("Portgroups = %+v, %v", pgs, err)
	}
	if pgs[0] != pg || pg.VLAN != 200 || !pg.Blocked || pg.NumPorts != 4 {
		t.Errorf("after VLAN change: read %+v, returned %+v", pgs[0], pg)
	}

	// Rename, unblock, untag, grow.
	renamed, err := e.s.ReconfigurePortgroup(ctx, Portgroup{Ref: pg.Ref}, PortgroupSpec{Name: "renamed", NumPorts: 6})
	if err != nil {
		t.Fatalf("ReconfigurePortgroup: %v", err)
	}
	pgs, err = e.s.Portgroups(ctx, e.dvs)
	if err != nil || len(pgs) != 1 {
		t.Fatalf("Portgroups = %+v, %v", pgs, err)
	}
	want = Portgroup{Ref: pg.Ref, Key: pg.Key, Name: "renamed", NumPorts: 6, Description: spec.Description}
	if pgs[0] != want || renamed != want {
		t.Errorf("after rename: read %+v, returned %+v, want %+v", pgs[0], renamed, want)
	}
	if n := len(e.portsByKey(t, pg.Key)); n != 6 {
		t.Errorf("%d ports after growing to 6", n)
	}
	calls = vmMeasure(t, e.s, "ReconfigurePortgroup (as is)", func() error {
		_, err := e.s.ReconfigurePortgroup(ctx, want, PortgroupSpec{Name: "renamed"})
		return err
	})
	if calls["ReconfigureDVPortgroup_Task"] != 0 {
		t.Errorf("no-op ReconfigurePortgroup calls = %v", calls)
	}

	// A second group under the first's old name, and a duplicate rename.
	other := e.ensure(t, PortgroupSpec{Name: spec.Name})
	if other.Ref == pg.Ref || other.NumPorts != DefaultPortgroupPorts || other.VLAN != 0 {
		t.Errorf("second port group %+v", other)
	}
	if _, err := e.s.ReconfigurePortgroup(ctx, other, PortgroupSpec{Name: "renamed"}); err == nil {
		t.Error("renaming onto a taken name succeeded")
	}

	if err := e.s.DestroyPortgroup(ctx, pg.Ref); err != nil {
		t.Fatalf("DestroyPortgroup: %v", err)
	}
	if err := e.s.DestroyPortgroup(ctx, pg.Ref); err != nil {
		t.Errorf("DestroyPortgroup again = %v, want nil", err)
	}
	pgs, err = e.s.Portgroups(ctx, e.dvs)
	if err != nil || len(pgs) != 1 || pgs[0].Ref != other.Ref {
		t.Errorf("Portgroups after destroy = %+v, %v", pgs, err)
	}
	if ports := e.portsByKey(t, pg.Key); len(ports) != 0 {
		t.Errorf("destroyed group still has ports %v", ports)
	}
	if _, err := e.s.ReconfigurePortgroup(ctx, pg, PortgroupSpec{VLAN: 3}); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReconfigurePortgroup(destroyed) = %v, want ErrNotFound", err)
	}
}

func TestPortgroupSpecValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec PortgroupSpec
		ok   bool
	}{
		{"plain", PortgroupSpec{Name: "a"}, true},
		{"vlan 4094", PortgroupSpec{Name: "a", VLAN: 4094}, true},
		{"no name", PortgroupSpec{}, false},
		{"vlan 4095", PortgroupSpec{Name: "a", VLAN: 4095}, false},
		{"negative vlan", PortgroupSpec{Name: "a", VLAN: -1}, false},
		{"negative ports", PortgroupSpec{Name: "a", NumPorts: -1}, false},
	}
	for _, tc := range tests {
		err := tc.spec.validate()
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: validate = %v", tc.name, err)
		}
	}
}

func TestReserveAndReleasePorts(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "net-a", VLAN: 10, NumPorts: 2})

	reserve := func(name string) DVPort {
		t.Helper()
		p, err := e.s.ReservePort(ctx, e.dvs, pg, name)
		if err != nil {
			t.Fatalf("ReservePort(%s): %v", name, err)
		}
		if p.Name != name || p.Blocked || p.PortgroupKey != pg.Key {
			t.Errorf("ReservePort(%s) = %+v", name, p)
		}
		return p
	}
	a := reserve("port-a")
	b := reserve("port-b")
	var c DVPort
	calls := vmMeasure(t, e.s, "ReservePort (grows)", func() error {
		c = reserve("port-c")
		return nil
	})
	if calls["ReconfigureDVPortgroup_Task"] != 1 {
		t.Errorf("ReservePort past NumPorts calls = %v, want the group grown", calls)
	}
	if keys := []string{a.Key, b.Key, c.Key}; len(slices.Compact(slices.Sorted(slices.Values(keys)))) != 3 {
		t.Errorf("ports %v not distinct", keys)
	}
	pgs, err := e.s.Portgroups(ctx, e.dvs)
	if err != nil || len(pgs) != 1 || pgs[0].NumPorts != 4 || pgs[0].VLAN != 10 {
		t.Errorf("after growing: %+v, %v; want 4 ports, VLAN kept", pgs, err)
	}

	calls = vmMeasure(t, e.s, "ReservePort (again)", func() error {
		if again := reserve("port-a"); again.Key != a.Key {
			t.Errorf("ReservePort(port-a) again = %s, want %s", again.Key, a.Key)
		}
		return nil
	})
	if want := map[string]int64{"FetchDVPorts": 1}; !maps.Equal(calls, want) {
		t.Errorf("idempotent ReservePort calls = %v, want %v", calls, want)
	}

	ports := e.portsByKey(t, pg.Key)
	if len(ports) != 4 || ports[a.Key].Name != "port-a" || ports[b.Key].Name != "port-b" || ports[c.Key].Name != "port-c" {
		t.Errorf("ports %+v", ports)
	}

	if err := e.s.SetPortFilter(ctx, e.dvs, b.Key, []TrafficRule{{Direction: DirectionIncoming, Protocol: -1, Accept: true}}); err != nil {
		t.Fatal(err)
	}
	if err := e.s.ReleasePort(ctx, e.dvs, b.Key); err != nil {
		t.Fatalf("ReleasePort: %v", err)
	}
	got := e.portsByKey(t, pg.Key)[b.Key]
	if got.Name != "" || got.Blocked || len(got.Rules) != 0 {
		t.Errorf("released port %+v, want no name, unblocked, no filter", got)
	}
	if err := e.s.ReleasePort(ctx, e.dvs, "999999"); err != nil {
		t.Errorf("ReleasePort(unknown) = %v, want nil", err)
	}
	if d := reserve("port-d"); d.Key != b.Key {
		t.Errorf("port-d got %s, want the released %s", d.Key, b.Key)
	}
	if _, err := e.s.ReservePort(ctx, e.dvs, pg, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ReservePort(no name) = %v", err)
	}
}

func TestPortGroupBlockingReachesPorts(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "net-b", NumPorts: 2, Blocked: true})
	for _, p := range e.portsByKey(t, pg.Key) {
		if !p.Blocked {
			t.Errorf("port %s of a blocked group is not blocked", p.Key)
		}
	}
	p, err := e.s.ReservePort(ctx, e.dvs, pg, "x")
	if err != nil {
		t.Fatal(err)
	}
	ports := e.portsByKey(t, pg.Key)
	for k, port := range ports {
		if port.Blocked != (k != p.Key) {
			t.Errorf("port %+v: only the reserved port should be unblocked", port)
		}
	}
}

func TestPortFilterRoundTrip(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "net-f", NumPorts: 1})
	p, err := e.s.ReservePort(ctx, e.dvs, pg, "filtered")
	if err != nil {
		t.Fatal(err)
	}
	rules := []TrafficRule{
		{Description: "ssh in", Sequence: 10, Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, PortMin: 22, PortMax: 22, RemoteCIDR: "10.0.0.0/24", Accept: true},
		{Description: "web range", Sequence: 11, Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, PortMin: 8000, PortMax: 8080, Accept: true},
		{Description: "dns out", Sequence: 12, Direction: DirectionOutgoing, EtherType: "IPv4", Protocol: 17, PortMin: 53, PortMax: 53, RemoteCIDR: "192.0.2.53/32", Accept: true},
		{Description: "icmp6", Sequence: 13, Direction: DirectionBoth, EtherType: "IPv6", Protocol: 1, RemoteCIDR: "2001:db8::/64", Accept: true},
		{Description: "v6 any", Sequence: 14, Direction: DirectionOutgoing, EtherType: "IPv6", Protocol: -1, Accept: true},
		{Sequence: 100, Direction: DirectionBoth, Protocol: -1},
	}
	if err := e.s.SetPortFilter(ctx, e.dvs, p.Key, rules); err != nil {
		t.Fatalf("SetPortFilter: %v", err)
	}
	got := e.portsByKey(t, pg.Key)[p.Key]
	if !reflect.DeepEqual(got.Rules, rules) {
		t.Errorf("rules read back:\n got %+v\nwant %+v", got.Rules, rules)
	}
	if got.Name != "filtered" || got.Blocked {
		t.Errorf("SetPortFilter changed the port: %+v", got)
	}
	if err := e.s.SetPortFilter(ctx, e.dvs, p.Key, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.portsByKey(t, pg.Key)[p.Key]; len(got.Rules) != 0 || got.Name != "filtered" {
		t.Errorf("after removing the filter: %+v", got)
	}
	if err := e.s.SetPortFilter(ctx, e.dvs, "424242", rules); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetPortFilter(unknown port) = %v, want ErrNotFound", err)
	}
}

func TestTrafficRuleConversion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rule TrafficRule
		ok   bool
		back TrafficRule // the rule read back, when it differs
	}{
		{name: "any", rule: TrafficRule{Direction: DirectionBoth, Protocol: -1}, ok: true},
		{name: "bare address", rule: TrafficRule{Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, RemoteCIDR: "10.1.2.3"}, ok: true,
			back: TrafficRule{Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, RemoteCIDR: "10.1.2.3/32"}},
		{name: "unmasked", rule: TrafficRule{Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, RemoteCIDR: "10.1.2.3/8"}, ok: true,
			back: TrafficRule{Direction: DirectionIncoming, EtherType: "IPv4", Protocol: 6, RemoteCIDR: "10.0.0.0/8"}},
		{name: "min only", rule: TrafficRule{Direction: DirectionIncoming, Protocol: 17, PortMin: 53}, ok: true,
			back: TrafficRule{Direction: DirectionIncoming, Protocol: 17, PortMin: 53, PortMax: 53}},
		{name: "bad direction", rule: TrafficRule{Direction: "ingress", Protocol: -1}},
		{name: "bad protocol", rule: TrafficRule{Direction: DirectionBoth, Protocol: -2}},
		{name: "reversed ports", rule: TrafficRule{Direction: DirectionBoth, Protocol: 6, PortMin: 90, PortMax: 80}},
		{name: "port too big", rule: TrafficRule{Direction: DirectionBoth, Protocol: 6, PortMin: 70000}},
		{name: "bad cidr", rule: TrafficRule{Direction: DirectionBoth, Protocol: 6, RemoteCIDR: "10.0.0.0/33"}},
		{name: "family mismatch", rule: TrafficRule{Direction: DirectionBoth, Protocol: 6, EtherType: "IPv6", RemoteCIDR: "10.0.0.0/8"}},
		{name: "bad ether type", rule: TrafficRule{Direction: DirectionBoth, Protocol: 6, EtherType: "IPX"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dr, err := trafficRules([]TrafficRule{tc.rule})
			if !tc.ok {
				if !errors.Is(err, ErrInvalidArgument) {
					t.Errorf("trafficRules = %v, want ErrInvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.rule
			if tc.back != (TrafficRule{}) {
				want = tc.back
			}
			if got := ruleFrom(dr[0]); got != want {
				t.Errorf("round trip = %+v, want %+v", got, want)
			}
		})
	}
}

func TestVMOnReservedPort(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "net-vm", VLAN: 5, NumPorts: 2})
	p, err := e.s.ReservePort(ctx, e.dvs, pg, "neutron-port-1")
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "0b7e3a52-5a86-4d3e-9b0e-1f4a3c2d1e01"
	spec := e.spec(uuid)
	spec.NICs = []NIC{{
		Model:   NICModelVmxnet3,
		MAC:     "fa:16:3e:00:00:01",
		IfaceID: "neutron-port-1",
		Network: NetworkRef{SwitchUUID: e.dvs.UUID, PortgroupKey: pg.Key, PortKey: p.Key},
	}}
	var vm VM
	calls := vmMeasure(t, e.s, "CreateVM with a NIC", func() (err error) {
		vm, err = e.s.CreateVM(ctx, spec)
		return err
	})
	if calls["CreateVM_Task"] != 1 || calls["ReconfigVM_Task"] != 0 || vmTotal(calls) != 1+calls["RetrievePropertiesEx"] || calls["RetrievePropertiesEx"] > 3 {
		t.Errorf("CreateVM calls = %v: want no extra round trip for a NIC on a port group", calls)
	}
	if vm.ExtraConfig["nvp.iface-id.0"] != "neutron-port-1" || vm.ExtraConfig["nvp.vm-uuid"] != uuid {
		t.Errorf("ExtraConfig = %v", vm.ExtraConfig)
	}
	if want := []NIC{spec.NICs[0]}; !reflect.DeepEqual(vm.NICs, want) {
		t.Errorf("NICs = %+v, want %+v", vm.NICs, want)
	}
	got := e.portsByKey(t, pg.Key)[p.Key]
	if got.ConnectedVM != vm.Ref || got.MAC != "fa:16:3e:00:00:01" || got.Name != "neutron-port-1" {
		t.Errorf("port %+v, want connected to %v with the NIC's MAC", got, vm.Ref)
	}
	// A connected port is not free: the next reservation takes another.
	q, err := e.s.ReservePort(ctx, e.dvs, pg, "neutron-port-2")
	if err != nil || q.Key == p.Key {
		t.Errorf("second reservation = %+v, %v", q, err)
	}
	// Releasing the port keeps the VM on it, so it is still not free.
	if err := e.s.ReleasePort(ctx, e.dvs, p.Key); err != nil {
		t.Fatal(err)
	}
	if got := e.portsByKey(t, pg.Key)[p.Key]; got.ConnectedVM != vm.Ref || got.Name != "" {
		t.Errorf("released connected port %+v", got)
	}
}

func TestAddAndRemoveNIC(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "DVS0-net-0f1e", NumPorts: 2})
	vm := e.create(t, "1c2d3e4f-0000-4000-8000-000000000001")
	p, err := e.s.ReservePort(ctx, e.dvs, pg, "np-1")
	if err != nil {
		t.Fatal(err)
	}
	nic := NIC{MAC: "fa:16:3e:00:00:11", IfaceID: "np-1", Network: NetworkRef{SwitchUUID: e.dvs.UUID, PortgroupKey: pg.Key, PortKey: p.Key}}
	calls := vmMeasure(t, e.s, "AddNIC", func() error { return e.s.AddNIC(ctx, vm.Ref, nic, 1) })
	if calls["ReconfigVM_Task"] != 1 || vmTotal(calls) > 3 {
		t.Errorf("AddNIC calls = %v", calls)
	}
	// By name: a port group whose name contains it, else a standard network.
	byPG := NIC{Model: NICModelE1000e, MAC: "fa:16:3e:00:00:12", IfaceID: "np-2", Network: NetworkRef{NetworkName: "net-0f1e"}}
	if err := e.s.AddNIC(ctx, vm.Ref, byPG, 2); err != nil {
		t.Fatalf("AddNIC by port group name: %v", err)
	}
	byNet := NIC{Model: NICModelPCNet32, MAC: "fa:16:3e:00:00:13", IfaceID: "np-3", Network: NetworkRef{NetworkName: "VM Network"}}
	if err := e.s.AddNIC(ctx, vm.Ref, byNet, 3); err != nil {
		t.Fatalf("AddNIC by network name: %v", err)
	}
	if err := e.s.AddNIC(ctx, vm.Ref, NIC{Network: NetworkRef{NetworkName: "nowhere"}}, 4); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddNIC(unknown network) = %v, want ErrNotFound", err)
	}
	got, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"nvp.iface-id.1": "np-1", "nvp.iface-id.2": "np-2", "nvp.iface-id.3": "np-3"} {
		if got.ExtraConfig[k] != want {
			t.Errorf("%s = %q, want %q", k, got.ExtraConfig[k], want)
		}
	}
	macs := map[string]NIC{}
	for _, n := range got.NICs {
		macs[n.MAC] = n
	}
	if n := macs[nic.MAC]; n.Model != NICModelE1000 || n.Network != nic.Network {
		t.Errorf("NIC on the port: %+v", n)
	}
	if n := macs[byPG.MAC]; n.Model != NICModelE1000e || n.Network.SwitchUUID != e.dvs.UUID || n.Network.PortgroupKey != pg.Key {
		t.Errorf("NIC by port group name: %+v", n)
	}
	if n := macs[byNet.MAC]; n.Model != NICModelPCNet32 || n.Network.NetworkName != "VM Network" {
		t.Errorf("NIC by network name: %+v", n)
	}
	if port := e.portsByKey(t, pg.Key)[p.Key]; port.ConnectedVM != vm.Ref || port.MAC != nic.MAC {
		t.Errorf("port after AddNIC: %+v", port)
	}

	if err := e.s.RemoveNIC(ctx, vm.Ref, strings.ToUpper(nic.MAC), 1); err != nil {
		t.Fatalf("RemoveNIC: %v", err)
	}
	got, err = e.s.GetVM(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.ExtraConfig["nvp.iface-id.1"] != "free" || got.ExtraConfig["nvp.iface-id.2"] != "np-2" {
		t.Errorf("ExtraConfig after RemoveNIC = %v", got.ExtraConfig)
	}
	for _, n := range got.NICs {
		if n.MAC == nic.MAC {
			t.Errorf("NIC %s still there", nic.MAC)
		}
	}
	if len(got.NICs) != 2 {
		t.Errorf("NICs after RemoveNIC = %+v", got.NICs)
	}
	if port := e.portsByKey(t, pg.Key)[p.Key]; !port.ConnectedVM.IsZero() || port.MAC != "" {
		t.Errorf("port after RemoveNIC: %+v", port)
	}
	if err := e.s.RemoveNIC(ctx, vm.Ref, nic.MAC, 1); err != nil {
		t.Errorf("RemoveNIC again = %v, want nil", err)
	}
}

func TestCreateVMNICs(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "models", NumPorts: 1})
	on := NetworkRef{SwitchUUID: e.dvs.UUID, PortgroupKey: pg.Key}
	tests := []struct {
		name   string
		nics   []NIC
		models []string
		err    error
		lookup bool // the networks are found by name: one more round trip
	}{
		{name: "default model", nics: []NIC{{Network: on}}, models: []string{NICModelE1000}},
		{name: "all models", nics: []NIC{
			{Model: NICModelE1000, Network: on}, {Model: NICModelE1000e, Network: on}, {Model: NICModelVmxnet, Network: on},
			{Model: NICModelVmxnet3, Network: on}, {Model: NICModelPCNet32, Network: on},
		}, models: []string{NICModelE1000, NICModelE1000e, NICModelVmxnet, NICModelVmxnet3, NICModelPCNet32}},
		{name: "by name", nics: []NIC{{Network: NetworkRef{NetworkName: "VM Network"}}, {Network: NetworkRef{NetworkName: "mode"}}},
			models: []string{NICModelE1000, NICModelE1000}, lookup: true},
		{name: "unknown model", nics: []NIC{{Model: "rtl8139", Network: on}}, err: ErrInvalidArgument},
		{name: "no network", nics: []NIC{{}}, err: ErrInvalidArgument},
		{name: "unknown network", nics: []NIC{{Network: NetworkRef{NetworkName: "nowhere"}}}, err: ErrNotFound},
	}
	for i, tc := range tests {
		uuid := "9d8c7b6a-0000-4000-8000-00000000000" + string(rune('a'+i))
		spec := e.spec(uuid)
		spec.NICs = tc.nics
		var vm VM
		before := e.s.Calls()
		vm, err := e.s.CreateVM(ctx, spec)
		calls := delta(before, e.s.Calls())
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: CreateVM = %v, want %v", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: CreateVM: %v", tc.name, err)
			continue
		}
		var models []string
		for j, n := range vm.NICs {
			models = append(models, n.Model)
			if n.MAC == "" || n.Network.NetworkName == "" && n.Network.PortgroupKey == "" {
				t.Errorf("%s: NIC %d = %+v", tc.name, j, n)
			}
		}
		if !slices.Equal(models, tc.models) {
			t.Errorf("%s: models %v, want %v", tc.name, models, tc.models)
		}
		reads := int64(2) // the VM read back and at least one task poll
		if tc.lookup {
			reads++
		}
		if calls["RetrievePropertiesEx"] < reads || calls["RetrievePropertiesEx"] > reads+1 {
			t.Errorf("%s: calls %v", tc.name, calls)
		}
	}
}

// TestConcurrentReservations: concurrent reservations of different names
// book different ports, growing the group once or more, without losing one.
func TestConcurrentReservations(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	pg := e.ensure(t, PortgroupSpec{Name: "busy", NumPorts: 2})
	const n = 6
	keys := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			p, err := e.s.ReservePort(ctx, e.dvs, pg, fmt.Sprintf("port-%d", i))
			keys[i], errs[i] = p.Key, err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("reservation %d: %v", i, err)
		}
	}
	ports := e.portsByKey(t, pg.Key)
	for i, k := range keys {
		if ports[k].Name != fmt.Sprintf("port-%d", i) {
			t.Errorf("port %s is named %q, want port-%d", k, ports[k].Name, i)
		}
	}
	if len(ports) < n {
		t.Errorf("%d ports for %d reservations", len(ports), n)
	}
}
