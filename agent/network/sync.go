package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// call makes a call to neutron-server with an admin context.
func (a *Agent) call(ctx context.Context, c rpc.Client, method string, args any) (json.RawMessage, error) {
	if a.callFn != nil {
		return a.callFn(ctx, c.Target, method, args)
	}
	return c.Call(ctx, adminContext(), method, args)
}

// agentState is the agent's row in neutron's agents table, as
// networking-vsphere's DVS agent reported it.
func (a *Agent) agentState(start bool, devices int) map[string]any {
	s := map[string]any{
		"binary": AgentBinary, "host": a.cfg.Host, "topic": "N/A", "agent_type": AgentType,
		"configurations": map[string]any{
			"bridge_mappings":  a.cfg.BridgeMappings,
			"vsphere_hostname": a.cfg.VCenterHost,
			"devices":          devices,
		},
		"uuid": newUUID(),
	}
	if start {
		s["start_flag"] = true
	}
	return s
}

// runReports reports the agent's state every ReportInterval, as neutron's
// OVS agent does: always a call (the first with start_flag), so that the
// answer "revived" (neutron had given the agent up, and fanouts meant for
// it were lost) is seen; that, or a report that works again after failing,
// has everything read again.
func (a *Agent) runReports(ctx context.Context) {
	start, failing := true, false
	for {
		args := map[string]any{
			"agent_state": map[string]any{"agent_state": a.agentState(start, a.upDevices())},
			"time":        time.Now().UTC().Format("2006-01-02T15:04:05.000000"),
		}
		raw, err := a.call(ctx, a.reports, "report_state", args)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				a.log.Warn().Err(err).Msg("report_state to neutron-server failed; retrying every report interval")
			}
			failing = true
		case err == nil:
			var answer string
			_ = json.Unmarshal(raw, &answer)
			if answer == "revived" {
				a.log.Info().Msg("neutron had the agent down (revived): resynchronising")
				a.requestResync()
			} else if failing {
				a.log.Info().Msg("report_state works again: resynchronising")
				a.requestResync()
			}
			start, failing = false, false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.cfg.ReportInterval):
		}
	}
}

func (a *Agent) upDevices() int {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	n := 0
	for _, p := range a.st.ports {
		if p.up {
			n++
		}
	}
	return n
}

// runSync resynchronises when asked and runs a device pass every
// PollingInterval or when a request changed a port.
func (a *Agent) runSync(ctx context.Context) {
	pendingResync := false
	t := time.NewTicker(a.cfg.PollingInterval)
	defer t.Stop()
	failedAt := time.Time{}
	passFailing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.resync:
			pendingResync = true
		case <-a.poke:
		case <-t.C:
		}
		// A failed resync is tried again every few passes, not every one.
		if pendingResync && time.Since(failedAt) >= 5*a.cfg.PollingInterval {
			if err := a.fullSync(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				a.log.Warn().Err(err).Msg("resynchronisation with neutron and vCenter failed; trying again")
				failedAt = time.Now()
			} else {
				pendingResync = false
			}
		}
		// Logged once per failing streak: neutron or vCenter being away
		// must not flood the log at the polling interval.
		switch err := a.devicePass(ctx); {
		case err != nil && ctx.Err() == nil && !passFailing:
			a.log.Warn().Err(err).Msg("device pass failed; retrying at every polling interval")
			passFailing = true
		case err == nil && passFailing:
			a.log.Info().Msg("device pass works again")
			passFailing = false
		}
	}
}

