package vcenter

import (
	"reflect"
	"slices"
	"strconv"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// dvsExtension gives the embedded simulator the per-port state of
// distributed switches that govmomi's vcsim lacks. It is a test and
// embedded-simulator extension only, needed because vcsim has no
// ReconfigureDVPort_Task at all, synthesises FetchDVPorts from each port
// group's default configuration (no port names, blocking or filters, no
// connected VM) with port keys that repeat across port groups, does not add
// ports when a port group's numPorts grows, and its
// ReconfigureDVPortgroup_Task clears every field the spec leaves out and
// does not rename. vCenter does all of this itself.
//
// vcsim dispatches a SOAP method by reflection to the method of the same
// name ("_Task" becoming "Task", a *simulator.Context first) of the object
// it finds for the request's _this: the registry's Handler hook's answer,
// overridden by the calling session's own registry, which falls back to the
// shared one. The shared registry keeps vcsim's own types, on which vcsim
// relies (type assertions to *simulator.DistributedVirtualSwitch and
// *simulator.DistributedVirtualPortgroup in port group, VM and event code),
// so the extension's Handler puts wrappers embedding those objects (simDVS,
// simPortgroup) into the session's registry instead; every other method is
// promoted from the embedded object. A RegisterObject handler gives each new
// port group switch-wide unique port keys and mirrors its port count and
// default setting, and forgets removed port groups and switches.
//
// Locking: vcsim serialises calls per object with per-reference locks,
// taken for the wrapper as for the object it wraps (same Self). mu, guarding
// the extension's state, is a leaf: it is never held while a vcsim lock is
// taken. FetchDVPorts holds the switch's lock and takes VM locks (an order
// nothing in vcsim reverses); it reads port groups from the mirror, not
// under their locks, since vcsim takes port group then switch locks.
//
// Deviation from vCenter: a ReconfigureDVPort_Task port spec always sets the
// port's name, an absent name clearing it (a decoded request cannot tell an
// absent name from an empty one); vcagent always sends the name. A port is
// connected to a VM only through a NIC backing that names its key (vcsim
// assigns no port to a NIC that names only the port group).
type dvsExtension struct {
	self types.ManagedObjectReference // the RegisterObject handler's key

	mu       sync.Mutex
	switches map[types.ManagedObjectReference]*simSwitchPorts
}

// simSwitchPorts is the port state of one switch.
type simSwitchPorts struct {
	next  int                 // next port key
	pgs   map[string]*simPG   // port group key -> its mirror
	ports map[string]*simPort // port key -> state
}

// simPG mirrors what FetchDVPorts needs of a port group, so that it need
// not take port group locks while holding the switch's.
type simPG struct {
	keys     []string // all port keys allocated, in order
	numPorts int32
	setting  types.BaseDVPortSetting // the group's defaultPortConfig
}

// simPort is one port's own configuration.
type simPort struct {
	portgroup     string
	name          string
	setting       *types.VMwareDVSPortSetting // overrides of the group's default; nil: none
	configVersion int
}

// installDVSExtension registers the extension with the model's registry.
// It must run before the model serves requests.
func installDVSExtension(m *simulator.Model) *dvsExtension {
	x := &dvsExtension{
		self:     types.ManagedObjectReference{Type: "VcagentDVSExtension", Value: "vcagent-dvs-extension"},
		switches: make(map[types.ManagedObjectReference]*simSwitchPorts),
	}
	reg := m.Map()
	reg.Handler = x.handler
	reg.AddHandler(x)
	return x
}

// handler routes the switch and port group methods the extension
// implements to its wrappers. vcsim consults the registry's Handler first
// but then prefers the calling session's own registry, which falls back to
// the shared one; so the wrapper is put into the session's registry (under
// the object's lock, as Put touches the object), where it stays for the
// session's later calls. A wrapper of an object that is gone is dropped.
func (x *dvsExtension) handler(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch m.This.Type {
	case "DistributedVirtualSwitch", "VmwareDistributedVirtualSwitch", "DistributedVirtualPortgroup":
	default:
		return nil, nil
	}
	real := ctx.Map.Get(m.This)
	// vcsim's in-process client shares one session registry between all
	// simulators of the process; its session has no user name. Its calls
	// (the simulator's own set-up) use vcsim's objects.
	if ctx.Session == nil || ctx.Session.UserName == "" {
		return nil, nil
	}
	{
		switch cur := ctx.Session.Registry.Get(m.This).(type) {
		case *simDVS, *simPortgroup:
			if real == nil {
				ctx.Session.Registry.Remove(ctx, m.This)
				return nil, nil
			}
			return cur, nil
		}
	}
	var w mo.Reference
	switch o := real.(type) {
	case *simulator.DistributedVirtualSwitch:
		w = &simDVS{DistributedVirtualSwitch: o, x: x}
	case *simulator.DistributedVirtualPortgroup:
		w = &simPortgroup{DistributedVirtualPortgroup: o, x: x}
	default:
		return nil, nil
	}
	ctx.WithLock(real, func() { ctx.Session.Put(w) })
	return w, nil
}

// Reference implements simulator.RegisterObject.
func (x *dvsExtension) Reference() types.ManagedObjectReference { return x.self }

// PutObject implements simulator.RegisterObject.
func (x *dvsExtension) PutObject(*simulator.Context, mo.Reference) {}

// UpdateObject implements simulator.RegisterObject: when a switch's port
// group list changes (AddDVPortgroup_Task, which holds the switch's lock),
// new port groups get switch-wide unique port keys and a mirror.
func (x *dvsExtension) UpdateObject(ctx *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	s, ok := obj.(*mo.DistributedVirtualSwitch)
	if !ok || !slices.ContainsFunc(changes, func(c types.PropertyChange) bool { return c.Name == "portgroup" }) {
		return
	}
	for _, ref := range s.Portgroup {
		p, ok := ctx.Map.Get(ref).(*simulator.DistributedVirtualPortgroup)
		if !ok {
			continue
		}
		x.mu.Lock()
		_, known := x.switchPorts(s.Self).pgs[ref.Value]
		x.mu.Unlock()
		if known {
			continue
		}
		// A new port group: nobody else holds its lock yet.
		ctx.WithLock(p, func() {
			p.PortKeys = x.mirror(s.Self, p.Key, p.Config.NumPorts, p.Config.DefaultPortConfig)
		})
	}
}

// RemoveObject implements simulator.RegisterObject: a removed switch or
// port group takes its ports along.
func (x *dvsExtension) RemoveObject(_ *simulator.Context, ref types.ManagedObjectReference) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.switches, ref)
	if ref.Type != "DistributedVirtualPortgroup" {
		return
	}
	for _, sw := range x.switches {
		if pg := sw.pgs[ref.Value]; pg != nil {
			for _, k := range pg.keys {
				delete(sw.ports, k)
			}
		}
		delete(sw.pgs, ref.Value)
	}
}

