package vcenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// DefaultPortgroupPorts is the number of ports EnsurePortgroup gives a new
// port group when PortgroupSpec.NumPorts is 0.
const DefaultPortgroupPorts = 8

// filterAgentName is the DVS filter agent of the traffic filters this
// package writes, as the vSphere DVS agent of neutron writes them.
const filterAgentName = "dvfilter-generic-vmware"

// reservePortAttempts bounds how often ReservePort picks another free port
// after another client took the one it chose (ConcurrentAccess).
const reservePortAttempts = 10

// Traffic rule directions (TrafficRule.Direction), as vSphere names them.
const (
	DirectionIncoming = string(types.DvsNetworkRuleDirectionTypeIncomingPackets)
	DirectionOutgoing = string(types.DvsNetworkRuleDirectionTypeOutgoingPackets)
	DirectionBoth     = string(types.DvsNetworkRuleDirectionTypeBoth)
)

// DVS is a distributed virtual switch. Its UUID, not its managed object
// reference, is what NIC backings and port keys refer to.
type DVS struct {
	Ref  Ref
	Name string
	UUID string
}

// PortgroupSpec is the wanted state of a distributed port group, as the
// network role derives it from a network.
type PortgroupSpec struct {
	Name string
	// VLAN is the VLAN id (VmwareDistributedVirtualSwitchVlanIdSpec); 0
	// means untagged.
	VLAN int32
	// NumPorts is the number of ports of an early-binding port group; 0
	// takes DefaultPortgroupPorts on creation and keeps the current number
	// on reconfiguration.
	NumPorts int32
	// Description is the port group's description; empty keeps the
	// current one (vSphere cannot clear it through an omitted field).
	Description string
	// Blocked blocks every port of the group (defaultPortConfig.blocked),
	// what an administratively down network is.
	Blocked bool
}

// Portgroup is a distributed port group as read from vCenter.
type Portgroup struct {
	Ref         Ref
	Key         string
	Name        string
	VLAN        int32
	NumPorts    int32
	Blocked     bool
	Description string
}

// DVPort is one port of a distributed switch. The network role names a port
// after the neutron port it reserved it for.
type DVPort struct {
	Key          string
	PortgroupKey string
	Name         string
	Blocked      bool
	// ConnectedVM is the VM with a NIC on the port; zero when none is.
	ConnectedVM Ref
	// MAC is the connected NIC's MAC address, as the port's runtime state
	// reports it.
	MAC   string
	Rules []TrafficRule
}

// TrafficRule is one rule of a DVS port traffic filter (a security group
// rule, in neutron's terms). Rules are evaluated by Sequence.
type TrafficRule struct {
	Description string
	Sequence    int32
	// Direction is DirectionIncoming, DirectionOutgoing or DirectionBoth.
	Direction string
	// EtherType is "IPv4", "IPv6", or empty for a rule without an address
	// qualifier.
	EtherType string
	// Protocol is the IP protocol number: -1 any, 1 icmp, 6 tcp, 17 udp.
	Protocol int32
	// PortMin and PortMax are the destination port range; 0 means any.
	PortMin, PortMax int32
	// RemoteCIDR is the peer's prefix in canonical form ("10.0.0.0/24",
	// "10.0.0.5/32"): the source of incoming packets, the destination of
	// outgoing ones (and the source for DirectionBoth); empty means any.
	RemoteCIDR string
	// Accept accepts matching packets; false drops them.
	Accept bool
}

// pgState is a port group with what reconfiguring it needs.
type pgState struct {
	pg            Portgroup
	configVersion string
	numPorts      int32
}

// portState is a port with what reconfiguring it needs.
type portState struct {
	port          DVPort
	configVersion string
}

// DVSByName finds the distributed switch called name in any datacenter; an
// error wraps ErrNotFound when there is none.
//
// Cost: 1 SOAP round trip (RetrievePropertiesEx). Safe for concurrent use.
func (s *Session) DVSByName(ctx context.Context, name string) (DVS, error) {
	op := fmt.Sprintf("find distributed switch %q", name)
	c := s.activeClient()
	if c == nil {
		return DVS{}, wrapErr(op, ErrNotLoggedIn)
	}
	switches, err := s.switches(ctx, c)
	if err != nil {
		return DVS{}, wrapErr(op, err)
	}
	for _, d := range switches {
		if d.Name == name {
			return d, nil
		}
	}
	return DVS{}, wrapErr(op, ErrNotFound)
}