// fullSync reads every network from neutron (bulk_pull of Network
// objects, as the OVS agent fills its cache), makes or fixes their port
// groups, removes the port groups of networks that are gone, and adopts
// the DVS ports named after neutron ports, to be reported again.
func (a *Agent) fullSync(ctx context.Context) error {
	start := time.Now()
	raw, err := a.call(ctx, a.pull, "bulk_pull", map[string]any{
		"resource_type": "Network", "version": "1.1", "filter_kwargs": nil,
	})
	if err != nil {
		return fmt.Errorf("bulk_pull of the networks: %w", err)
	}
	nets, err := decodeNetworks(raw)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	var errs []error
	for _, n := range nets {
		live[n.ID] = true
		if p, ok := a.place(n.allSegments()); ok {
			if _, _, err := a.ensureNetwork(ctx, n.ID, n.adminUp(), p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	adopted := 0
	for _, dvsName := range a.mappedSwitches() {
		d, err := a.switchNamed(ctx, dvsName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pgs, err := a.sw.Portgroups(ctx, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var keys []string
		for _, pg := range pgs {
			id := networkOf(dvsName, pg.Name)
			if id == "" {
				continue
			}
			if !live[id] {
				if err := a.removeNetwork(ctx, id); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			a.st.mu.Lock()
			a.st.pgs[pg.Name] = pg
			a.st.mu.Unlock()
			keys = append(keys, pg.Key)
		}
		if len(keys) == 0 {
			continue
		}
		ports, err := a.sw.Ports(ctx, d, keys...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a.st.mu.Lock()
		for _, p := range ports {
			if !isPortID(p.Name) {
				continue
			}
			info := a.st.ports[p.Name]
			if info == nil || info.key != p.Key {
				info = &portInfo{dvs: dvsName, key: p.Key, pgKey: p.PortgroupKey}
				a.st.ports[p.Name] = info
			}
			// Reported again: neutron may have missed the last state.
			info.up, info.needDetails, info.needFilter = false, true, true
			adopted++
		}
		a.st.mu.Unlock()
	}
	a.log.Info().Int("networks", len(nets)).Int("ports", adopted).Dur("took", time.Since(start)).Msg("resynchronised with neutron and vCenter")
	return errors.Join(errs...)
}

// decodeNetworks reads a bulk_pull answer: Network object primitives with
// their NetworkSegment objects.
func decodeNetworks(raw json.RawMessage) ([]networkDict, error) {
	type prim struct {
		Data json.RawMessage `json:"versioned_object.data"`
	}
	var list []prim
	if err := decode(raw, &list); err != nil {
		return nil, fmt.Errorf("bulk_pull answer: %w", err)
	}
	out := make([]networkDict, 0, len(list))
	for _, p := range list {
		var n struct {
			ID           string `json:"id"`
			Name         string `json:"name"`
			AdminStateUp *bool  `json:"admin_state_up"`
			Segments     []prim `json:"segments"`
		}
		if err := decode(p.Data, &n); err != nil {
			return nil, fmt.Errorf("bulk_pull answer: a network: %w", err)
		}
		nd := networkDict{ID: n.ID, Name: n.Name, AdminStateUp: n.AdminStateUp}
		for _, s := range n.Segments {
			var seg segment
			if err := decode(s.Data, &seg); err != nil {
				return nil, fmt.Errorf("bulk_pull answer: a segment of %s: %w", n.ID, err)
			}
			nd.Segments = append(nd.Segments, seg)
		}
		out = append(out, nd)
	}
	return out, nil
}

// devicePass reads the agent's DVS ports and tells neutron about NICs that
// connected (update_device_up, after the port's filter is programmed) or
// left (update_device_down), and re-reads ports neutron changed.
func (a *Agent) devicePass(ctx context.Context) error {
	// the port groups per DVS the agent serves
	a.st.mu.Lock()
	keys := map[string][]string{}
	for name, pg := range a.st.pgs {
		for _, d := range a.mappedSwitches() {
			if networkOf(d, name) != "" {
				keys[d] = append(keys[d], pg.Key)
			}
		}
	}
	a.st.mu.Unlock()
	var errs []error
	var check, down []string
	for dvsName, pgKeys := range keys {
		d, err := a.switchNamed(ctx, dvsName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ports, err := a.sw.Ports(ctx, d, pgKeys...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen := map[string]bool{}
		a.st.mu.Lock()
		for _, p := range ports {
			if !isPortID(p.Name) {
				continue
			}
			seen[p.Name] = true
			info := a.st.ports[p.Name]
			if info == nil {
				info = &portInfo{dvs: dvsName, key: p.Key, pgKey: p.PortgroupKey, needDetails: true, needFilter: true}
				a.st.ports[p.Name] = info
			}
			connected := p.ConnectedVM.Value != ""
			switch {
			case connected && ((!info.up && !info.adminDown) || info.needDetails || info.needFilter):
				check = append(check, p.Name)
			case !connected && info.up:
				down = append(down, p.Name)
			}
		}
		// reserved here but gone from the DVS (released behind our back)
		for id, info := range a.st.ports {
			if info.dvs == dvsName && !seen[id] && info.up {
				down = append(down, id)
			}
		}
		a.st.mu.Unlock()
	}
	var up []string
	if len(check) > 0 {
		var err error
		up, down, err = a.checkDevices(ctx, check, down)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range up {
		if _, err := a.call(ctx, a.plugin, "update_device_up", map[string]any{"device": id, "agent_id": a.AgentID(), "host": a.cfg.Host}); err != nil {
			errs = append(errs, fmt.Errorf("update_device_up %s: %w", id, err))
			continue
		}
		a.setUp(id, true)
		a.log.Info().Str("port_id", id).Msg("device up")
	}
	for _, id := range down {
		if _, err := a.call(ctx, a.plugin, "update_device_down", map[string]any{"device": id, "agent_id": a.AgentID(), "host": a.cfg.Host}); err != nil {
			errs = append(errs, fmt.Errorf("update_device_down %s: %w", id, err))
			continue
		}
		a.setUp(id, false)
		a.log.Info().Str("port_id", id).Msg("device down")
	}
	return errors.Join(errs...)
}

func (a *Agent) setUp(id string, up bool) {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	if info := a.st.ports[id]; info != nil {
		info.up = up
		if up {
			info.needDetails = false
		}
	}
}

// deviceDetails is the part of get_devices_details_list_and_failed_devices'
// answer the role reads.
type deviceDetails struct {
	Device       string `json:"device"`
	PortID       string `json:"port_id"`
	AdminStateUp *bool  `json:"admin_state_up"`
}

// checkDevices asks neutron about connected ports (which also moves them
// to BUILD), programs their filters, and sorts them into up and down;
// ports neutron no longer has are released.
func (a *Agent) checkDevices(ctx context.Context, ids, down []string) (up, downOut []string, err error) {
	downOut = down
	raw, err := a.call(ctx, a.plugin, "get_devices_details_list_and_failed_devices",
		map[string]any{"devices": ids, "agent_id": a.AgentID(), "host": a.cfg.Host})
	if err != nil {
		return nil, downOut, fmt.Errorf("get_devices_details_list_and_failed_devices: %w", err)
	}
	var ans struct {
		Devices []deviceDetails `json:"devices"`
		Failed  []string        `json:"failed_devices"`
	}
	if err := decode(raw, &ans); err != nil {
		return nil, downOut, fmt.Errorf("get_devices_details_list_and_failed_devices answer: %w", err)
	}
	var filter, admitted []string
	for _, dd := range ans.Devices {
		if dd.PortID == "" {
			// neutron has no such port any more: free the DVS port
			if err := a.releasePort(ctx, dd.Device); err != nil {
				a.log.Warn().Err(err).Str("port_id", dd.Device).Msg("releasing the DVS port of a deleted neutron port failed")
			}
			continue
		}
		if dd.AdminStateUp != nil && !*dd.AdminStateUp {
			a.st.mu.Lock()
			info := a.st.ports[dd.Device]
			wasUp := info != nil && info.up
			if info != nil {
				info.needDetails, info.needFilter, info.adminDown = false, false, true
			}
			a.st.mu.Unlock()
			if wasUp {
				downOut = append(downOut, dd.Device)
			}
			continue
		}
		admitted = append(admitted, dd.Device)
		a.st.mu.Lock()
		if info := a.st.ports[dd.Device]; info != nil {
			info.adminDown = false
			if info.needFilter {
				filter = append(filter, dd.Device)
			}
		}
		a.st.mu.Unlock()
	}
	if len(filter) > 0 {
		if err := a.applyFilters(ctx, filter); err != nil {
			return nil, downOut, err
		}
	}
	a.st.mu.Lock()
	for _, id := range admitted {
		if info := a.st.ports[id]; info != nil && (!info.up || info.needDetails) {
			up = append(up, id)
		}
	}
	a.st.mu.Unlock()
	return up, downOut, nil
}

// applyFilters programs the security groups of ports as their DVS ports'
// traffic filters.
func (a *Agent) applyFilters(ctx context.Context, ids []string) error {
	if !a.cfg.SecurityGroups {
		a.st.mu.Lock()
		for _, id := range ids {
			if info := a.st.ports[id]; info != nil {
				info.needFilter = false
			}
		}
		a.st.mu.Unlock()
		return nil
	}
	raw, err := a.call(ctx, a.secgrp, "security_group_info_for_devices", map[string]any{"devices": ids, "call_version": "1.3"})
	if err != nil {
		return fmt.Errorf("security_group_info_for_devices: %w", err)
	}
	var info sgInfo
	if err := decode(raw, &info); err != nil {
		return fmt.Errorf("security_group_info_for_devices answer: %w", err)
	}
	var errs []error
	for _, id := range ids {
		a.st.mu.Lock()
		p := a.st.ports[id]
		var dvsName, key string
		if p != nil {
			dvsName, key = p.dvs, p.key
		}
		a.st.mu.Unlock()
		if p == nil {
			continue
		}
		d, err := a.switchNamed(ctx, dvsName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rules := info.rulesFor(id)
		if err := a.sw.SetPortFilter(ctx, d, key, rules); err != nil {
			errs = append(errs, fmt.Errorf("filter of DVS port %s (%s): %w", key, id, err))
			continue
		}
		a.st.mu.Lock()
		if p := a.st.ports[id]; p != nil {
			p.needFilter = false
		}
		a.st.mu.Unlock()
		a.log.Debug().Str("port_id", id).Int("rules", len(rules)).Msg("security groups programmed")
	}
	return errors.Join(errs...)
}
