package compute

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// nicHypervisor hot-plugs network cards (*vcenter.Session has it): AddNIC
// adds the card and writes nvp.iface-id.<index> = its port id; RemoveNIC
// removes the card with the MAC address and marks nvp.iface-id.<index>
// "free", as nova's VMware driver does.
type nicHypervisor interface {
	AddNIC(ctx context.Context, vm vcenter.Ref, nic vcenter.NIC, index int) error
	RemoveNIC(ctx context.Context, vm vcenter.Ref, mac string, index int) error
}

const ifaceIDPrefix = "nvp.iface-id."

// attachPortIndex is vm_util.get_attach_port_index: the first index with no
// nvp.iface-id.<index> in use (absent or "free").
func attachPortIndex(extra map[string]string) int {
	var used []int
	for k, v := range extra {
		if !strings.HasPrefix(k, ifaceIDPrefix) || v == "free" {
			continue
		}
		if i, err := strconv.Atoi(strings.TrimPrefix(k, ifaceIDPrefix)); err == nil {
			used = append(used, i)
		}
	}
	sort.Ints(used)
	for i, u := range used {
		if i != u {
			return i
		}
	}
	return len(used)
}

// detachPortIndex is vm_util.get_vm_detach_port_index: the index whose
// nvp.iface-id.<index> is the port (-1 if none).
func detachPortIndex(extra map[string]string, portID string) int {
	for k, v := range extra {
		if strings.HasPrefix(k, ifaceIDPrefix) && v == portID {
			if i, err := strconv.Atoi(strings.TrimPrefix(k, ifaceIDPrefix)); err == nil {
				return i
			}
		}
	}
	return -1
}

func interfaceAttachFailed(uuid string) error {
	return novaError("InterfaceAttachFailed", "Failed to attach network adapter device to "+uuid, 500, map[string]any{"instance_uuid": uuid})
}

func interfaceDetachFailed(uuid string) error {
	return novaError("InterfaceDetachFailed", "Failed to detach network adapter device from "+uuid, 400, map[string]any{"instance_uuid": uuid})
}

// AttachInterface is attach_interface (a call): a port allocated on the
// network (or the given port used) for the instance and bound to this
// host, a card added to the VM at the first free nvp.iface-id index, and
// the new VIF of the network info model as the reply, between the
// interface_attach notifications. A card that cannot be added gives the
// port back and fails with InterfaceAttachFailed, as nova does.
func (l *lifecycle) AttachInterface(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		NetworkID   *string `json:"network_id"`
		PortID      *string `json:"port_id"`
		RequestedIP *string `json:"requested_ip"`
		Tag         *string `json:"tag"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	r := netRequest{NetworkID: deref(a.NetworkID), PortID: deref(a.PortID), Address: deref(a.RequestedIP), Tag: deref(a.Tag)}
	var result map[string]any
	_, err := l.operation(ctx, req, opSpec{event: "compute_attach_interface", method: "attach_interface"},
		func(ctx context.Context, inst *ovo.Object) error {
			vif, err := l.attachInterface(ctx, req.Context, inst, r)
			result = vif
			return err
		})
	if err != nil {
		return nil, err
	}
	return result, nil
}

func (l *lifecycle) attachInterface(ctx context.Context, rc rpc.Context, inst *ovo.Object, r netRequest) (map[string]any, error) {
	uuid := inst.StringOrEmpty("uuid")
	hv, ok := l.hv.(nicHypervisor)
	if !ok || l.net == nil {
		return nil, novaError("AttachInterfaceNotSupported", fmt.Sprintf("Attaching interfaces is not supported for instance %s.", uuid), 400,
			map[string]any{"instance_uuid": uuid})
	}
	if r.Tag != "" {
		// The VMware driver lacks supports_tagged_attach_interface.
		return nil, novaError("NetworkInterfaceTaggedAttachNotSupported", "Tagged network interface attach is not supported by this compute service.", 400, nil)
	}
	l.notify.instanceAction(ctx, rc, inst, "", "interface_attach", "start", nil, nil)
	alloc, err := l.allocateForInstance(ctx, rc, inst, netRequests{r}, nil, l.host)
	if err != nil {
		return nil, err
	}
	if len(alloc.vifs) != 1 {
		zerolog.Ctx(ctx).Error().Int("ports", len(alloc.vifs)).Msg("allocate_for_instance returned an unexpected number of ports")
		return nil, interfaceAttachFailed(uuid)
	}
	vif := alloc.vifs[0]
	if err := l.plugNIC(ctx, rc, inst, hv, vif); err != nil {
		portID, _ := vif["id"].(string)
		zerolog.Ctx(ctx).Warn().Err(err).Str("port_id", portID).Msg("attach interface failed, try to deallocate port")
		if derr := l.deallocatePortForInstance(ctx, rc, inst, portID); derr != nil {
			zerolog.Ctx(ctx).Error().Err(derr).Str("port_id", portID).Msg("deallocating the port failed")
		}
		l.notify.instanceAction(ctx, rc, inst, "", "interface_attach", "error", err, nil)
		return nil, interfaceAttachFailed(uuid)
	}
	l.notify.instanceAction(ctx, rc, inst, "", "interface_attach", "end", nil, nil)
	return vif, nil
}

// plugNIC is vmops.attach_interface: the card for the VIF (the image's
// hw_vif_model) added at the first free port index, and the port's vnic
// index set when neutron has the vnic-index extension.
func (l *lifecycle) plugNIC(ctx context.Context, rc rpc.Context, inst *ovo.Object, hv nicHypervisor, vif map[string]any) error {
	props := map[string]any{}
	if m, ok := stringDict(inst, "system_metadata")["image_hw_vif_model"]; ok {
		props["hw_vif_model"] = m
	}
	nic, err := nicForVIF(vifModel(props), vif)
	if err != nil {
		return err
	}
	unlock := l.locks.lock("nova-vmware-hot-plug-" + inst.StringOrEmpty("uuid"))
	defer unlock()
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	index := attachPortIndex(vm.ExtraConfig)
	if err := hv.AddNIC(ctx, vm.Ref, nic, index); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Attaching network adapter failed.")
		return interfaceAttachFailed(inst.StringOrEmpty("uuid"))
	}
	return l.updateVNICIndex(ctx, vif, index)
}

// updateVNICIndex is update_instance_vnic_index (index < 0 is None).
func (l *lifecycle) updateVNICIndex(ctx context.Context, vif map[string]any, index int) error {
	if !l.net.hasExtension(ctx, "vnic-index") {
		return nil
	}
	id, _ := vif["id"].(string)
	var v any = index
	if index < 0 {
		v = nil
	}
	if _, err := l.net.client.UpdatePort(ctx, id, map[string]any{"vnic_index": v}); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Str("port_id", id).Msg("Unable to update instance VNIC index for port")
		return err
	}
	return nil
}

// DetachInterface is detach_interface (a cast): the port's card removed
// from the VM (its nvp.iface-id index marked "free"), then the port
// deleted, or unbound if the user brought it, and the info cache
// refreshed, between the interface_detach notifications.
func (l *lifecycle) DetachInterface(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		PortID string `json:"port_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_detach_interface", method: "detach_interface"},
		func(ctx context.Context, inst *ovo.Object) error {
			return l.detachInterface(ctx, req.Context, inst, a.PortID)
		})
}

