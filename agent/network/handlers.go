package network

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// The mechanism driver's requests (networking-vsphere's DVSClientAPI 1.1).

type networkArgs struct {
	Current  networkDict  `json:"current"`
	Segment  *segment     `json:"segment"`
	Original *networkDict `json:"original"`
}

func (n networkArgs) segments() []segment {
	if n.Segment != nil {
		return []segment{*n.Segment}
	}
	return n.Current.allSegments()
}

// allSegments is a network's segments, from "segments" or the provider
// attributes.
func (n networkDict) allSegments() []segment {
	if len(n.Segments) > 0 {
		return n.Segments
	}
	if n.NetworkType == "" {
		return nil
	}
	return []segment{{NetworkType: n.NetworkType, PhysicalNetwork: n.PhysicalNetwork, SegmentationID: n.SegmentationID}}
}

// createNetwork makes the network's port group (the driver's
// precreate_networks); bind_port makes it too when this cast was missed.
func (a *Agent) createNetwork(ctx context.Context, req *rpc.Request) (any, error) {
	var args networkArgs
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	p, ok := a.place(args.segments())
	if !ok {
		return nil, nil // a segment of another agent, or a type the DVS does not carry
	}
	_, pg, err := a.ensureNetwork(ctx, args.Current.ID, args.Current.adminUp(), p)
	if err != nil {
		return nil, err
	}
	zerolog.Ctx(ctx).Info().Str("network_id", args.Current.ID).Str("portgroup", pg.Name).Int32("vlan", pg.VLAN).Msg("network's port group ready")
	return nil, nil
}

// updateNetwork follows the network's admin state (a port group of a
// network that is down is blocked) and its segment.
func (a *Agent) updateNetwork(ctx context.Context, req *rpc.Request) (any, error) {
	return a.createNetwork(ctx, req)
}

func (a *Agent) deleteNetwork(ctx context.Context, req *rpc.Request) (any, error) {
	var args networkArgs
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if _, ok := a.place(args.segments()); !ok {
		return nil, nil
	}
	return nil, a.removeNetwork(ctx, args.Current.ID)
}

type bindArgs struct {
	Current         portDict    `json:"current"`
	NetworkSegments []segment   `json:"network_segments"`
	NetworkCurrent  networkDict `json:"network_current"`
}

// bindPort reserves a DVS port for a neutron port being bound to this
// host and answers {key, dvs_uuid, pg_key}, which the mechanism driver
// turns into vif_details dvs_port_key, dvs_id and pg_id for nova.
func (a *Agent) bindPort(ctx context.Context, req *rpc.Request) (any, error) {
	var args bindArgs
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if args.Current.ID == "" {
		return nil, rpc.BuiltinError("ValueError", "bind_port: the port has no id")
	}
	segs := args.NetworkSegments
	if len(segs) == 0 {
		segs = args.NetworkCurrent.allSegments()
	}
	p, ok := a.place(segs)
	if !ok {
		return nil, rpc.BuiltinError("ValueError", fmt.Sprintf("bind_port: network %s has no VLAN or flat segment on a physical network of this agent's bridge mappings %v",
			args.Current.NetworkID, a.cfg.BridgeMappings))
	}
	netID := args.Current.NetworkID
	if netID == "" {
		netID = args.NetworkCurrent.ID
	}
	d, pg, err := a.ensureNetwork(ctx, netID, args.NetworkCurrent.adminUp(), p)
	if err != nil {
		return nil, err
	}
	// One reservation at a time per DVS: two ports must not pick the
	// same free DVS port.
	l := a.st.lock("reserve:" + d.Name)
	l.Lock()
	port, err := a.sw.ReservePort(ctx, d, pg, args.Current.ID)
	l.Unlock()
	if err != nil {
		return nil, fmt.Errorf("reserve a port of %s for %s: %w", pg.Name, args.Current.ID, err)
	}
	a.st.mu.Lock()
	info := a.st.ports[args.Current.ID]
	if info == nil || info.key != port.Key {
		info = &portInfo{dvs: d.Name, key: port.Key, pgKey: pg.Key}
		a.st.ports[args.Current.ID] = info
	}
	info.remember(args.Current)
	info.needDetails, info.needFilter = true, true
	a.st.mu.Unlock()
	zerolog.Ctx(ctx).Info().Str("port_id", args.Current.ID).Str("portgroup", pg.Name).Str("port_key", port.Key).Msg("port bound")
	return map[string]any{"key": port.Key, "dvs_uuid": d.UUID, "pg_key": pg.Key}, nil
}