// networkFolderTraversal selects, from the root folder, every datacenter's
// network folder and the folders and objects below it.
func networkFolderTraversal() []types.BaseSelectionSpec {
	children := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "netChildren"},
		Type:          "Folder",
		Path:          "childEntity",
		Skip:          types.NewBool(false),
		SelectSet: []types.BaseSelectionSpec{
			&types.SelectionSpec{Name: "netChildren"},
			&types.SelectionSpec{Name: "dcNetwork"},
		},
	}
	dcNetwork := &types.TraversalSpec{
		SelectionSpec: types.SelectionSpec{Name: "dcNetwork"},
		Type:          "Datacenter",
		Path:          "networkFolder",
		Skip:          types.NewBool(false),
		SelectSet:     []types.BaseSelectionSpec{&types.SelectionSpec{Name: "netChildren"}},
	}
	return []types.BaseSelectionSpec{children, dcNetwork}
}

// switches lists every distributed switch, sorted by name.
func (s *Session) switches(ctx context.Context, c *vim25.Client) ([]DVS, error) {
	objects, err := s.retrieve(ctx, c, types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:       c.ServiceContent.RootFolder,
			Skip:      types.NewBool(true),
			SelectSet: networkFolderTraversal(),
		}},
		PropSet: []types.PropertySpec{{Type: "DistributedVirtualSwitch", PathSet: []string{"name", "uuid"}}},
	})
	if err != nil {
		return nil, err
	}
	var out []DVS
	for _, oc := range objects {
		var d mo.DistributedVirtualSwitch
		if !isSwitch(oc.Obj.Type) {
			continue
		}
		if err := mo.LoadObjectContent([]types.ObjectContent{oc}, &d); err != nil {
			return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
		}
		out = append(out, DVS{Ref: refFrom(oc.Obj), Name: d.Name, UUID: d.Uuid})
	}
	slices.SortFunc(out, func(a, b DVS) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

func isSwitch(t string) bool {
	return t == "DistributedVirtualSwitch" || t == "VmwareDistributedVirtualSwitch"
}

// retrieve runs one RetrievePropertiesEx; missing properties for lack of a
// session fail with ErrNotAuthenticated and are otherwise dropped.
func (s *Session) retrieve(ctx context.Context, c *vim25.Client, spec types.PropertyFilterSpec) ([]types.ObjectContent, error) {
	objects, err := mo.RetrievePropertiesEx(ctx, c, types.RetrievePropertiesEx{
		This:    c.ServiceContent.PropertyCollector,
		SpecSet: []types.PropertyFilterSpec{spec},
	})
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("retrieve properties: %w", err)
	}
	for i := range objects {
		if missingNotAuthenticated(objects[i]) {
			return nil, fmt.Errorf("%s: %w", objects[i].Obj, ErrNotAuthenticated)
		}
		objects[i].MissingSet = nil
	}
	return objects, nil
}

// Portgroups lists the switch's port groups (uplink port groups left out),
// sorted by name.
//
// Cost: 1 SOAP round trip (RetrievePropertiesEx). Safe for concurrent use.
func (s *Session) Portgroups(ctx context.Context, d DVS) ([]Portgroup, error) {
	op := "list port groups of " + d.Name
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	states, err := s.portgroups(ctx, c, d.Ref)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	out := make([]Portgroup, len(states))
	for i, st := range states {
		out[i] = st.pg
	}
	return out, nil
}

// portgroups reads the port groups of the switch dvs, sorted by name.
func (s *Session) portgroups(ctx context.Context, c *vim25.Client, dvs Ref) ([]pgState, error) {
	if dvs.IsZero() {
		return nil, fmt.Errorf("%w: no distributed switch", ErrInvalidArgument)
	}
	objects, err := s.retrieve(ctx, c, types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  dvs.Reference(),
			Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
				Type: "DistributedVirtualSwitch",
				Path: "portgroup",
				Skip: types.NewBool(false),
			}},
		}},
		PropSet: []types.PropertySpec{{Type: "DistributedVirtualPortgroup", PathSet: []string{"name", "config"}}},
	})
	if err != nil {
		return nil, err
	}
	var out []pgState
	for _, oc := range objects {
		if oc.Obj.Type != "DistributedVirtualPortgroup" {
			continue
		}
		var p mo.DistributedVirtualPortgroup
		if err := mo.LoadObjectContent([]types.ObjectContent{oc}, &p); err != nil {
			return nil, fmt.Errorf("decode %s: %w", oc.Obj, err)
		}
		if p.Config.Uplink != nil && *p.Config.Uplink {
			continue
		}
		out = append(out, pgStateFrom(p))
	}
	slices.SortFunc(out, func(a, b pgState) int { return cmp.Compare(a.pg.Name, b.pg.Name) })
	return out, nil
}

// readPortgroup reads one port group.
func (s *Session) readPortgroup(ctx context.Context, c *vim25.Client, ref Ref) (pgState, error) {
	var p mo.DistributedVirtualPortgroup
	if err := s.retrieveOne(ctx, c, ref, []string{"name", "config"}, &p); err != nil {
		return pgState{}, err
	}
	p.Self = ref.Reference()
	return pgStateFrom(p), nil
}