// switchPorts returns the state of switch ref, creating it. x.mu must be
// held.
func (x *dvsExtension) switchPorts(ref types.ManagedObjectReference) *simSwitchPorts {
	sw := x.switches[ref]
	if sw == nil {
		sw = &simSwitchPorts{pgs: make(map[string]*simPG), ports: make(map[string]*simPort)}
		x.switches[ref] = sw
	}
	return sw
}

// mirror records port group pg of switch dvs with n ports and default
// setting, allocating switch-wide unique keys as needed, and returns its
// first n port keys.
func (x *dvsExtension) mirror(dvs types.ManagedObjectReference, pg string, n int32, setting types.BaseDVPortSetting) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	sw := x.switchPorts(dvs)
	m := sw.pgs[pg]
	if m == nil {
		m = &simPG{}
		sw.pgs[pg] = m
	}
	m.numPorts, m.setting = max(n, 0), setting
	for int32(len(m.keys)) < m.numPorts {
		k := strconv.Itoa(sw.next)
		sw.next++
		m.keys = append(m.keys, k)
		sw.ports[k] = &simPort{portgroup: pg}
	}
	return slices.Clone(m.keys[:m.numPorts])
}

// simDVS answers FetchDVPorts and ReconfigureDVPort_Task for a switch;
// vcsim holds the switch's lock around both.
type simDVS struct {
	*simulator.DistributedVirtualSwitch
	x *dvsExtension
}

