package network

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// sgInfo is security_group_info_for_devices' answer (call version 1.3).
type sgInfo struct {
	SecurityGroups map[string][]sgRule                     `json:"security_groups"`
	MemberIPs      map[string]map[string][]json.RawMessage `json:"sg_member_ips"`
	Devices        map[string]sgDevice                     `json:"devices"`
}

type sgDevice struct {
	SecurityGroups      []string `json:"security_groups"`
	PortSecurityEnabled *bool    `json:"port_security_enabled"`
}

type sgRule struct {
	ID             string          `json:"id"`
	Direction      string          `json:"direction"`
	Ethertype      string          `json:"ethertype"`
	Protocol       json.RawMessage `json:"protocol"`
	PortRangeMin   *int32          `json:"port_range_min"`
	PortRangeMax   *int32          `json:"port_range_max"`
	RemoteIPPrefix *string         `json:"remote_ip_prefix"`
	// security_group_info_for_devices names the remote prefix after the
	// direction: source_ip_prefix for ingress, dest_ip_prefix for egress.
	SourceIPPrefix *string `json:"source_ip_prefix"`
	DestIPPrefix   *string `json:"dest_ip_prefix"`
	RemoteGroupID  *string `json:"remote_group_id"`
}

// dvsDirection maps a neutron rule's direction to the DVS rule's, seen
// from the VM as the driver's rules are (incoming packets come from the
// remote peer, outgoing ones go to it), as networking-vsphere mapped
// ingress to incomingPackets.
func dvsDirection(neutron string) string {
	if neutron == "ingress" {
		return vcenter.DirectionIncoming
	}
	return vcenter.DirectionOutgoing
}

func reverse(direction string) string {
	if direction == vcenter.DirectionOutgoing {
		return vcenter.DirectionIncoming
	}
	return vcenter.DirectionOutgoing
}

// rulesFor translates a port's security groups into DVS traffic rules: one
// accept rule per security group rule and peer, each with its reverse
// (DVS filters are stateless, so the answers of an allowed exchange must
// be allowed too, as networking-vsphere emulated state), then a rule that
// drops everything else. A port without port security gets no filter.
func (s sgInfo) rulesFor(portID string) []vcenter.TrafficRule {
	dev, ok := s.Devices[portID]
	if !ok || (dev.PortSecurityEnabled != nil && !*dev.PortSecurityEnabled) {
		return nil
	}
	var out []vcenter.TrafficRule
	seq := int32(10)
	add := func(r vcenter.TrafficRule) {
		r.Sequence = seq
		seq += 10
		out = append(out, r)
	}
	for _, sg := range dev.SecurityGroups {
		for _, r := range s.SecurityGroups[sg] {
			proto, ok := protocolNumber(r.Protocol, r.Ethertype)
			if !ok {
				continue
			}
			var pmin, pmax int32
			if (proto == 6 || proto == 17) && r.PortRangeMin != nil {
				pmin = *r.PortRangeMin
				pmax = pmin
				if r.PortRangeMax != nil {
					pmax = *r.PortRangeMax
				}
			}
			dir := dvsDirection(r.Direction)
			for _, peer := range s.peers(r) {
				desc := "neutron security group " + sg
				if r.ID != "" {
					desc += " rule " + r.ID
				}
				add(vcenter.TrafficRule{Description: desc, Direction: dir, EtherType: r.Ethertype,
					Protocol: proto, PortMin: pmin, PortMax: pmax, RemoteCIDR: peer, Accept: true})
				add(vcenter.TrafficRule{Description: desc + " (reverse)", Direction: reverse(dir), EtherType: r.Ethertype,
					Protocol: proto, RemoteCIDR: peer, Accept: true})
			}
		}
	}
	add(vcenter.TrafficRule{Description: "drop what no security group allows", Direction: vcenter.DirectionBoth, Protocol: -1, Accept: false})
	return out
}

// peers returns the CIDRs a rule applies to: its remote prefix, the
// members of its remote group, or "" (anyone). A remote group without
// members allows no one.
func (s sgInfo) peers(r sgRule) []string {
	if r.RemoteGroupID != nil && *r.RemoteGroupID != "" {
		var out []string
		for _, m := range s.MemberIPs[*r.RemoteGroupID][r.Ethertype] {
			ip := memberIP(m)
			if parsed := net.ParseIP(ip); parsed != nil {
				if parsed.To4() != nil {
					out = append(out, ip+"/32")
				} else {
					out = append(out, ip+"/128")
				}
			}
		}
		return out
	}
	for _, p := range []*string{r.RemoteIPPrefix, r.SourceIPPrefix, r.DestIPPrefix} {
		if p != nil && *p != "" {
			return []string{*p}
		}
	}
	return []string{""}
}

// memberIP reads a member of sg_member_ips: "ip" (before 1.3) or
// ["ip", "mac"].
func memberIP(raw json.RawMessage) string {
	var ip string
	if json.Unmarshal(raw, &ip) == nil {
		return ip
	}
	var pair []string
	if json.Unmarshal(raw, &pair) == nil && len(pair) > 0 {
		return pair[0]
	}
	return ""
}

// protocolNumber reads a rule's protocol (null = any, a name or a number
// as a string or number); false for one the filter cannot express.
func protocolNumber(raw json.RawMessage, ethertype string) (int32, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return -1, true
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		var n int32
		if json.Unmarshal(raw, &n) != nil {
			return 0, false
		}
		return n, true
	}
	switch strings.ToLower(name) {
	case "", "any":
		return -1, true
	case "tcp":
		return 6, true
	case "udp":
		return 17, true
	case "icmp":
		if ethertype == "IPv6" {
			return 58, true
		}
		return 1, true
	case "ipv6-icmp", "icmpv6":
		return 58, true
	case "sctp":
		return 132, true
	}
	if n, err := strconv.Atoi(name); err == nil {
		return int32(n), true
	}
	return 0, false
}
