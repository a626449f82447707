package main

import (
	"crypto/rand"
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// shapeInventory adjusts the simulated inventory where nova's VMware driver
// expects what a real vCenter has:
//
//   - datastores: summary.type "VMFS" (the simulator says "OTHER", and
//     nova's datastore selection only takes VMFS, NFS, NFS41 and vsan: with
//     none left, update_provider_tree dies on "max() arg is an empty
//     sequence");
//   - hosts: named by the simulator's IP (nova uploads an image to the ESX
//     host of the datastore by the host's name; the simulator's host names,
//     DC0_C0_H0, do not resolve).
//   - the vCenter's instance UUID: a fresh one per start (the simulator's is
//     fixed, and nova names compute nodes and placement providers
//     "<cluster moref>.<instance UUID>": a later run on the same control
//     plane would collide with the providers of earlier ones).
func shapeInventory(m *simulator.Registry, ip string) {
	si := m.Get(vim25ServiceInstance).(*simulator.ServiceInstance)
	si.Content.About.InstanceUuid = randomUUID()
	for _, e := range m.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok {
			ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
		}
	}
	for _, e := range m.All("HostSystem") {
		if h, ok := e.(*simulator.HostSystem); ok {
			h.Name = ip
			h.Summary.Config.Name = ip
		}
	}
}

// datacenterName is the name of the (first) datacenter: an ESX host's
// datastore URLs name their datacenter "ha-datacenter", which the
// middleware maps to it.
func datacenterName(m *simulator.Registry) string {
	if dc, ok := m.Any("Datacenter").(*simulator.Datacenter); ok {
		return dc.Name
	}
	return "DC0"
}

func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