// connection is a VM NIC on a port.
type connection struct {
	vm     types.ManagedObjectReference
	nicKey int32
	mac    string
}

// FetchDVPorts returns the switch's ports with their own configuration
// merged over their group's default, the VM connected to each, and the
// ports a grown port group gained. It takes VM locks (switch, then VM, an
// order nothing in vcsim reverses) and reads port groups from the mirror.
func (s *simDVS) FetchDVPorts(ctx *simulator.Context, req *types.FetchDVPorts) soap.HasFault {
	self, uuid := s.Self, s.Uuid
	connect := map[string]connection{}
	for _, e := range ctx.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		ctx.WithLock(vm, func() {
			if vm.Config == nil {
				return
			}
			for _, d := range vm.Config.Hardware.Device {
				card, ok := d.(types.BaseVirtualEthernetCard)
				if !ok {
					continue
				}
				c := card.GetVirtualEthernetCard()
				b, ok := c.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo)
				if ok && b.Port.SwitchUuid == uuid && b.Port.PortKey != "" {
					connect[b.Port.PortKey] = connection{vm: vm.Self, nicKey: c.Key, mac: c.MacAddress}
				}
			}
		})
	}

	s.x.mu.Lock()
	defer s.x.mu.Unlock()
	sw := s.x.switchPorts(self)
	var out []types.DistributedVirtualPort
	for _, ref := range s.Portgroup {
		pg := sw.pgs[ref.Value]
		if pg == nil {
			continue
		}
		for _, k := range pg.keys[:pg.numPorts] {
			sp := sw.ports[k]
			setting := mergeSetting(pg.setting, sp.setting)
			port := types.DistributedVirtualPort{
				Key:          k,
				DvsUuid:      uuid,
				PortgroupKey: ref.Value,
				Config: types.DVPortConfigInfo{
					Name:          sp.name,
					Setting:       setting,
					ConfigVersion: strconv.Itoa(sp.configVersion),
				},
				State: &types.DVPortState{RuntimeInfo: &types.DVPortStatus{
					Blocked: boolPolicy(setting.GetDVPortSetting().Blocked),
				}},
			}
			if conn, ok := connect[k]; ok {
				vm := conn.vm
				port.Connectee = &types.DistributedVirtualSwitchPortConnectee{
					ConnectedEntity: &vm,
					NicKey:          strconv.Itoa(int(conn.nicKey)),
					Type:            string(types.DistributedVirtualSwitchPortConnecteeConnecteeTypeVmVnic),
				}
				port.State.RuntimeInfo.LinkUp = true
				port.State.RuntimeInfo.MacAddress = conn.mac
			}
			out = append(out, port)
		}
	}
	return &methods.FetchDVPortsBody{Res: &types.FetchDVPortsResponse{Returnval: filterPorts(out, req.Criteria)}}
}

// filterPorts applies the port group, port key and connection criteria.
func filterPorts(ports []types.DistributedVirtualPort, c *types.DistributedVirtualSwitchPortCriteria) []types.DistributedVirtualPort {
	if c == nil {
		return ports
	}
	return slices.DeleteFunc(ports, func(p types.DistributedVirtualPort) bool {
		if len(c.PortgroupKey) > 0 {
			inside := c.Inside == nil || *c.Inside
			if slices.Contains(c.PortgroupKey, p.PortgroupKey) != inside {
				return true
			}
		}
		if len(c.PortKey) > 0 && !slices.Contains(c.PortKey, p.Key) {
			return true
		}
		return c.Connected != nil && *c.Connected != (p.Connectee != nil)
	})
}

