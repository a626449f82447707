package compute

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// The multinic API (os-multinic addFixedIp / removeFixedIp, microversions
// < 2.44): add_fixed_ip_to_instance and remove_fixed_ip_from_instance,
// casts that carry only @wrap_exception and @wrap_instance_fault (no
// instance action event, no task state).

// AddFixedIPToInstance is add_fixed_ip_to_instance: create_ip.start, the
// neutron API's add_fixed_ip_to_instance (a fixed IP of the network's
// first subnet neutron takes added to the instance's port on that
// network, the info cache refreshed), the VMware driver's
// inject_network_info (the VM's machine.id), updated_at bumped and
// create_ip.end with the new network info.
func (l *lifecycle) AddFixedIPToInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		NetworkID string `json:"network_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.instanceCall(ctx, req, "add_fixed_ip_to_instance", func(ctx context.Context, inst *ovo.Object) (any, error) {
		rc := req.Context
		l.notify.instanceAction(ctx, rc, inst, "create_ip", "", "start", nil, nil)
		if err := l.addFixedIP(ctx, rc, inst, a.NetworkID); err != nil {
			return nil, err
		}
		return nil, l.finishFixedIP(ctx, rc, inst, "create_ip")
	})
}

// RemoveFixedIPFromInstance is remove_fixed_ip_from_instance: delete_ip.start,
// the neutron API's remove_fixed_ip_from_instance (the address dropped
// from the instance's port that has it, the info cache refreshed), the
// driver's inject_network_info, updated_at bumped and delete_ip.end.
func (l *lifecycle) RemoveFixedIPFromInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Address string `json:"address"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.instanceCall(ctx, req, "remove_fixed_ip_from_instance", func(ctx context.Context, inst *ovo.Object) (any, error) {
		rc := req.Context
		l.notify.instanceAction(ctx, rc, inst, "delete_ip", "", "start", nil, nil)
		if err := l.removeFixedIP(ctx, rc, inst, a.Address); err != nil {
			return nil, err
		}
		return nil, l.finishFixedIP(ctx, rc, inst, "delete_ip")
	})
}

// finishFixedIP is the manager's end of both: _inject_network_info,
// instance.updated_at = utcnow(), instance.save() and <action>.end with
// the network info's fixed IPs.
func (l *lifecycle) finishFixedIP(ctx context.Context, rc rpc.Context, inst *ovo.Object, action string) error {
	zerolog.Ctx(ctx).Debug().Msg("Inject network info")
	if err := l.driverInjectNetworkInfo(ctx, inst); err != nil {
		return err
	}
	inst.SetDateTime("updated_at", time.Now().UTC())
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, action, "", "end", nil, map[string]any{"fixed_ips": legacyFixedIPs(inst)})
	return nil
}

// driverInjectNetworkInfo is the VMware driver's inject_network_info
// (vmops._set_machine_id): the VM's machine.id extraConfig from the
// instance's network info.
func (l *lifecycle) driverInjectNetworkInfo(ctx context.Context, inst *ovo.Object) error {
	hv, ok := l.hv.(extraConfigHypervisor)
	if !ok {
		return rpc.BuiltinError("NotImplementedError", "")
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	if err := hv.SetExtraConfig(ctx, vm.Ref, map[string]string{"machine.id": machineID(networkInfo(inst))}); err != nil {
		return vimFault(err)
	}
	return nil
}

// errNeutronMissing is what the network API calls answer without neutron.
var errNeutronMissing = errors.New("neutron is not configured (VCAGENT_AUTH_URL or VCAGENT_NEUTRON_ENDPOINT)")

// addFixedIP is the neutron API's add_fixed_ip_to_instance (under
// @refresh_cache): the network's subnets (none: NetworkNotFoundForInstance),
// the instance's ports on the network (device_owner compute:<az>); the
// first port that takes a fixed IP on a subnet gets it and the network
// info is rebuilt and cached; none: NetworkNotFoundForInstance.
func (l *lifecycle) addFixedIP(ctx context.Context, rc rpc.Context, inst *ovo.Object, networkID string) error {
	if l.net == nil {
		return errNeutronMissing
	}
	uuid := inst.StringOrEmpty("uuid")
	notFound := novaError("NetworkNotFoundForInstance", fmt.Sprintf("Network could not be found for instance %s.", uuid), 404,
		map[string]any{"instance_id": uuid})
	subnets, err := l.net.client.ListSubnets(ctx, url.Values{"network_id": {networkID}})
	if err != nil {
		return err
	}
	if len(subnets) == 0 {
		return notFound
	}
	ports, err := l.net.client.ListPorts(ctx, url.Values{"device_id": {uuid},
		"device_owner": {"compute:" + nullableString(inst, "availability_zone")}, "network_id": {networkID}})
	if err != nil {
		return err
	}
	for _, p := range ports {
		fixed := make([]any, 0, len(p.FixedIPs)+len(subnets))
		for _, ip := range p.FixedIPs {
			fixed = append(fixed, map[string]any{"subnet_id": ip.SubnetID, "ip_address": ip.IPAddress})
		}
		for _, s := range subnets {
			// nova appends to the port's list as it goes: a failed
			// subnet stays in the next attempt's body.
			fixed = append(fixed, map[string]any{"subnet_id": s.ID})
			if _, err := l.net.client.UpdatePort(ctx, p.ID, map[string]any{"fixed_ips": fixed}); err != nil {
				zerolog.Ctx(ctx).Debug().Err(err).Str("port", p.ID).Str("subnet_id", s.ID).Msg("Unable to update port on subnet")
				continue
			}
			_, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{})
			return err
		}
	}
	return notFound
}

// removeFixedIP is the neutron API's remove_fixed_ip_from_instance (under
// @refresh_cache): the instance's first port with the address loses it (a
// failed update is only logged) and the network info is rebuilt and
// cached; no such port: FixedIpNotFoundForInstance.
func (l *lifecycle) removeFixedIP(ctx context.Context, rc rpc.Context, inst *ovo.Object, address string) error {
	if l.net == nil {
		return errNeutronMissing
	}
	uuid := inst.StringOrEmpty("uuid")
	ports, err := l.net.client.ListPorts(ctx, url.Values{"device_id": {uuid},
		"device_owner": {"compute:" + nullableString(inst, "availability_zone")}, "fixed_ips": {"ip_address=" + address}})
	if err != nil {
		return err
	}
	if len(ports) == 0 {
		return novaError("FixedIpNotFoundForInstance", fmt.Sprintf("Instance %s does not have fixed IP '%s'.", uuid, address), 404,
			map[string]any{"instance_uuid": uuid, "ip": address})
	}
	p := ports[0]
	fixed := make([]any, 0, len(p.FixedIPs))
	for _, ip := range p.FixedIPs {
		if ip.IPAddress != address {
			fixed = append(fixed, map[string]any{"subnet_id": ip.SubnetID, "ip_address": ip.IPAddress})
		}
	}
	if _, err := l.net.client.UpdatePort(ctx, p.ID, map[string]any{"fixed_ips": fixed}); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Str("port", p.ID).Msg("Unable to update port")
	}
	_, err = l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{})
	return err
}