func pgStateFrom(p mo.DistributedVirtualPortgroup) pgState {
	pg := Portgroup{
		Ref:         refFrom(p.Self),
		Key:         cmp.Or(p.Config.Key, p.Key, p.Self.Value),
		Name:        p.Name,
		NumPorts:    p.Config.NumPorts,
		Description: p.Config.Description,
	}
	if set, ok := p.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok && set != nil {
		if v, ok := set.Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec); ok && v != nil {
			pg.VLAN = v.VlanId
		}
		pg.Blocked = boolPolicy(set.Blocked)
	} else if p.Config.DefaultPortConfig != nil {
		pg.Blocked = boolPolicy(p.Config.DefaultPortConfig.GetDVPortSetting().Blocked)
	}
	return pgState{pg: pg, configVersion: p.Config.ConfigVersion, numPorts: p.Config.NumPorts}
}

func boolPolicy(p *types.BoolPolicy) bool {
	return p != nil && p.Value != nil && *p.Value
}

func newBoolPolicy(v bool) *types.BoolPolicy { return &types.BoolPolicy{Value: types.NewBool(v)} }

// EnsurePortgroup makes the switch have an early-binding port group named
// spec.Name with spec's VLAN, blocking and description, and returns it. An
// existing group is reconfigured only where it differs (its port count only
// ever grows); a new one allows per-port blocking and traffic filters, which
// ReservePort and SetPortFilter need. A creation racing with another
// client's returns the group the other client made.
//
// Cost: 1 SOAP round trip when the group is as wanted (RetrievePropertiesEx);
// 2-3 more to reconfigure it (ReconfigureDVPortgroup_Task, task polls,
// nothing re-read); 4-5 in all to create it (AddDVPortgroup_Task, task polls,
// RetrievePropertiesEx). Safe for concurrent use.
func (s *Session) EnsurePortgroup(ctx context.Context, d DVS, spec PortgroupSpec) (Portgroup, error) {
	op := fmt.Sprintf("ensure port group %q on %s", spec.Name, d.Name)
	c := s.activeClient()
	if c == nil {
		return Portgroup{}, wrapErr(op, ErrNotLoggedIn)
	}
	if err := spec.validate(); err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	find := func() (pgState, bool, error) {
		all, err := s.portgroups(ctx, c, d.Ref)
		if err != nil {
			return pgState{}, false, err
		}
		for _, st := range all {
			if st.pg.Name == spec.Name {
				return st, true, nil
			}
		}
		return pgState{}, false, nil
	}
	cur, ok, err := find()
	if err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	if !ok {
		err := s.addPortgroup(ctx, c, d, spec)
		if err != nil && !fault.Is(err, &types.DuplicateName{}) {
			return Portgroup{}, wrapErr(op, err)
		}
		if cur, ok, err = find(); err != nil {
			return Portgroup{}, wrapErr(op, err)
		} else if !ok {
			return Portgroup{}, wrapErr(op, fmt.Errorf("%w: port group missing after creation", ErrNotFound))
		}
		s.logFor(ctx).Info().Str("dvs", d.Name).Str("portgroup", cur.pg.Name).Str("key", cur.pg.Key).
			Int32("vlan", cur.pg.VLAN).Msg("created port group")
	}
	if portgroupMatches(cur.pg, spec, true) {
		return cur.pg, nil
	}
	want := spec
	want.Name = "" // keep
	want.NumPorts = max(spec.NumPorts, cur.pg.NumPorts)
	pg, err := s.reconfigurePortgroup(ctx, c, op, cur, want)
	if err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	return pg, nil
}

func (spec PortgroupSpec) validate() error {
	switch {
	case spec.Name == "":
		return fmt.Errorf("%w: empty port group name", ErrInvalidArgument)
	case spec.VLAN < 0 || spec.VLAN > 4094:
		return fmt.Errorf("%w: VLAN %d out of range 0-4094", ErrInvalidArgument, spec.VLAN)
	case spec.NumPorts < 0:
		return fmt.Errorf("%w: negative port count %d", ErrInvalidArgument, spec.NumPorts)
	}
	return nil
}

// portgroupMatches reports whether pg already is as spec wants it. With
// ensure, spec.Name is taken as matched and NumPorts as a minimum.
func portgroupMatches(pg Portgroup, spec PortgroupSpec, ensure bool) bool {
	if !ensure && spec.Name != "" && spec.Name != pg.Name {
		return false
	}
	if ensure && spec.NumPorts > pg.NumPorts || !ensure && spec.NumPorts != 0 && spec.NumPorts != pg.NumPorts {
		return false
	}
	return pg.VLAN == spec.VLAN && pg.Blocked == spec.Blocked &&
		(spec.Description == "" || spec.Description == pg.Description)
}

