package vcenter

// NIC is a virtual network card of a VM, as nova's VMware driver builds it
// from a VIF (vif.get_vif_info): a model, the port's MAC address, and a
// network backing. IfaceID is the neutron port id, written to the VM's
// extraConfig as nvp.iface-id.<index> (what NSX and the DVS agent read).
type NIC struct {
	// Model is the card: e1000 (nova's default), e1000e, vmxnet, vmxnet3,
	// pcnet32 or sriov.
	Model string
	// MAC is the neutron port's MAC address, set manually on the card.
	MAC string
	// IfaceID is the neutron port id.
	IfaceID string
	// Network is where the card is connected.
	Network NetworkRef
}

// NetworkRef is a NIC's backing: a distributed port group (SwitchUUID and
// PortgroupKey, and PortKey to pin one DVS port, as vif_details dvs_id,
// pg_id and dvs_port_key say), or else a network found by name (a standard
// port group, or a DVS port group whose name contains NetworkName, as
// nova's network_util.get_network_with_the_name does).
type NetworkRef struct {
	SwitchUUID   string
	PortgroupKey string
	PortKey      string
	NetworkName  string
}
