package vcenter

import (
	"reflect"
	"slices"
	"sort"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func TestSimulatorDVSSpansEveryHost(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	d, err := s.DVSByName(ctx, SimulatorDVS)
	if err != nil {
		t.Fatal(err)
	}
	var sw mo.DistributedVirtualSwitch
	if err := s.retrieveOne(ctx, s.Client(), d.Ref, []string{"summary.hostMember", "portgroup"}, &sw); err != nil {
		t.Fatal(err)
	}
	clusters, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []types.ManagedObjectReference
	for _, c := range clusters {
		for _, h := range c.Hosts {
			hosts = append(hosts, h.Ref.Reference())
		}
	}
	if len(hosts) != DefaultSimulatorClusters*DefaultSimulatorHostsPerCluster || !sameRefs(sw.Summary.HostMember, hosts) {
		t.Errorf("switch members %v, hosts %v", sw.Summary.HostMember, hosts)
	}
	if len(sw.Portgroup) != 1 {
		t.Errorf("switch port groups %v, want the uplink group alone", sw.Portgroup)
	}
}

func sameRefs(a, b []types.ManagedObjectReference) bool {
	key := func(r []types.ManagedObjectReference) []string {
		var out []string
		for _, x := range r {
			out = append(out, x.String())
		}
		sort.Strings(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// TestSimulatorPortKeys: port keys are unique across the switch, and a port
// group's portKeys property lists what FetchDVPorts returns for it, also
// after it grows.
func TestSimulatorPortKeys(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	a := e.ensure(t, PortgroupSpec{Name: "a", NumPorts: 3})
	b := e.ensure(t, PortgroupSpec{Name: "b", NumPorts: 2})
	if _, err := e.s.ReconfigurePortgroup(ctx, b, PortgroupSpec{NumPorts: 5}); err != nil {
		t.Fatal(err)
	}
	all, err := e.s.Ports(ctx, e.dvs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	byPG := map[string][]string{}
	for _, p := range all {
		if seen[p.Key] {
			t.Errorf("port key %s twice", p.Key)
		}
		seen[p.Key] = true
		byPG[p.PortgroupKey] = append(byPG[p.PortgroupKey], p.Key)
	}
	for _, pg := range []Portgroup{a, b} {
		var m mo.DistributedVirtualPortgroup
		if err := e.s.retrieveOne(ctx, e.s.Client(), pg.Ref, []string{"portKeys"}, &m); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(m.PortKeys, byPG[pg.Key]) {
			t.Errorf("%s: portKeys %v, FetchDVPorts %v", pg.Name, m.PortKeys, byPG[pg.Key])
		}
	}
	if len(byPG[a.Key]) != 3 || len(byPG[b.Key]) != 5 {
		t.Errorf("ports per group %v", byPG)
	}
	// Another session sees the same ports.
	s2 := login(t, simConfig(e.sim))
	again, err := s2.Ports(ctx, e.dvs, b.Key)
	if err != nil || len(again) != 5 {
		t.Errorf("second session: %d ports, %v", len(again), err)
	}
}

// TestSimulatorReconfigureChecks: the simulator refuses what vCenter
// refuses: stale configVersions, unknown ports, other operations.
func TestSimulatorReconfigureChecks(t *testing.T) {
	t.Parallel()
	e := newDVSEnv(t)
	ctx := t.Context()
	c := e.s.Client()
	pg := e.ensure(t, PortgroupSpec{Name: "checks", NumPorts: 1})
	ports, err := e.s.Ports(ctx, e.dvs, pg.Key)
	if err != nil || len(ports) != 1 {
		t.Fatalf("Ports = %v, %v", ports, err)
	}
	key := ports[0].Key
	portTask := func(spec types.DVPortConfigSpec) error {
		_, err := e.s.runTask(ctx, c, "test", func() (types.ManagedObjectReference, error) {
			r, err := methods.ReconfigureDVPort_Task(ctx, c, &types.ReconfigureDVPort_Task{This: e.dvs.Ref.Reference(), Port: []types.DVPortConfigSpec{spec}})
			if err != nil {
				return types.ManagedObjectReference{}, err
			}
			return r.Returnval, nil
		})
		return err
	}
	tests := []struct {
		name  string
		spec  types.DVPortConfigSpec
		fault types.BaseMethodFault
	}{
		{"edit", types.DVPortConfigSpec{Operation: "edit", Key: key, Name: "x", ConfigVersion: "0"}, nil},
		{"stale version", types.DVPortConfigSpec{Operation: "edit", Key: key, Name: "y", ConfigVersion: "0"}, &types.ConcurrentAccess{}},
		{"unknown port", types.DVPortConfigSpec{Operation: "edit", Key: "777", Name: "y"}, &types.NotFound{}},
		{"add", types.DVPortConfigSpec{Operation: "add", Name: "y"}, &types.NotSupported{}},
	}
	for _, tc := range tests {
		err := portTask(tc.spec)
		switch {
		case tc.fault == nil && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.fault != nil && !fault.Is(err, tc.fault):
			t.Errorf("%s: %v, want %T", tc.name, err, tc.fault)
		}
	}
	if got, _ := e.s.Ports(ctx, e.dvs, pg.Key); len(got) != 1 || got[0].Name != "x" {
		t.Errorf("port after the checks: %+v", got)
	}

	// A port group reconfiguration at a stale configVersion.
	cur, err := e.s.readPortgroup(ctx, c, pg.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.ReconfigurePortgroup(ctx, pg, PortgroupSpec{VLAN: 7}); err != nil {
		t.Fatal(err)
	}
	_, err = e.s.reconfigurePortgroup(ctx, c, "stale", cur, PortgroupSpec{VLAN: 8})
	if !fault.Is(err, &types.ConcurrentAccess{}) {
		t.Errorf("stale port group reconfiguration: %v, want ConcurrentAccess", err)
	}
	// Fields left out are kept: the policy EnsurePortgroup set, the
	// teaming vcsim gave the default port config.
	var m mo.DistributedVirtualPortgroup
	if err := e.s.retrieveOne(ctx, c, pg.Ref, []string{"config"}, &m); err != nil {
		t.Fatal(err)
	}
	pol, ok := m.Config.Policy.(*types.VMwareDVSPortgroupPolicy)
	if !ok || !pol.BlockOverrideAllowed || pol.TrafficFilterOverrideAllowed == nil || !*pol.TrafficFilterOverrideAllowed {
		t.Errorf("policy after reconfiguration: %#v", m.Config.Policy)
	}
	if m.Config.Type != string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding) || m.Config.NumPorts != 1 {
		t.Errorf("type %q, %d ports after reconfiguration", m.Config.Type, m.Config.NumPorts)
	}
}

func TestMergeSetting(t *testing.T) {
	t.Parallel()
	yes, no := newBoolPolicy(true), newBoolPolicy(false)
	vlan := &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: 5}
	filter := &types.DvsFilterPolicy{FilterConfig: []types.BaseDvsFilterConfig{&types.DvsTrafficFilterConfig{}}}
	base := &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{Blocked: yes, FilterPolicy: filter}, Vlan: vlan}
	tests := []struct {
		name      string
		base, upd types.BaseDVPortSetting
		want      types.BaseDVPortSetting
	}{
		{"nil update keeps base", base, nil, base},
		{"nil both", nil, nil, &types.VMwareDVSPortSetting{}},
		{"nil base", nil, &types.VMwareDVSPortSetting{Vlan: vlan}, &types.VMwareDVSPortSetting{Vlan: vlan}},
		{"field over base", base, &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{Blocked: no}},
			&types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{Blocked: no, FilterPolicy: filter}, Vlan: vlan}},
		{"inherited drops", base, &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{
			FilterPolicy: &types.DvsFilterPolicy{InheritablePolicy: types.InheritablePolicy{Inherited: true}},
		}}, &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{Blocked: yes}, Vlan: vlan}},
	}
	for _, tc := range tests {
		got := mergeSetting(tc.base, tc.upd)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: merge = %#v, want %#v", tc.name, got, tc.want)
		}
	}
	// The base is not modified.
	if base.Blocked != yes || base.FilterPolicy != filter {
		t.Error("mergeSetting modified its base")
	}
}

