package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// fakeSwitches is an in-memory DVS "DVS0" that counts its calls.
type fakeSwitches struct {
	mu      sync.Mutex
	pgs     map[string]*vcenter.Portgroup // by name
	ports   map[string]*vcenter.DVPort    // by key
	filters map[string][]vcenter.TrafficRule
	calls   []string
	next    int
}

func newFakeSwitches() *fakeSwitches {
	return &fakeSwitches{pgs: map[string]*vcenter.Portgroup{}, ports: map[string]*vcenter.DVPort{}, filters: map[string][]vcenter.TrafficRule{}}
}

func (f *fakeSwitches) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeSwitches) callsOf(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeSwitches) DVSByName(_ context.Context, name string) (vcenter.DVS, error) {
	f.record("DVSByName")
	if name != "DVS0" {
		return vcenter.DVS{}, fmt.Errorf("%s: %w", name, vcenter.ErrNotFound)
	}
	return vcenter.DVS{Ref: vcenter.Ref{Type: "VmwareDistributedVirtualSwitch", Value: "dvs-1"}, Name: "DVS0", UUID: "50 00 aa"}, nil
}

func (f *fakeSwitches) Portgroups(_ context.Context, _ vcenter.DVS) ([]vcenter.Portgroup, error) {
	f.record("Portgroups")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vcenter.Portgroup
	for _, pg := range f.pgs {
		out = append(out, *pg)
	}
	return out, nil
}

