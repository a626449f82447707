package network

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// state is what the role remembers between requests. All of it can be
// rebuilt from neutron and vCenter (resync), so losing it loses nothing.
type state struct {
	mu    sync.Mutex
	dvs   map[string]vcenter.DVS       // by DVS name
	pgs   map[string]vcenter.Portgroup // by port group name
	ports map[string]*portInfo         // by neutron port id
	locks map[string]*sync.Mutex       // per port group (create) and per DVS (reserve)
}

// portInfo is a DVS port reserved for a neutron port.
type portInfo struct {
	dvs, key, pgKey string
	// up: neutron was told the device is up.
	up bool
	// needDetails: neutron's view of the port changed (admin state,
	// binding): read its details again. needFilter: its security groups
	// changed: program the filter again.
	needDetails, needFilter bool
	// adminDown: neutron said the port is administratively down; it is
	// not reported up, nor asked about again, until it changes.
	adminDown bool
	// adminUp and securityGroups are the port's as last seen (known:
	// seen at all), to tell the updates that matter from the others.
	known          bool
	adminUp        bool
	securityGroups []string
}

// remember records a port's admin state and security groups as neutron
// sent them and reports whether either changed (or was unknown).
func (p *portInfo) remember(d portDict) bool {
	up := d.AdminStateUp == nil || *d.AdminStateUp
	sgs := slices.Sorted(slices.Values(d.SecurityGroups))
	changed := !p.known || p.adminUp != up || !slices.Equal(p.securityGroups, sgs)
	p.known, p.adminUp, p.securityGroups = true, up, sgs
	return changed
}

func newState() *state {
	return &state{
		dvs:   map[string]vcenter.DVS{},
		pgs:   map[string]vcenter.Portgroup{},
		ports: map[string]*portInfo{},
		locks: map[string]*sync.Mutex{},
	}
}

// lock returns the mutex of key, made on first use.
func (s *state) lock(key string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.locks[key]
	if m == nil {
		m = &sync.Mutex{}
		s.locks[key] = m
	}
	return m
}

// segment is a network segment as neutron sends it (ML2's segment dict,
// and the NetworkSegment object's fields).
type segment struct {
	ID              string  `json:"id"`
	NetworkType     string  `json:"network_type"`
	PhysicalNetwork *string `json:"physical_network"`
	SegmentationID  *int64  `json:"segmentation_id"`
}

// networkDict is the part of a neutron network the role reads.
type networkDict struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	AdminStateUp *bool     `json:"admin_state_up"`
	Segments     []segment `json:"segments"`
	// provider attributes, when the network has a single segment
	NetworkType     string  `json:"provider:network_type"`
	PhysicalNetwork *string `json:"provider:physical_network"`
	SegmentationID  *int64  `json:"provider:segmentation_id"`
}

func (n networkDict) adminUp() bool { return n.AdminStateUp == nil || *n.AdminStateUp }

// portDict is the part of a neutron port the role reads.
type portDict struct {
	ID             string   `json:"id"`
	NetworkID      string   `json:"network_id"`
	AdminStateUp   *bool    `json:"admin_state_up"`
	MACAddress     string   `json:"mac_address"`
	SecurityGroups []string `json:"security_groups"`
	HostID         string   `json:"binding:host_id"`
}

// placement is where a network lives on vCenter: a DVS and a VLAN.
type placement struct {
	dvs  string
	vlan int32
}

// place picks the first segment the agent can carry: a VLAN or flat
// segment whose physical network is in the bridge mappings.
func (a *Agent) place(segs []segment) (placement, bool) {
	for _, s := range segs {
		if s.NetworkType != "vlan" && s.NetworkType != "flat" {
			continue
		}
		if s.PhysicalNetwork == nil {
			continue
		}
		dvs, ok := a.cfg.BridgeMappings[*s.PhysicalNetwork]
		if !ok {
			continue
		}
		p := placement{dvs: dvs}
		if s.NetworkType == "vlan" && s.SegmentationID != nil {
			p.vlan = int32(*s.SegmentationID)
		}
		return p, true
	}
	return placement{}, false
}

