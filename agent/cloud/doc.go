// Package cloud owns the REST clients of the OpenStack control plane that the
// agent's roles share: keystone authentication and its service catalog
// (Session), and placement as nova-compute's report client drives it
// (Placement), plus the inventory the VMware driver reports (VMwareInventory).
//
// It speaks HTTP to OpenStack services only, through gophercloud. It imports
// no rpc, no drivers, no AMQP client and no govmomi: callers hand it plain
// numbers gathered elsewhere. It holds no package-level mutable state; every
// cache lives in a value the caller owns.
package cloud