func (l *lifecycle) detachInterface(ctx context.Context, rc rpc.Context, inst *ovo.Object, portID string) error {
	uuid := inst.StringOrEmpty("uuid")
	l.reloadInfoCache(ctx, rc, inst)
	var condemned map[string]any
	for _, v := range allVIFs(inst) {
		if v["id"] == portID {
			condemned = v
			break
		}
	}
	if condemned == nil {
		return novaError("PortNotFound", fmt.Sprintf("Port %s is not attached", portID), 404, map[string]any{"port_id": portID})
	}
	l.notify.instanceAction(ctx, rc, inst, "", "interface_detach", "start", nil, nil)
	if err := l.unplugNIC(ctx, inst, condemned); err != nil {
		if isRemote(err, "InstanceNotFound") {
			zerolog.Ctx(ctx).Debug().Err(err).Str("port_id", portID).Msg("Detach interface failed")
		} else {
			zerolog.Ctx(ctx).Warn().Err(err).Str("port_id", portID).Msg("Detach interface failed")
		}
		return interfaceDetachFailed(uuid)
	}
	if err := l.deallocatePortForInstance(ctx, rc, inst, portID); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "", "interface_detach", "end", nil, nil)
	return nil
}

// unplugNIC is vmops.detach_interface.
func (l *lifecycle) unplugNIC(ctx context.Context, inst *ovo.Object, vif map[string]any) error {
	hv, ok := l.hv.(nicHypervisor)
	if !ok || l.net == nil {
		return rpc.BuiltinError("NotImplementedError", "")
	}
	id, _ := vif["id"].(string)
	mac, _ := vif["address"].(string)
	unlock := l.locks.lock("nova-vmware-hot-plug-" + inst.StringOrEmpty("uuid"))
	defer unlock()
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	index := detachPortIndex(vm.ExtraConfig, id)
	if index < 0 {
		return novaError("NotFound", fmt.Sprintf("No device with interface-id %s exists on VM", id), 404, nil)
	}
	if err := l.updateVNICIndex(ctx, vif, -1); err != nil {
		return err
	}
	if err := hv.RemoveNIC(ctx, vm.Ref, mac, index); err != nil {
		if errors.Is(err, vcenter.ErrNotFound) {
			return novaError("NotFound", fmt.Sprintf("No device with MAC address %s exists on the VM", mac), 404, nil)
		}
		zerolog.Ctx(ctx).Error().Err(err).Msg("Detaching network adapter failed.")
		return interfaceDetachFailed(inst.StringOrEmpty("uuid"))
	}
	return nil
}

// deallocatePortForInstance is the network API's
// deallocate_port_for_instance: the port unbound if the user brought it,
// else deleted; its VirtualInterface destroyed; the info cache refreshed.
func (l *lifecycle) deallocatePortForInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object, portID string) error {
	n := l.net
	if slices.Contains(preexistingPortIDs(networkInfo(inst)), portID) {
		n.unbindPorts(ctx, []string{portID})
	} else if err := n.deletePorts(ctx, []string{portID}, true); err != nil {
		return err
	}
	res, err := l.cond.ClassAction(ctx, rc, "VirtualInterface", "get_by_uuid", []any{portID}, nil)
	if vo, ok := res.(*ovo.Object); err == nil && ok && vo != nil {
		if _, err := l.cond.ObjectAction(ctx, rc, vo, "destroy", nil, nil); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("destroying the port's VirtualInterface failed")
		}
	} else {
		zerolog.Ctx(ctx).Debug().Err(err).Str("port_id", portID).Msg("VirtualInterface not found for port")
	}
	_, err = l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{})
	return err
}