func (f *fakeSwitches) EnsurePortgroup(_ context.Context, _ vcenter.DVS, spec vcenter.PortgroupSpec) (vcenter.Portgroup, error) {
	f.record("EnsurePortgroup " + spec.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	pg := f.pgs[spec.Name]
	if pg == nil {
		f.next++
		pg = &vcenter.Portgroup{Ref: vcenter.Ref{Type: "DistributedVirtualPortgroup", Value: fmt.Sprintf("dvportgroup-%d", f.next)}, Name: spec.Name}
		pg.Key = pg.Ref.Value
		for i := range spec.NumPorts {
			k := fmt.Sprintf("%s-%d", pg.Key, i)
			f.ports[k] = &vcenter.DVPort{Key: k, PortgroupKey: pg.Key}
		}
		pg.NumPorts = spec.NumPorts
		f.pgs[spec.Name] = pg
	}
	pg.VLAN, pg.Blocked, pg.Description = spec.VLAN, spec.Blocked, spec.Description
	return *pg, nil
}

func (f *fakeSwitches) DestroyPortgroup(_ context.Context, ref vcenter.Ref) error {
	f.record("DestroyPortgroup " + ref.Value)
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, pg := range f.pgs {
		if pg.Ref == ref {
			delete(f.pgs, name)
			for k, p := range f.ports {
				if p.PortgroupKey == pg.Key {
					delete(f.ports, k)
				}
			}
		}
	}
	return nil
}

func (f *fakeSwitches) Ports(_ context.Context, _ vcenter.DVS, keys ...string) ([]vcenter.DVPort, error) {
	f.record("Ports")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vcenter.DVPort
	for _, p := range f.ports {
		if len(keys) == 0 || slices.Contains(keys, p.PortgroupKey) {
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(a, b vcenter.DVPort) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

func (f *fakeSwitches) ReservePort(_ context.Context, _ vcenter.DVS, pg vcenter.Portgroup, name string) (vcenter.DVPort, error) {
	f.record("ReservePort " + name)
	f.mu.Lock()
	defer f.mu.Unlock()
	var free *vcenter.DVPort
	for _, p := range f.ports {
		if p.PortgroupKey != pg.Key {
			continue
		}
		if p.Name == name {
			return *p, nil
		}
		if p.Name == "" && (free == nil || p.Key < free.Key) {
			free = p
		}
	}
	if free == nil {
		return vcenter.DVPort{}, errors.New("port group full")
	}
	free.Name = name
	return *free, nil
}

func (f *fakeSwitches) ReleasePort(_ context.Context, _ vcenter.DVS, key string) error {
	f.record("ReleasePort " + key)
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.ports[key]; p != nil {
		p.Name, p.ConnectedVM = "", vcenter.Ref{}
	}
	return nil
}

func (f *fakeSwitches) SetPortFilter(_ context.Context, _ vcenter.DVS, key string, rules []vcenter.TrafficRule) error {
	f.record("SetPortFilter " + key)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.filters[key] = rules
	return nil
}

// connect puts a VM's NIC on the port named after portID (or takes it off).
func (f *fakeSwitches) connect(portID string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.ports {
		if p.Name == portID {
			p.ConnectedVM = vcenter.Ref{}
			if on {
				p.ConnectedVM = vcenter.Ref{Type: "VirtualMachine", Value: "vm-1"}
			}
		}
	}
}

// fakeNeutron answers the agent's calls to neutron-server.
type fakeNeutron struct {
	mu       sync.Mutex
	calls    []string
	networks []map[string]any // bulk_pull answer's objects' data
	gone     map[string]bool  // ports neutron no longer has
	adminOff map[string]bool
	sg       sgInfo
}

func (n *fakeNeutron) call(_ context.Context, _ rpc.Target, method string, args any) (json.RawMessage, error) {
	b, _ := json.Marshal(args)
	var a map[string]any
	_ = json.Unmarshal(b, &a)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch method {
	case "update_device_up", "update_device_down":
		n.calls = append(n.calls, method+" "+a["device"].(string))
		return json.RawMessage(`null`), nil
	case "get_devices_details_list_and_failed_devices":
		n.calls = append(n.calls, method)
		var devs []map[string]any
		for _, d := range a["devices"].([]any) {
			id := d.(string)
			if n.gone[id] {
				devs = append(devs, map[string]any{"device": id})
				continue
			}
			devs = append(devs, map[string]any{"device": id, "port_id": id, "admin_state_up": !n.adminOff[id]})
		}
		return json.Marshal(map[string]any{"devices": devs, "failed_devices": []string{}})
	case "security_group_info_for_devices":
		n.calls = append(n.calls, method)
		return json.Marshal(n.sg)
	case "bulk_pull":
		n.calls = append(n.calls, method)
		var out []map[string]any
		for _, d := range n.networks {
			out = append(out, map[string]any{"versioned_object.name": "Network", "versioned_object.data": d})
		}
		return json.Marshal(out)
	}
	return nil, fmt.Errorf("unexpected call %s", method)
}

func (n *fakeNeutron) took() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.calls
	n.calls = nil
	return out
}

const (
	netA  = "11111111-1111-4111-8111-111111111111"
	netB  = "22222222-2222-4222-8222-222222222222"
	portA = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
	portB = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
	sgID  = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
)

func newTestAgent(t *testing.T) (*Agent, *fakeSwitches, *fakeNeutron) {
	t.Helper()
	sw, nt := newFakeSwitches(), &fakeNeutron{gone: map[string]bool{}, adminOff: map[string]bool{}}
	a, err := New(Config{Host: "h1", BridgeMappings: map[string]string{"physnet1": "DVS0"}, SecurityGroups: true}, nil, sw, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a.callFn = nt.call
	return a, sw, nt
}

func request(t *testing.T, method string, args any) *rpc.Request {
	t.Helper()
	b, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	return &rpc.Request{Method: method, Args: b}
}

func vlanSegment(id int) map[string]any {
	return map[string]any{"network_type": "vlan", "physical_network": "physnet1", "segmentation_id": id}
}

func TestBindPortReservesANamedPortOnTheNetworksPortgroup(t *testing.T) {
	a, sw, _ := newTestAgent(t)
	ctx := context.Background()
	bind := func(port string) map[string]any {
		t.Helper()
		res, err := a.bindPort(ctx, request(t, "bind_port", map[string]any{
			"current":          map[string]any{"id": port, "network_id": netA, "admin_state_up": true},
			"network_segments": []any{vlanSegment(120)},
			"network_current":  map[string]any{"id": netA, "admin_state_up": true},
		}))
		if err != nil {
			t.Fatal(err)
		}
		return res.(map[string]any)
	}
	first := bind(portA)
	again := bind(portA)
	second := bind(portB)
	if first["dvs_uuid"] != "50 00 aa" || first["pg_key"] != "dvportgroup-1" || first["key"] == "" {
		t.Errorf("binding %v", first)
	}
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Errorf("binding the same port twice: %v then %v", first, again)
	}
	if second["key"] == first["key"] {
		t.Errorf("two ports got DVS port %v", first["key"])
	}
	if n := sw.callsOf("EnsurePortgroup"); n != 1 {
		t.Errorf("EnsurePortgroup called %d times for one network, want 1", n)
	}
	pg := sw.pgs["DVS0"+netA]
	if pg == nil || pg.VLAN != 120 || pg.Blocked || pg.Description != "Managed By Neutron" {
		t.Errorf("port group %+v", pg)
	}

	_, err := a.bindPort(ctx, request(t, "bind_port", map[string]any{
		"current":          map[string]any{"id": portA, "network_id": netB},
		"network_segments": []any{map[string]any{"network_type": "vlan", "physical_network": "physnet9", "segmentation_id": 5}},
	}))
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "ValueError" {
		t.Errorf("a segment on an unmapped physical network: %v, want a ValueError", err)
	}
}

func TestNetworkCastsKeepThePortgroup(t *testing.T) {
	a, sw, _ := newTestAgent(t)
	ctx := context.Background()
	net := map[string]any{"id": netA, "admin_state_up": true}
	if _, err := a.createNetwork(ctx, request(t, "create_network", map[string]any{"current": net, "segment": vlanSegment(130)})); err != nil {
		t.Fatal(err)
	}
	if pg := sw.pgs["DVS0"+netA]; pg == nil || pg.VLAN != 130 {
		t.Fatalf("after create_network: %+v", pg)
	}
	down := map[string]any{"id": netA, "admin_state_up": false}
	if _, err := a.updateNetwork(ctx, request(t, "update_network", map[string]any{"current": down, "segment": vlanSegment(130), "original": net})); err != nil {
		t.Fatal(err)
	}
	if pg := sw.pgs["DVS0"+netA]; !pg.Blocked {
		t.Errorf("a network set down: port group not blocked")
	}
	// a flat network on another physnet is not this agent's
	if _, err := a.createNetwork(ctx, request(t, "create_network", map[string]any{"current": map[string]any{"id": netB},
		"segment": map[string]any{"network_type": "flat", "physical_network": "other"}})); err != nil {
		t.Fatal(err)
	}
	if len(sw.pgs) != 1 {
		t.Errorf("port groups %v, want only %s", sw.pgs, netA)
	}
	if _, err := a.networkDelete(ctx, request(t, "network_delete", map[string]any{"network_id": netA})); err != nil {
		t.Fatal(err)
	}
	if len(sw.pgs) != 0 {
		t.Errorf("after network_delete: %v", sw.pgs)
	}
}

func TestDevicePassReportsNICsThatComeAndGo(t *testing.T) {
	a, sw, nt := newTestAgent(t)
	ctx := context.Background()
	nt.sg = sgInfo{
		Devices:        map[string]sgDevice{portA: {SecurityGroups: []string{sgID}}},
		SecurityGroups: map[string][]sgRule{sgID: {{ID: "r1", Direction: "egress", Ethertype: "IPv4"}}},
	}
	for _, p := range []string{portA, portB} {
		if _, err := a.bindPort(ctx, request(t, "bind_port", map[string]any{
			"current": map[string]any{"id": p, "network_id": netA}, "network_segments": []any{vlanSegment(120)},
		})); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name  string
		setup func()
		want  []string
	}{
		{"nothing connected", func() {}, nil},
		{"portA's NIC connects", func() { sw.connect(portA, true) },
			[]string{"get_devices_details_list_and_failed_devices", "security_group_info_for_devices", "update_device_up " + portA}},
		{"nothing changed", func() {}, nil},
		{"a security group changed", func() {
			_, _ = a.securityGroupsUpdated(ctx, request(t, "security_groups_rule_updated", map[string]any{"security_groups": []string{sgID}}))
		}, []string{"get_devices_details_list_and_failed_devices", "security_group_info_for_devices"}},
		{"portA set admin down", func() {
			nt.adminOff[portA] = true
			_, _ = a.portUpdate(ctx, request(t, "port_update", map[string]any{"port": map[string]any{"id": portA, "admin_state_up": false}}))
		}, []string{"get_devices_details_list_and_failed_devices", "update_device_down " + portA}},
		{"only portA's status changed (neutron's echo of the pass)", func() {
			_, _ = a.postUpdatePort(ctx, request(t, "post_update_port", map[string]any{"current": map[string]any{"id": portA, "admin_state_up": false, "status": "DOWN"}}))
		}, nil},
		{"portA up again, portB connects", func() {
			nt.adminOff[portA] = false
			_, _ = a.portUpdate(ctx, request(t, "port_update", map[string]any{"port": map[string]any{"id": portA, "admin_state_up": true}}))
			sw.connect(portB, true)
		}, []string{"get_devices_details_list_and_failed_devices", "security_group_info_for_devices", "update_device_up " + portA, "update_device_up " + portB}},
		{"portB's NIC leaves", func() { sw.connect(portB, false) }, []string{"update_device_down " + portB}},
	}
	for _, s := range steps {
		s.setup()
		if err := a.devicePass(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := nt.took()
		slices.Sort(got)
		want := slices.Clone(s.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: calls %v, want %v", s.name, got, want)
		}
	}
	keyA := ""
	for _, p := range sw.ports {
		if p.Name == portA {
			keyA = p.Key
		}
	}
	if rules := sw.filters[keyA]; len(rules) != 3 || !rules[0].Accept || rules[2].Accept {
		t.Errorf("portA's filter: %+v", rules)
	}
	// a deleted port's DVS port is freed
	if _, err := a.portDelete(ctx, request(t, "port_delete", map[string]any{"port_id": portA})); err != nil {
		t.Fatal(err)
	}
	if sw.ports[keyA].Name != "" {
		t.Errorf("port_delete left DVS port %s named %q", keyA, sw.ports[keyA].Name)
	}
}

func TestFullSyncRebuildsFromNeutronAndTheDVS(t *testing.T) {
	a, sw, nt := newTestAgent(t)
	ctx := context.Background()
	// left from before a restart: a port group of a deleted network, and
	// one of a live network with a connected port
	for _, n := range []string{netA, netB} {
		if _, err := sw.EnsurePortgroup(ctx, vcenter.DVS{}, vcenter.PortgroupSpec{Name: "DVS0" + n, VLAN: 100, NumPorts: 2}); err != nil {
			t.Fatal(err)
		}
	}
	pgA := *sw.pgs["DVS0"+netA]
	if _, err := sw.ReservePort(ctx, vcenter.DVS{}, pgA, portA); err != nil {
		t.Fatal(err)
	}
	sw.connect(portA, true)
	created := "33333333-3333-4333-8333-333333333333"
	nt.networks = []map[string]any{
		{"id": netA, "admin_state_up": true, "segments": []any{map[string]any{"versioned_object.data": vlanSegment(100)}}},
		{"id": created, "admin_state_up": true, "segments": []any{map[string]any{"versioned_object.data": vlanSegment(150)}}},
	}
	if err := a.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if sw.pgs["DVS0"+netB] != nil {
		t.Errorf("the port group of deleted network %s is still there", netB)
	}
	if pg := sw.pgs["DVS0"+created]; pg == nil || pg.VLAN != 150 {
		t.Errorf("network created while the agent was away: port group %+v", pg)
	}
	nt.took()
	if err := a.devicePass(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nt.took(); !slices.Contains(got, "update_device_up "+portA) {
		t.Errorf("after a resync the connected port is not reported up again: %v", got)
	}
}

func TestRulesFor(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	str := func(s string) *string { return &s }
	info := sgInfo{
		Devices: map[string]sgDevice{
			portA: {SecurityGroups: []string{sgID}},
			portB: {SecurityGroups: []string{sgID}, PortSecurityEnabled: new(bool)},
		},
		SecurityGroups: map[string][]sgRule{sgID: {
			{ID: "ssh", Direction: "ingress", Ethertype: "IPv4", Protocol: json.RawMessage(`"tcp"`), PortRangeMin: i32(22), PortRangeMax: i32(22), RemoteIPPrefix: str("10.0.0.0/8")},
			{ID: "peers", Direction: "ingress", Ethertype: "IPv4", RemoteGroupID: str(sgID)},
			{ID: "ping6", Direction: "ingress", Ethertype: "IPv6", Protocol: json.RawMessage(`"icmp"`), PortRangeMin: i32(128)},
			{ID: "out", Direction: "egress", Ethertype: "IPv4"},
			{Direction: "egress", Ethertype: "IPv4", Protocol: json.RawMessage(`"udp"`), PortRangeMin: i32(53), PortRangeMax: i32(53), DestIPPrefix: str("10.9.9.9/32")},
			{Direction: "ingress", Ethertype: "IPv4", Protocol: json.RawMessage(`6`), SourceIPPrefix: str("192.0.2.0/24")},
			{ID: "weird", Direction: "egress", Ethertype: "IPv4", Protocol: json.RawMessage(`"bogus"`)},
		}},
		MemberIPs: map[string]map[string][]json.RawMessage{sgID: {"IPv4": {json.RawMessage(`["10.1.0.5","fa:16:3e:00:00:01"]`), json.RawMessage(`"10.1.0.6"`)}}},
	}
	got := info.rulesFor(portA)
	type short struct {
		dir    string
		proto  int32
		ports  string
		remote string
		accept bool
	}
	var s []short
	for _, r := range got {
		s = append(s, short{r.Direction, r.Protocol, fmt.Sprintf("%d-%d", r.PortMin, r.PortMax), r.RemoteCIDR, r.Accept})
	}
	in, out, both := vcenter.DirectionIncoming, vcenter.DirectionOutgoing, vcenter.DirectionBoth
	want := []short{
		{in, 6, "22-22", "10.0.0.0/8", true}, {out, 6, "0-0", "10.0.0.0/8", true},
		{in, -1, "0-0", "10.1.0.5/32", true}, {out, -1, "0-0", "10.1.0.5/32", true},
		{in, -1, "0-0", "10.1.0.6/32", true}, {out, -1, "0-0", "10.1.0.6/32", true},
		{in, 58, "0-0", "", true}, {out, 58, "0-0", "", true},
		{out, -1, "0-0", "", true}, {in, -1, "0-0", "", true},
		{out, 17, "53-53", "10.9.9.9/32", true}, {in, 17, "0-0", "10.9.9.9/32", true},
		{in, 6, "0-0", "192.0.2.0/24", true}, {out, 6, "0-0", "192.0.2.0/24", true},
		{both, -1, "0-0", "", false},
	}
	if !slices.Equal(s, want) {
		t.Errorf("rules\n got %v\nwant %v", s, want)
	}
	for i, r := range got {
		if r.Sequence != int32(10*(i+1)) {
			t.Errorf("rule %d has sequence %d", i, r.Sequence)
		}
	}
	if r := info.rulesFor(portB); r != nil {
		t.Errorf("a port without port security got rules %v", r)
	}
}

func TestReportsCallWithStartFlagFirstAndResyncWhenRevived(t *testing.T) {
	sw := newFakeSwitches()
	a, err := New(Config{Host: "h1", BridgeMappings: map[string]string{"physnet1": "DVS0"}, ReportInterval: 5 * time.Millisecond, VCenterHost: "vc1"}, nil, sw, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	answers := []string{`"new"`, `"alive"`, `"revived"`}
	var mu sync.Mutex
	var states []map[string]any
	done := make(chan struct{})
	a.callFn = func(_ context.Context, target rpc.Target, method string, args any) (json.RawMessage, error) {
		mu.Lock()
		defer mu.Unlock()
		if target.Topic != "q-reports-plugin" || method != "report_state" {
			return nil, fmt.Errorf("unexpected %s %s", target.Topic, method)
		}
		st := args.(map[string]any)["agent_state"].(map[string]any)["agent_state"].(map[string]any)
		states = append(states, st)
		if len(states) > len(answers) {
			select {
			case <-done:
			default:
				close(done)
			}
			return json.RawMessage(`"alive"`), nil
		}
		return json.RawMessage(answers[len(states)-1]), nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { a.runReports(ctx); close(stopped) }()
	<-done
	cancel()
	<-stopped
	mu.Lock()
	defer mu.Unlock()
	if states[0]["start_flag"] != true || states[1]["start_flag"] != nil {
		t.Errorf("start_flag: first %v, second %v", states[0]["start_flag"], states[1]["start_flag"])
	}
	first := states[0]
	conf := first["configurations"].(map[string]any)
	if first["agent_type"] != "DVS agent" || first["binary"] != "neutron-dvs-agent" || first["host"] != "h1" ||
		conf["vsphere_hostname"] != "vc1" || conf["bridge_mappings"].(map[string]string)["physnet1"] != "DVS0" {
		t.Errorf("agent state %v", first)
	}
	select {
	case <-a.resync:
	default:
		t.Error("a revived answer asked for no resync")
	}
}