// ReconfigureDVPortTask edits ports: name, blocking and traffic filter (any
// setting, in fact, merged over the port's own), checking each port's
// configVersion when given.
func (s *simDVS) ReconfigureDVPortTask(ctx *simulator.Context, req *types.ReconfigureDVPort_Task) soap.HasFault {
	self := s.Self
	task := simulator.CreateTask(s.DistributedVirtualSwitch, "reconfigureDVPort", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, s.x.reconfigurePorts(self, req.Port)
	})
	return &methods.ReconfigureDVPort_TaskBody{Res: &types.ReconfigureDVPort_TaskResponse{Returnval: task.Run(ctx)}}
}

// reconfigurePorts applies specs to the ports of switch dvs, all or none.
func (x *dvsExtension) reconfigurePorts(dvs types.ManagedObjectReference, specs []types.DVPortConfigSpec) types.BaseMethodFault {
	x.mu.Lock()
	defer x.mu.Unlock()
	sw := x.switchPorts(dvs)
	for _, spec := range specs {
		if spec.Operation != string(types.ConfigSpecOperationEdit) {
			return &types.NotSupported{}
		}
		sp := sw.ports[spec.Key]
		if sp == nil {
			return &types.NotFound{}
		}
		if spec.ConfigVersion != "" && spec.ConfigVersion != strconv.Itoa(sp.configVersion) {
			return &types.ConcurrentAccess{}
		}
	}
	for _, spec := range specs {
		sp := sw.ports[spec.Key]
		sp.name = spec.Name
		if spec.Setting != nil {
			merged, ok := mergeSetting(sp.setting, spec.Setting).(*types.VMwareDVSPortSetting)
			if !ok {
				return &types.InvalidArgument{InvalidProperty: "setting"}
			}
			sp.setting = merged
		}
		sp.configVersion++
	}
	return nil
}

// simPortgroup answers ReconfigureDVPortgroup_Task as vCenter does: fields
// left out of the spec are kept (vcsim's clears them), defaultPortConfig is
// merged, the configVersion is checked and bumped, a new name renames the
// port group, and a grown numPorts adds ports.
type simPortgroup struct {
	*simulator.DistributedVirtualPortgroup
	x *dvsExtension
}

// ReconfigureDVPortgroupTask reconfigures the port group.
func (p *simPortgroup) ReconfigureDVPortgroupTask(ctx *simulator.Context, req *types.ReconfigureDVPortgroup_Task) soap.HasFault {
	task := simulator.CreateTask(p.DistributedVirtualPortgroup, "reconfigureDvPortgroup", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, p.reconfigure(ctx, req.Spec)
	})
	return &methods.ReconfigureDVPortgroup_TaskBody{Res: &types.ReconfigureDVPortgroup_TaskResponse{Returnval: task.Run(ctx)}}
}