// portgroupName is networking-vsphere's name of a network's port group.
func portgroupName(dvs, networkID string) string { return dvs + networkID }

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// networkOf returns the network id of a port group the role made on dvs
// ("" for any other port group).
func networkOf(dvs, pgName string) string {
	if len(pgName) <= len(dvs) || pgName[:len(dvs)] != dvs {
		return ""
	}
	if id := pgName[len(dvs):]; uuidPattern.MatchString(id) {
		return id
	}
	return ""
}

// isPortID reports whether a DVS port name is a neutron port id (a port
// the role reserved).
func isPortID(name string) bool { return uuidPattern.MatchString(name) }

// switchNamed returns the DVS called name, looked up once.
func (a *Agent) switchNamed(ctx context.Context, name string) (vcenter.DVS, error) {
	a.st.mu.Lock()
	d, ok := a.st.dvs[name]
	a.st.mu.Unlock()
	if ok {
		return d, nil
	}
	d, err := a.sw.DVSByName(ctx, name)
	if err != nil {
		return vcenter.DVS{}, fmt.Errorf("DVS %q of the bridge mappings: %w", name, err)
	}
	a.st.mu.Lock()
	a.st.dvs[name] = d
	a.st.mu.Unlock()
	return d, nil
}

// ensureNetwork makes the network's port group as it should be (VLAN,
// blocked when the network is administratively down) and returns it. A
// port group already seen with the same settings costs no vCenter call.
func (a *Agent) ensureNetwork(ctx context.Context, networkID string, adminUp bool, p placement) (vcenter.DVS, vcenter.Portgroup, error) {
	d, err := a.switchNamed(ctx, p.dvs)
	if err != nil {
		return d, vcenter.Portgroup{}, err
	}
	name := portgroupName(p.dvs, networkID)
	l := a.st.lock("pg:" + name)
	l.Lock()
	defer l.Unlock()
	a.st.mu.Lock()
	pg, ok := a.st.pgs[name]
	a.st.mu.Unlock()
	if ok && pg.VLAN == p.vlan && pg.Blocked == !adminUp {
		return d, pg, nil
	}
	pg, err = a.sw.EnsurePortgroup(ctx, d, vcenter.PortgroupSpec{
		Name: name, VLAN: p.vlan, NumPorts: int32(a.cfg.PortgroupPorts),
		Description: "Managed By Neutron", Blocked: !adminUp,
	})
	if err != nil {
		return d, pg, fmt.Errorf("port group %s: %w", name, err)
	}
	a.st.mu.Lock()
	a.st.pgs[name] = pg
	a.st.mu.Unlock()
	return d, pg, nil
}

// removeNetwork destroys the network's port groups on every mapped DVS.
func (a *Agent) removeNetwork(ctx context.Context, networkID string) error {
	var errs []error
	for _, dvsName := range a.mappedSwitches() {
		name := portgroupName(dvsName, networkID)
		l := a.st.lock("pg:" + name)
		l.Lock()
		a.st.mu.Lock()
		pg, ok := a.st.pgs[name]
		a.st.mu.Unlock()
		if !ok {
			// Not seen by this process (made before a restart): look.
			d, err := a.switchNamed(ctx, dvsName)
			if err == nil {
				var pgs []vcenter.Portgroup
				if pgs, err = a.sw.Portgroups(ctx, d); err == nil {
					for _, x := range pgs {
						if x.Name == name {
							pg, ok = x, true
						}
					}
				}
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
		if ok {
			if err := a.sw.DestroyPortgroup(ctx, pg.Ref); err != nil {
				errs = append(errs, fmt.Errorf("port group %s: %w", name, err))
			} else {
				a.st.mu.Lock()
				delete(a.st.pgs, name)
				for id, p := range a.st.ports {
					if p.dvs == dvsName && p.pgKey == pg.Key {
						delete(a.st.ports, id)
					}
				}
				a.st.mu.Unlock()
				a.log.Info().Str("network_id", networkID).Str("portgroup", name).Msg("port group removed")
			}
		}
		l.Unlock()
	}
	return errors.Join(errs...)
}

// mappedSwitches returns the DVS names of the bridge mappings, once each.
func (a *Agent) mappedSwitches() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range a.cfg.BridgeMappings {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}
