// Package network is the agent's neutron role: the vSphere DVS L2 agent
// that neutron's vmware_dvs mechanism driver binds ports to (the role of
// networking-vsphere's retired neutron-dvs-agent, speaking its protocol).
//
// It reports itself on q-reports-plugin as agent type "DVS agent" with its
// bridge mappings (physical network → DVS); keeps one distributed port
// group per network, named <dvs name><network id>, with the segment's VLAN;
// answers the mechanism driver's bind_port by reserving a DVS port named
// after the neutron port; watches the DVS ports it reserved and tells
// neutron when a VM's NIC connects or leaves (update_device_up/down, which
// turn the port ACTIVE or DOWN); and programs security groups as DVS port
// traffic filters. Everything it keeps is in vCenter (port groups and port
// names), so a restart, or a bus outage that lost fanouts, is repaired by
// reading neutron's networks again and the DVS back.
package network