// portSetting is the port setting for VLAN vlan (0: none) and blocking.
func portSetting(vlan int32, blocked bool) *types.VMwareDVSPortSetting {
	return &types.VMwareDVSPortSetting{
		DVPortSetting: types.DVPortSetting{Blocked: newBoolPolicy(blocked)},
		Vlan:          &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: vlan},
	}
}

// addPortgroup creates the port group of spec on d.
func (s *Session) addPortgroup(ctx context.Context, c *vim25.Client, d DVS, spec PortgroupSpec) error {
	op := fmt.Sprintf("add port group %q to %s", spec.Name, d.Name)
	cs := types.DVPortgroupConfigSpec{
		Name:              spec.Name,
		Type:              string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding),
		NumPorts:          cmp.Or(spec.NumPorts, DefaultPortgroupPorts),
		Description:       spec.Description,
		DefaultPortConfig: portSetting(spec.VLAN, spec.Blocked),
		// Ports must be able to override the group's blocking and filter,
		// and keep their name and filter while their VM is away.
		Policy: &types.VMwareDVSPortgroupPolicy{DVPortgroupPolicy: types.DVPortgroupPolicy{
			BlockOverrideAllowed:         true,
			TrafficFilterOverrideAllowed: types.NewBool(true),
			PortConfigResetAtDisconnect:  false,
		}},
	}
	_, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.AddDVPortgroup_Task(ctx, c, &types.AddDVPortgroup_Task{This: d.Ref.Reference(), Spec: []types.DVPortgroupConfigSpec{cs}})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	return err
}

// ReconfigurePortgroup renames the port group (spec.Name; empty keeps the
// name), sets its VLAN and blocking to spec's, its port count to
// spec.NumPorts (0 keeps it) and its description to spec.Description
// (empty keeps it). The port group's current configuration is read first,
// so pg only needs Ref. Nothing is changed when nothing differs.
//
// Cost: 1 SOAP round trip when nothing differs (RetrievePropertiesEx), else
// 3-4 (ReconfigureDVPortgroup_Task, task polls). Safe for concurrent use; a
// reconfiguration racing with another client's fails with a ConcurrentAccess
// fault rather than undoing it.
func (s *Session) ReconfigurePortgroup(ctx context.Context, pg Portgroup, spec PortgroupSpec) (Portgroup, error) {
	op := "reconfigure port group " + pg.Ref.Value
	c := s.activeClient()
	if c == nil {
		return Portgroup{}, wrapErr(op, ErrNotLoggedIn)
	}
	check := spec
	check.Name = cmp.Or(spec.Name, "-")
	if err := check.validate(); err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	cur, err := s.readPortgroup(ctx, c, pg.Ref)
	if err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	if portgroupMatches(cur.pg, spec, false) {
		return cur.pg, nil
	}
	out, err := s.reconfigurePortgroup(ctx, c, op, cur, spec)
	if err != nil {
		return Portgroup{}, wrapErr(op, err)
	}
	return out, nil
}

// reconfigurePortgroup applies spec to the port group cur (read at its
// configVersion) and returns it as reconfigured.
func (s *Session) reconfigurePortgroup(ctx context.Context, c *vim25.Client, op string, cur pgState, spec PortgroupSpec) (Portgroup, error) {
	cs := types.DVPortgroupConfigSpec{
		ConfigVersion:     cur.configVersion,
		NumPorts:          cmp.Or(spec.NumPorts, cur.numPorts),
		Description:       spec.Description,
		DefaultPortConfig: portSetting(spec.VLAN, spec.Blocked),
	}
	if spec.Name != cur.pg.Name {
		cs.Name = spec.Name
	}
	_, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.ReconfigureDVPortgroup_Task(ctx, c, &types.ReconfigureDVPortgroup_Task{This: cur.pg.Ref.Reference(), Spec: cs})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return Portgroup{}, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return Portgroup{}, err
	}
	out := cur.pg
	out.Name = cmp.Or(spec.Name, out.Name)
	out.NumPorts = cs.NumPorts
	out.Description = cmp.Or(spec.Description, out.Description)
	out.VLAN, out.Blocked = spec.VLAN, spec.Blocked
	s.logFor(ctx).Info().Str("portgroup", out.Ref.Value).Str("name", out.Name).Int32("vlan", out.VLAN).
		Bool("blocked", out.Blocked).Int32("ports", out.NumPorts).Msg("reconfigured port group")
	return out, nil
}