// reconfigure runs in the task, holding the port group's lock.
func (p *simPortgroup) reconfigure(ctx *simulator.Context, spec types.DVPortgroupConfigSpec) types.BaseMethodFault {
	pg := p.DistributedVirtualPortgroup
	if spec.ConfigVersion != pg.Config.ConfigVersion {
		return &types.ConcurrentAccess{}
	}
	if pg.Config.DistributedVirtualSwitch == nil {
		return &types.InvalidState{}
	}
	dvsRef := *pg.Config.DistributedVirtualSwitch
	dvs, _ := ctx.Map.Get(dvsRef).(*simulator.DistributedVirtualSwitch)
	oldName := pg.Name
	if spec.Name != "" && spec.Name != pg.Name {
		if f, ok := ctx.Map.Get(*pg.Parent).(*simulator.Folder); ok {
			var taken mo.Reference
			ctx.WithLock(f, func() { taken = ctx.Map.FindByName(spec.Name, f.ChildEntity) })
			if taken != nil {
				return &types.DuplicateName{Name: spec.Name, Object: taken.Reference()}
			}
		}
		pg.Config.Name = spec.Name
	}
	if spec.NumPorts > 0 {
		pg.Config.NumPorts = spec.NumPorts
	}
	if spec.DefaultPortConfig != nil {
		pg.Config.DefaultPortConfig = mergeSetting(pg.Config.DefaultPortConfig, spec.DefaultPortConfig)
	}
	if spec.Description != "" {
		pg.Config.Description = spec.Description
	}
	if spec.Type != "" {
		pg.Config.Type = spec.Type
	}
	if spec.PortNameFormat != "" {
		pg.Config.PortNameFormat = spec.PortNameFormat
	}
	if spec.Policy != nil {
		pg.Config.Policy = spec.Policy
	}
	if spec.AutoExpand != nil {
		pg.Config.AutoExpand = spec.AutoExpand
	}
	n, _ := strconv.Atoi(pg.Config.ConfigVersion)
	pg.Config.ConfigVersion = strconv.Itoa(n + 1)
	keys := p.x.mirror(dvsRef, pg.Key, pg.Config.NumPorts, pg.Config.DefaultPortConfig)
	ctx.Update(pg, []types.PropertyChange{
		{Name: "name", Val: pg.Config.Name},
		{Name: "config", Val: pg.Config},
		{Name: "portKeys", Val: keys},
	})
	if pg.Config.Name != oldName {
		// mo.Network's own Name shadows ManagedEntity.Name, which vcsim's
		// duplicate-name checks read.
		pg.Entity().Name = pg.Config.Name
		if pg.Summary != nil {
			pg.Summary.GetNetworkSummary().Name = pg.Config.Name
		}
	}
	if pg.Config.Name != oldName && dvs != nil {
		ctx.WithLock(dvs, func() {
			names := slices.Clone(dvs.Summary.PortgroupName)
			if i := slices.Index(names, oldName); i >= 0 {
				names[i] = pg.Config.Name
			}
			ctx.Update(dvs, []types.PropertyChange{{Name: "summary.portgroupName", Val: names}})
		})
	}
	return nil
}

// mergeSetting returns a copy of base with the set (non-nil) fields of upd
// over it, as vCenter applies a partial port setting; a policy marked
// inherited drops base's value so that the parent's applies. A nil base is
// an empty setting of upd's type.
func mergeSetting(base, upd types.BaseDVPortSetting) types.BaseDVPortSetting {
	switch {
	case upd == nil || reflect.ValueOf(upd).IsNil():
		if base == nil || reflect.ValueOf(base).IsNil() {
			return &types.VMwareDVSPortSetting{}
		}
		return base
	case base == nil || reflect.ValueOf(base).IsNil() || reflect.TypeOf(base) != reflect.TypeOf(upd):
		base = reflect.New(reflect.TypeOf(upd).Elem()).Interface().(types.BaseDVPortSetting)
	}
	dst := reflect.New(reflect.TypeOf(base).Elem())
	dst.Elem().Set(reflect.ValueOf(base).Elem())
	mergeFields(dst.Elem(), reflect.ValueOf(upd).Elem())
	return dst.Interface().(types.BaseDVPortSetting)
}

func mergeFields(dst, src reflect.Value) {
	for i := range src.NumField() {
		f := src.Field(i)
		switch f.Kind() {
		case reflect.Struct:
			if src.Type().Field(i).Anonymous {
				mergeFields(dst.Field(i), f)
			}
		case reflect.Pointer, reflect.Interface, reflect.Slice:
			if f.IsNil() {
				continue
			}
			if ip, ok := f.Interface().(types.BaseInheritablePolicy); ok && ip.GetInheritablePolicy().Inherited {
				dst.Field(i).SetZero()
				continue
			}
			dst.Field(i).Set(f)
		}
	}
}