type portArgs struct {
	Current  portDict  `json:"current"`
	Original *portDict `json:"original"`
	Segment  *segment  `json:"segment"`
}

// postUpdatePort: neutron changed a bound port (admin state, security
// groups, status); the next device pass reads it again.
func (a *Agent) postUpdatePort(ctx context.Context, req *rpc.Request) (any, error) {
	var args portArgs
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	a.markPort(args.Current)
	return nil, nil
}

// deletePort frees the DVS port of a deleted neutron port.
func (a *Agent) deletePort(ctx context.Context, req *rpc.Request) (any, error) {
	var args portArgs
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	return nil, a.releasePort(ctx, args.Current.ID)
}

// markPort asks the next device pass to read a port's details and filter
// again when what the agent acts on changed: its admin state (up or down)
// or its security groups. Other changes, above all the status neutron sets
// after update_device_up (whose post_update_port and port_update come
// back here), change nothing; re-reading them would loop.
func (a *Agent) markPort(p portDict) {
	a.st.mu.Lock()
	info := a.st.ports[p.ID]
	changed := false
	if info != nil {
		changed = info.remember(p)
		if changed {
			info.needDetails, info.needFilter = true, true
		}
	}
	a.st.mu.Unlock()
	if changed {
		a.pokeDevices()
	}
}

// releasePort frees the DVS port reserved for a neutron port (nothing
// when the agent has none).
func (a *Agent) releasePort(ctx context.Context, id string) error {
	a.st.mu.Lock()
	info := a.st.ports[id]
	delete(a.st.ports, id)
	a.st.mu.Unlock()
	if info == nil {
		return nil
	}
	d, err := a.switchNamed(ctx, info.dvs)
	if err != nil {
		return err
	}
	if err := a.sw.ReleasePort(ctx, d, info.key); err != nil {
		return fmt.Errorf("release DVS port %s of %s: %w", info.key, id, err)
	}
	zerolog.Ctx(ctx).Info().Str("port_id", id).Str("port_key", info.key).Msg("DVS port released")
	return nil
}

// ML2's fanouts (AgentNotifierApi and the security group notifier).

func (a *Agent) portUpdate(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Port portDict `json:"port"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	a.markPort(args.Port)
	return nil, nil
}

func (a *Agent) portDelete(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		PortID string `json:"port_id"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	return nil, a.releasePort(ctx, args.PortID)
}

func (a *Agent) networkUpdate(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Network networkDict `json:"network"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	p, ok := a.place(args.Network.allSegments())
	if !ok || !a.knowsNetwork(p.dvs, args.Network.ID) {
		return nil, nil // the mechanism driver's update_network makes it if needed
	}
	_, _, err := a.ensureNetwork(ctx, args.Network.ID, args.Network.adminUp(), p)
	return nil, err
}

func (a *Agent) networkDelete(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		NetworkID string `json:"network_id"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	known := false
	for _, d := range a.mappedSwitches() {
		known = known || a.knowsNetwork(d, args.NetworkID)
	}
	if !known {
		return nil, nil
	}
	return nil, a.removeNetwork(ctx, args.NetworkID)
}

func (a *Agent) knowsNetwork(dvs, networkID string) bool {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	_, ok := a.st.pgs[portgroupName(dvs, networkID)]
	return ok
}

// securityGroupsUpdated: rules or members of security groups changed;
// every port's filter is programmed again on the next pass (neutron's
// refresh_firewall does the same for the ports of those groups).
func (a *Agent) securityGroupsUpdated(ctx context.Context, req *rpc.Request) (any, error) {
	if !a.cfg.SecurityGroups {
		return nil, nil
	}
	a.st.mu.Lock()
	for _, p := range a.st.ports {
		p.needFilter = true
	}
	a.st.mu.Unlock()
	a.pokeDevices()
	return nil, nil
}