// DestroyPortgroup deletes the port group; one that is already gone counts
// as deleted. vCenter refuses while VMs are connected to it.
//
// Cost: 2-3 SOAP round trips (Destroy_Task, task polls). Safe for concurrent
// use.
func (s *Session) DestroyPortgroup(ctx context.Context, pg Ref) error {
	op := "destroy port group " + pg.Value
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	_, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		r, err := methods.Destroy_Task(ctx, c, &types.Destroy_Task{This: pg.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if err != nil {
		if isGone(err) {
			return nil
		}
		return wrapErr(op, err)
	}
	s.logFor(ctx).Info().Str("portgroup", pg.Value).Msg("destroyed port group")
	return nil
}

// Ports lists the switch's ports in the given port groups (all ports when
// none is given), sorted by key (numerically when keys are numbers).
//
// Cost: 1 SOAP round trip (FetchDVPorts). Safe for concurrent use.
func (s *Session) Ports(ctx context.Context, d DVS, portgroupKeys ...string) ([]DVPort, error) {
	op := "list ports of " + d.Name
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	var criteria *types.DistributedVirtualSwitchPortCriteria
	if len(portgroupKeys) > 0 {
		criteria = &types.DistributedVirtualSwitchPortCriteria{PortgroupKey: portgroupKeys, Inside: types.NewBool(true)}
	}
	states, err := s.fetchPorts(ctx, c, d, criteria)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	out := make([]DVPort, len(states))
	for i, st := range states {
		out[i] = st.port
	}
	return out, nil
}

// fetchPorts runs FetchDVPorts and decodes the ports, sorted by key.
func (s *Session) fetchPorts(ctx context.Context, c *vim25.Client, d DVS, criteria *types.DistributedVirtualSwitchPortCriteria) ([]portState, error) {
	if d.Ref.IsZero() {
		return nil, fmt.Errorf("%w: no distributed switch", ErrInvalidArgument)
	}
	res, err := methods.FetchDVPorts(ctx, c, &types.FetchDVPorts{This: d.Ref.Reference(), Criteria: criteria})
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("fetch ports: %w", err)
	}
	out := make([]portState, 0, len(res.Returnval))
	for _, p := range res.Returnval {
		out = append(out, portFrom(p))
	}
	slices.SortFunc(out, func(a, b portState) int { return compareKeys(a.port.Key, b.port.Key) })
	return out, nil
}

// compareKeys orders port keys numerically when both are numbers.
func compareKeys(a, b string) int {
	x, errA := strconv.Atoi(a)
	y, errB := strconv.Atoi(b)
	if errA == nil && errB == nil {
		return cmp.Compare(x, y)
	}
	return cmp.Compare(a, b)
}

func portFrom(p types.DistributedVirtualPort) portState {
	out := DVPort{Key: p.Key, PortgroupKey: p.PortgroupKey, Name: p.Config.Name}
	if p.Config.Setting != nil {
		set := p.Config.Setting.GetDVPortSetting()
		out.Blocked = boolPolicy(set.Blocked)
		out.Rules = rulesFrom(set.FilterPolicy)
	}
	if ce := p.Connectee; ce != nil && ce.ConnectedEntity != nil && ce.ConnectedEntity.Type == "VirtualMachine" {
		out.ConnectedVM = refFrom(*ce.ConnectedEntity)
	}
	if p.State != nil && p.State.RuntimeInfo != nil {
		out.MAC = p.State.RuntimeInfo.MacAddress
	}
	return portState{port: out, configVersion: p.Config.ConfigVersion}
}

// ReservePort books a port of pg for name (a neutron port id): the port
// already named name if there is one, so that a retried reservation
// returns the same port, else the free port (no name, no VM) with the
// lowest key. When no port is free the port group's port count is doubled
// first. The port is then named name and unblocked. A port taken by another
// client at the same moment (ConcurrentAccess) makes it pick again, up to 10
// times. Two concurrent reservations of the same name may book two ports;
// callers serialise per name.
//
// Cost: 1 SOAP round trip for a port already reserved and unblocked
// (FetchDVPorts); 3-4 to reserve a free port (plus ReconfigureDVPort_Task and
// its polls); 4-5 more when the group grows (RetrievePropertiesEx,
// ReconfigureDVPortgroup_Task, polls, FetchDVPorts). Safe for concurrent use.
func (s *Session) ReservePort(ctx context.Context, d DVS, pg Portgroup, name string) (DVPort, error) {
	op := fmt.Sprintf("reserve a port of %s for %q", pg.Ref.Value, name)
	c := s.activeClient()
	if c == nil {
		return DVPort{}, wrapErr(op, ErrNotLoggedIn)
	}
	if name == "" || pg.Key == "" {
		return DVPort{}, wrapErr(op, fmt.Errorf("%w: port name and port group key are required", ErrInvalidArgument))
	}
	criteria := &types.DistributedVirtualSwitchPortCriteria{PortgroupKey: []string{pg.Key}, Inside: types.NewBool(true)}
	for attempt := range reservePortAttempts {
		ports, err := s.fetchPorts(ctx, c, d, criteria)
		if err != nil {
			return DVPort{}, wrapErr(op, err)
		}
		var pick *portState
		for i := range ports {
			if ports[i].port.Name == name {
				pick = &ports[i]
				break
			}
		}
		if pick != nil && !pick.port.Blocked {
			return pick.port, nil
		}
		if pick == nil {
			var free []int
			for i := range ports {
				if ports[i].port.Name == "" && ports[i].port.ConnectedVM.IsZero() {
					free = append(free, i)
				}
			}
			if len(free) > 0 {
				// The lowest key first; after losing a race, spread
				// the contenders over the free ports.
				pick = &ports[free[spread(name, attempt)%len(free)]]
			}
		}
		if pick == nil {
			// Another client growing the group at the same time
			// (ConcurrentAccess) does as well.
			if err := s.growPortgroup(ctx, c, op, pg.Ref, int32(len(ports))); err != nil && !fault.Is(err, &types.ConcurrentAccess{}) {
				return DVPort{}, wrapErr(op, err)
			}
			continue
		}
		set := &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{Blocked: newBoolPolicy(false)}}
		err = s.reconfigurePort(ctx, c, op, d, pick.port.Key, name, set, pick.configVersion)
		if fault.Is(err, &types.ConcurrentAccess{}) {
			continue // another client took or changed the port
		}
		if err != nil {
			return DVPort{}, wrapErr(op, err)
		}
		out := pick.port
		out.Name, out.Blocked = name, false
		s.logFor(ctx).Info().Str("dvs", d.Name).Str("port", out.Key).Str("name", name).Msg("reserved distributed port")
		return out, nil
	}
	return DVPort{}, wrapErr(op, fmt.Errorf("no port reserved after %d attempts: other clients kept taking them", reservePortAttempts))
}