func TestFilterPorts(t *testing.T) {
	t.Parallel()
	vm := types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-1"}
	ports := func() []types.DistributedVirtualPort {
		return []types.DistributedVirtualPort{
			{Key: "1", PortgroupKey: "pg-a"},
			{Key: "2", PortgroupKey: "pg-a", Connectee: &types.DistributedVirtualSwitchPortConnectee{ConnectedEntity: &vm}},
			{Key: "3", PortgroupKey: "pg-b"},
		}
	}
	keys := func(ps []types.DistributedVirtualPort) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key)
		}
		return out
	}
	tests := []struct {
		name     string
		criteria *types.DistributedVirtualSwitchPortCriteria
		want     []string
	}{
		{"none", nil, []string{"1", "2", "3"}},
		{"inside", &types.DistributedVirtualSwitchPortCriteria{PortgroupKey: []string{"pg-a"}, Inside: types.NewBool(true)}, []string{"1", "2"}},
		{"outside", &types.DistributedVirtualSwitchPortCriteria{PortgroupKey: []string{"pg-a"}, Inside: types.NewBool(false)}, []string{"3"}},
		{"keys", &types.DistributedVirtualSwitchPortCriteria{PortKey: []string{"3", "1"}}, []string{"1", "3"}},
		{"connected", &types.DistributedVirtualSwitchPortCriteria{Connected: types.NewBool(true)}, []string{"2"}},
		{"free", &types.DistributedVirtualSwitchPortCriteria{Connected: types.NewBool(false)}, []string{"1", "3"}},
	}
	for _, tc := range tests {
		if got := keys(filterPorts(ports(), tc.criteria)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