// spread is 0 on the first attempt, else a number derived from name and
// attempt.
func spread(name string, attempt int) int {
	if attempt == 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return int(h.Sum32()%1024) + attempt
}

// growPortgroup doubles the port count of the port group (at least to
// twice have, the ports it has now).
func (s *Session) growPortgroup(ctx context.Context, c *vim25.Client, op string, ref Ref, have int32) error {
	cur, err := s.readPortgroup(ctx, c, ref)
	if err != nil {
		return err
	}
	want := max(2*cur.numPorts, 2*have, 1)
	spec := PortgroupSpec{NumPorts: want, VLAN: cur.pg.VLAN, Blocked: cur.pg.Blocked, Name: cur.pg.Name}
	_, err = s.reconfigurePortgroup(ctx, c, op, cur, spec)
	return err
}

// ReleasePort gives the port back: its name and traffic filter are cleared
// and it is unblocked. An unknown port counts as released.
//
// Cost: 1 SOAP round trip for an unknown port (FetchDVPorts), else 3-4 (plus
// ReconfigureDVPort_Task and its polls). Safe for concurrent use.
func (s *Session) ReleasePort(ctx context.Context, d DVS, portKey string) error {
	op := fmt.Sprintf("release port %s of %s", portKey, d.Name)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	cur, ok, err := s.onePort(ctx, c, d, portKey)
	if err != nil {
		return wrapErr(op, err)
	}
	if !ok {
		return nil
	}
	set := &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{
		Blocked:      newBoolPolicy(false),
		FilterPolicy: filterPolicy(nil),
	}}
	if err := s.reconfigurePort(ctx, c, op, d, portKey, "", set, cur.configVersion); err != nil {
		if isGone(err) || fault.Is(err, &types.NotFound{}) {
			return nil
		}
		return wrapErr(op, err)
	}
	s.logFor(ctx).Info().Str("dvs", d.Name).Str("port", portKey).Str("was", cur.port.Name).Msg("released distributed port")
	return nil
}

// onePort fetches one port by key; false when there is no such port.
func (s *Session) onePort(ctx context.Context, c *vim25.Client, d DVS, key string) (portState, bool, error) {
	if key == "" {
		return portState{}, false, fmt.Errorf("%w: empty port key", ErrInvalidArgument)
	}
	ports, err := s.fetchPorts(ctx, c, d, &types.DistributedVirtualSwitchPortCriteria{PortKey: []string{key}})
	if err != nil {
		return portState{}, false, err
	}
	for _, p := range ports {
		if p.port.Key == key {
			return p, true, nil
		}
	}
	return portState{}, false, nil
}

// SetPortFilter replaces the port's traffic filter with rules (an enabled
// ruleset of the generic DVS filter); nil or empty rules remove the
// filter. The port keeps its name and blocking.
//
// Cost: 3-4 SOAP round trips (FetchDVPorts, ReconfigureDVPort_Task, task
// polls). Safe for concurrent use; a port missing fails with ErrNotFound.
func (s *Session) SetPortFilter(ctx context.Context, d DVS, portKey string, rules []TrafficRule) error {
	op := fmt.Sprintf("set traffic filter of port %s of %s", portKey, d.Name)
	c := s.activeClient()
	if c == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	dvsRules, err := trafficRules(rules)
	if err != nil {
		return wrapErr(op, err)
	}
	cur, ok, err := s.onePort(ctx, c, d, portKey)
	if err != nil {
		return wrapErr(op, err)
	}
	if !ok {
		return wrapErr(op, ErrNotFound)
	}
	set := &types.VMwareDVSPortSetting{DVPortSetting: types.DVPortSetting{FilterPolicy: filterPolicy(dvsRules)}}
	if err := s.reconfigurePort(ctx, c, op, d, portKey, cur.port.Name, set, cur.configVersion); err != nil {
		return wrapErr(op, err)
	}
	return nil
}

// filterPolicy is the port filter policy for rules; none inherits the port
// group's (which has no filter).
func filterPolicy(rules []types.DvsTrafficRule) *types.DvsFilterPolicy {
	if len(rules) == 0 {
		return &types.DvsFilterPolicy{InheritablePolicy: types.InheritablePolicy{Inherited: true}}
	}
	return &types.DvsFilterPolicy{FilterConfig: []types.BaseDvsFilterConfig{&types.DvsTrafficFilterConfig{
		DvsFilterConfig: types.DvsFilterConfig{AgentName: filterAgentName},
		TrafficRuleset:  &types.DvsTrafficRuleset{Enabled: types.NewBool(true), Rules: rules},
	}}}
}

// reconfigureDVPortTaskBody is methods.ReconfigureDVPort_TaskBody with a
// port spec that always carries the name element: govmomi's omits an empty
// name, which vCenter reads as "keep the name", and ReleasePort must clear
// it.
type reconfigureDVPortTaskBody struct {
	Req    *reconfigureDVPortTaskReq             `xml:"urn:vim25 ReconfigureDVPort_Task,omitempty"`
	Res    *types.ReconfigureDVPort_TaskResponse `xml:"ReconfigureDVPort_TaskResponse,omitempty"`
	Fault_ *soap.Fault                           `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"` //nolint:revive // the soap package's field name
}

func (b *reconfigureDVPortTaskBody) Fault() *soap.Fault { return b.Fault_ }

type reconfigureDVPortTaskReq struct {
	This types.ManagedObjectReference `xml:"_this"`
	Port []dvPortConfigSpec           `xml:"port"`
}

// dvPortConfigSpec is types.DVPortConfigSpec with a name element that is
// sent even when empty (fields in the WSDL's order).
type dvPortConfigSpec struct {
	Operation     string                  `xml:"operation"`
	Key           string                  `xml:"key,omitempty"`
	Name          *string                 `xml:"name"`
	Setting       types.BaseDVPortSetting `xml:"setting,omitempty,typeattr"`
	ConfigVersion string                  `xml:"configVersion,omitempty"`
}

// reconfigurePort sets the port's name (always) and the non-nil parts of
// set, at the port's configVersion.
func (s *Session) reconfigurePort(ctx context.Context, c *vim25.Client, op string, d DVS, key, name string,
	set types.BaseDVPortSetting, configVersion string) error {
	req := &reconfigureDVPortTaskReq{This: d.Ref.Reference(), Port: []dvPortConfigSpec{{
		Operation:     string(types.ConfigSpecOperationEdit),
		Key:           key,
		Name:          &name,
		Setting:       set,
		ConfigVersion: configVersion,
	}}}
	_, err := s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) {
		var res reconfigureDVPortTaskBody
		if err := c.RoundTrip(ctx, &reconfigureDVPortTaskBody{Req: req}, &res); err != nil {
			return types.ManagedObjectReference{}, err
		}
		if res.Res == nil {
			return types.ManagedObjectReference{}, errors.New("empty ReconfigureDVPort_Task response")
		}
		return res.Res.Returnval, nil
	})
	return err
}

// trafficRules converts rules to DVS traffic rules.
func trafficRules(rules []TrafficRule) ([]types.DvsTrafficRule, error) {
	out := make([]types.DvsTrafficRule, 0, len(rules))
	for i, r := range rules {
		tr, err := r.dvsRule()
		if err != nil {
			return nil, fmt.Errorf("%w: rule %d: %w", ErrInvalidArgument, i, err)
		}
		out = append(out, tr)
	}
	return out, nil
}

// dvsRule converts r to a DVS traffic rule with one IP qualifier.
func (r TrafficRule) dvsRule() (types.DvsTrafficRule, error) {
	switch r.Direction {
	case DirectionIncoming, DirectionOutgoing, DirectionBoth:
	default:
		return types.DvsTrafficRule{}, fmt.Errorf("unknown direction %q", r.Direction)
	}
	q := &types.DvsIpNetworkRuleQualifier{}
	if r.Protocol >= 0 {
		q.Protocol = &types.IntExpression{Value: r.Protocol}
	} else if r.Protocol != -1 {
		return types.DvsTrafficRule{}, fmt.Errorf("bad protocol %d", r.Protocol)
	}
	switch {
	case r.PortMin < 0 || r.PortMax < 0 || r.PortMax > 65535 || r.PortMin > 65535:
		return types.DvsTrafficRule{}, fmt.Errorf("port range %d-%d out of range", r.PortMin, r.PortMax)
	case r.PortMin == 0 && r.PortMax == 0:
	case r.PortMax == 0 || r.PortMin == r.PortMax:
		q.DestinationIpPort = &types.DvsSingleIpPort{PortNumber: r.PortMin}
	case r.PortMin > r.PortMax:
		return types.DvsTrafficRule{}, fmt.Errorf("port range %d-%d reversed", r.PortMin, r.PortMax)
	default:
		q.DestinationIpPort = &types.DvsIpPortRange{StartPortNumber: r.PortMin, EndPortNumber: r.PortMax}
	}
	var addr types.BaseIpAddress
	switch {
	case r.RemoteCIDR != "":
		p, err := parsePrefix(r.RemoteCIDR)
		if err != nil {
			return types.DvsTrafficRule{}, err
		}
		if (r.EtherType == "IPv4" && !p.Addr().Is4()) || (r.EtherType == "IPv6" && p.Addr().Is4()) {
			return types.DvsTrafficRule{}, fmt.Errorf("remote %s is not %s", r.RemoteCIDR, r.EtherType)
		}
		if p.IsSingleIP() {
			addr = &types.SingleIp{Address: p.Addr().String()}
		} else {
			addr = &types.IpRange{AddressPrefix: p.Addr().String(), PrefixLength: int32(p.Bits())}
		}
	case r.EtherType == "IPv4":
		addr = &types.IpRange{AddressPrefix: "0.0.0.0", PrefixLength: 0}
	case r.EtherType == "IPv6":
		addr = &types.IpRange{AddressPrefix: "::", PrefixLength: 0}
	case r.EtherType != "":
		return types.DvsTrafficRule{}, fmt.Errorf("unknown ether type %q", r.EtherType)
	}
	if r.Direction == DirectionOutgoing {
		q.DestinationAddress = addr
	} else {
		q.SourceAddress = addr
	}
	out := types.DvsTrafficRule{
		Description: r.Description,
		Sequence:    r.Sequence,
		Direction:   r.Direction,
		Qualifier:   []types.BaseDvsNetworkRuleQualifier{q},
		Action:      &types.DvsDropNetworkRuleAction{},
	}
	if r.Accept {
		out.Action = &types.DvsAcceptNetworkRuleAction{}
	}
	return out, nil
}

// parsePrefix parses a CIDR or a bare address (a /32 or /128) and masks it.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

// rulesFrom reads the traffic rules of a port's filter policy.
func rulesFrom(fp *types.DvsFilterPolicy) []TrafficRule {
	if fp == nil {
		return nil
	}
	var out []TrafficRule
	for _, fc := range fp.FilterConfig {
		tf, ok := fc.(*types.DvsTrafficFilterConfig)
		if !ok || tf.TrafficRuleset == nil || (tf.TrafficRuleset.Enabled != nil && !*tf.TrafficRuleset.Enabled) {
			continue
		}
		for _, r := range tf.TrafficRuleset.Rules {
			out = append(out, ruleFrom(r))
		}
	}
	return out
}

func ruleFrom(r types.DvsTrafficRule) TrafficRule {
	out := TrafficRule{Description: r.Description, Sequence: r.Sequence, Direction: r.Direction, Protocol: -1}
	switch r.Action.(type) {
	case *types.DvsAcceptNetworkRuleAction:
		out.Accept = true
	}
	for _, bq := range r.Qualifier {
		q, ok := bq.(*types.DvsIpNetworkRuleQualifier)
		if !ok {
			continue
		}
		if q.Protocol != nil {
			out.Protocol = q.Protocol.Value
		}
		switch p := q.DestinationIpPort.(type) {
		case *types.DvsSingleIpPort:
			out.PortMin, out.PortMax = p.PortNumber, p.PortNumber
		case *types.DvsIpPortRange:
			out.PortMin, out.PortMax = p.StartPortNumber, p.EndPortNumber
		}
		addr := q.SourceAddress
		if r.Direction == DirectionOutgoing && q.DestinationAddress != nil || addr == nil {
			addr = q.DestinationAddress
		}
		switch a := addr.(type) {
		case *types.SingleIp:
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				out.EtherType = etherType(ip)
				out.RemoteCIDR = netip.PrefixFrom(ip, ip.BitLen()).String()
			}
		case *types.IpRange:
			if ip, err := netip.ParseAddr(a.AddressPrefix); err == nil {
				out.EtherType = etherType(ip)
				if a.PrefixLength != 0 {
					out.RemoteCIDR = netip.PrefixFrom(ip, int(a.PrefixLength)).String()
				}
			}
		}
	}
	return out
}

func etherType(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
