package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// The rest of compute RPC 6.x: diagnostics, external instance events, the
// host operations, and what nova-compute with the VMware driver answers
// for the operations the driver lacks.

// diagHypervisor reads a VM's quick stats (*vcenter.Session has it).
type diagHypervisor interface {
	VMDiagnostics(ctx context.Context, vm vcenter.Ref) (map[string]any, error)
}

// extraConfigHypervisor writes a VM's extraConfig (*vcenter.Session has it).
type extraConfigHypervisor interface {
	SetExtraConfig(ctx context.Context, vm vcenter.Ref, values map[string]string) error
}

// powerStateNames is nova's power_state.STATE_MAP.
var powerStateNames = map[int64]string{0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"} //nolint:gochecknoglobals // a table

// vmPowerStates is the VMware driver's constants.POWER_STATES.
var vmPowerStates = map[string]int64{vcenter.PowerStateOn: powerRunning, vcenter.PowerStateOff: powerShutdown, vcenter.PowerStateSuspended: 7} //nolint:gochecknoglobals // a table

// diagnostics is nova's _get_power_state check and the VMware driver's
// _get_diagnostics: the VM's summary as a flat map, only while it runs.
// The summary read carries the power state (summary.runtime.powerState),
// so one read answers both (nova reads twice).
func (l *lifecycle) diagnostics(ctx context.Context, inst *ovo.Object) (map[string]any, error) {
	hv, ok := l.hv.(diagHypervisor)
	if !ok {
		return nil, rpc.BuiltinError("NotImplementedError", "")
	}
	var d map[string]any
	err := l.withVM(ctx, inst, func(vm vcenter.Ref) error {
		var err error
		d, err = hv.VMDiagnostics(ctx, vm)
		return err
	})
	power := int64(powerNoState)
	switch {
	case err == nil:
		s, _ := d["powerState"].(string)
		power = vmPowerStates[s]
	case !errors.Is(err, vcenter.ErrNotFound) && !isRemote(err, "InstanceNotFound"):
		return nil, vimFault(err)
	}
	if power != powerRunning {
		uuid := inst.StringOrEmpty("uuid")
		state := powerStateNames[intOr(inst, "power_state", 0)]
		return nil, novaError("InstanceInvalidState",
			fmt.Sprintf("Instance %s in power state %s. Cannot get_diagnostics while the instance is in this state.", uuid, state), 400,
			map[string]any{"attr": "power state", "instance_uuid": uuid, "state": state, "method": "get_diagnostics"})
	}
	return d, nil
}

// GetDiagnostics is get_diagnostics (a call, API microversions < 2.48):
// the VMware driver's quick stats with keys "vmware:<property>".
func (l *lifecycle) GetDiagnostics(ctx context.Context, req *rpc.Request) (any, error) {
	return l.instanceCall(ctx, req, "get_diagnostics", func(ctx context.Context, inst *ovo.Object) (any, error) {
		d, err := l.diagnostics(ctx, inst)
		if err != nil {
			return nil, err
		}
		out := make(map[string]any, len(d))
		for k, v := range d {
			out["vmware:"+k] = v
		}
		return out, nil
	})
}

// GetInstanceDiagnostics is get_instance_diagnostics (a call, 2.48+): a
// Diagnostics object as the VMware driver fills it (state, uptime, memory;
// no CPU, NIC or disk details).
func (l *lifecycle) GetInstanceDiagnostics(ctx context.Context, req *rpc.Request) (any, error) {
	return l.instanceCall(ctx, req, "get_instance_diagnostics", func(ctx context.Context, inst *ovo.Object) (any, error) {
		d, err := l.diagnostics(ctx, inst)
		if err != nil {
			return nil, err
		}
		num := func(k string) int64 {
			switch v := d[k].(type) {
			case int64:
				return v
			case uint64:
				return int64(v)
			}
			return 0
		}
		reg := l.cond.registry
		ver := func(name string) string { v, _ := reg.Version(name); return v }
		diag := ovo.New("Diagnostics", ver("Diagnostics"))
		if s, ok := d["powerState"].(string); ok && s != "" {
			diag.SetString("state", powerStateNames[vmPowerStates[s]])
		} else {
			diag.SetNull("state")
		}
		diag.SetString("driver", "vmwareapi")
		diag.SetBool("config_drive", configDriveRequired(inst))
		diag.SetString("hypervisor_os", "esxi")
		diag.SetInt("uptime", num("uptimeSeconds"))
		diag.SetObjects("cpu_details", nil)
		diag.SetObjects("nic_details", nil)
		diag.SetObjects("disk_details", nil)
		diag.SetInt("num_cpus", 0)
		diag.SetInt("num_nics", 0)
		diag.SetInt("num_disks", 0)
		mem := ovo.New("MemoryDiagnostics", ver("MemoryDiagnostics"))
		mem.SetInt("maximum", num("memorySizeMB"))
		mem.SetInt("used", num("guestMemoryUsage"))
		diag.SetObject("memory_details", mem)
		return ovo.NovaCodec().EncodeEntity(diag)
	})
}

// configDriveRequired is nova's configdrive.required_by for the agent's
// settings (force_config_drive off): the instance asks for one, or its
// image makes it mandatory.
func configDriveRequired(inst *ovo.Object) bool {
	if cd := inst.StringOrEmpty("config_drive"); cd != "" && cd != "False" && cd != "false" {
		return true
	}
	return stringDict(inst, "system_metadata")["image_img_config_drive"] == "mandatory"
}

// externalEvent is an InstanceExternalEvent.
type externalEvent struct {
	uuid, name, status, tag string
}

// ExternalInstanceEvent is external_instance_event (a cast from nova-api's
// os-server-external-events, one per host), handled event by event as
// nova-compute does when no operation waits for it (the VMware driver
// waits for none): network-changed refreshes the instance's network info
// cache; network-vif-deleted drops the port from it; volume-extended and
// power-update run nova's extend_volume and power_update; the others
// (network-vif-plugged, network-vif-unplugged, accelerator-request-bound,
// volume-reimaged) are logged and dropped: no bus traffic.
func (l *lifecycle) ExternalInstanceEvent(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Instances []any `json:"instances"`
		Events    []any `json:"events"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	codec := ovo.NovaCodec()
	insts := map[string]*ovo.Object{}
	for _, v := range a.Instances {
		inst, err := codec.Decode(v)
		if err != nil {
			return nil, rpc.BuiltinError("ValueError", "instances argument: "+err.Error())
		}
		insts[inst.StringOrEmpty("uuid")] = inst
	}
	for _, v := range a.Events {
		o, err := codec.Decode(v)
		if err != nil {
			return nil, rpc.BuiltinError("ValueError", "events argument: "+err.Error())
		}
		ev := externalEvent{uuid: o.StringOrEmpty("instance_uuid"), name: o.StringOrEmpty("name"), status: o.StringOrEmpty("status"), tag: o.StringOrEmpty("tag")}
		inst := insts[ev.uuid]
		if inst == nil {
			// nova's [inst for inst in instances if ...][0] raises IndexError.
			err := rpc.BuiltinError("IndexError", "list index out of range")
			l.notify.exception(ctx, req.Context, "external_instance_event", map[string]any{"instances": a.Instances, "events": a.Events}, err)
			return nil, err
		}
		key := ev.name
		if ev.tag != "" {
			key += "-" + ev.tag
		}
		log := zerolog.Ctx(ctx).With().Str("instance_uuid", ev.uuid).Str("event", key).Logger()
		ectx := log.WithContext(ctx)
		log.Debug().Msg("Received event")
		if ev.name == "network-vif-plugged" && l.events.deliver(ev.uuid, key) {
			log.Debug().Msg("event delivered to the build waiting for it")
			continue
		}
		switch ev.name {
		case "network-changed":
			l.networkChanged(ectx, req.Context, inst, ev.tag)
		case "network-vif-deleted":
			l.vifDeleted(ectx, req.Context, inst, ev.tag)
		case "volume-extended":
			if err := l.extendVolume(ectx, req, inst, ev.tag); err != nil {
				l.notify.exception(ctx, req.Context, "external_instance_event", map[string]any{"instances": a.Instances, "events": a.Events}, err)
				return nil, err
			}
		case "power-update":
			if err := l.powerUpdate(ectx, req, inst, ev.tag); err != nil {
				l.notify.exception(ctx, req.Context, "external_instance_event", map[string]any{"instances": a.Instances, "events": a.Events}, err)
				return nil, err
			}
		default:
			if ev.name == "network-vif-unplugged" && slices.Contains([]string{"deleting", "migrating"}, inst.StringOrEmpty("task_state")) {
				log.Debug().Msg("Received event for instance being deleted or migrated")
			} else {
				log.Warn().Str("vm_state", inst.StringOrEmpty("vm_state")).Str("task_state", inst.StringOrEmpty("task_state")).
					Msg("Received unexpected event")
			}
		}
	}
	return nil, nil
}

// refreshInfoCache is the network API's get_instance_nw_info followed by
// update_instance_cache_with_nw_info: InstanceInfoCache.save with the
// instance's network info: vifs when given, else rebuilt from neutron
// (getInstanceNWInfo, network.go); without neutron, the cache's own
// (servers without ports: "[]").
func (l *lifecycle) refreshInfoCache(ctx context.Context, rc rpc.Context, inst *ovo.Object, vifs []any) {
	if vifs == nil && l.net != nil {
		// get_instance_nw_info: rebuilt from neutron (network.go).
		if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{}); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("refreshing the network info cache failed")
		}
		return
	}
	nw := "[]"
	if cache, err := inst.Object("info_cache"); err == nil && cache != nil {
		if s := cache.StringOrEmpty("network_info"); s != "" {
			nw = s
		}
	}
	if vifs != nil {
		b, _ := json.Marshal(vifs)
		nw = string(b)
	}
	ic := ovo.New("InstanceInfoCache", l.cond.version("InstanceInfoCache"))
	ic.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	ic.SetString("network_info", nw)
	if _, err := l.cond.ObjectAction(ctx, rc, ic, "save", nil, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("refreshing the network info cache failed")
	}
}

// networkInfo returns the instance's cached network_info as a list.
func networkInfo(inst *ovo.Object) []any {
	var vifs []any
	if cache, err := inst.Object("info_cache"); err == nil && cache != nil {
		_ = json.Unmarshal([]byte(cache.StringOrEmpty("network_info")), &vifs)
	}
	return vifs
}

// vifDeleted is _process_instance_vif_deleted_event: a port neutron deleted
// leaves the info cache, and its card the VM (the VMware driver's
// detach_interface, interfaces.go).
func (l *lifecycle) vifDeleted(ctx context.Context, rc rpc.Context, inst *ovo.Object, port string) {
	vifs := networkInfo(inst)
	for i, v := range vifs {
		if m, ok := v.(map[string]any); ok && m["id"] == port {
			zerolog.Ctx(ctx).Info().Str("port", port).Msg("Neutron deleted interface; detaching it from the instance and deleting it from the info cache")
			l.refreshInfoCache(ctx, rc, inst, append(vifs[:i:i], vifs[i+1:]...))
			if l.net != nil {
				if err := l.unplugNIC(ctx, inst, m); err != nil {
					zerolog.Ctx(ctx).Warn().Err(err).Str("port", port).Msg("Detach interface failed")
				}
			}
			return
		}
	}
}

// extendVolume is nova's extend_volume for a volume-extended event: the
// action event, the volume's BDM (none: a warning and done), and the
// VMware driver's ExtendVolumeNotSupported for an attached volume.
func (l *lifecycle) extendVolume(ctx context.Context, req *rpc.Request, inst *ovo.Object, volumeID string) error {
	return l.eventOperation(ctx, req, inst, "compute_extend_volume", false, func(ctx context.Context) error {
		_, err := l.cond.ClassAction(ctx, req.Context, "BlockDeviceMapping", "get_by_volume_and_instance", []any{volumeID, inst.StringOrEmpty("uuid")}, nil)
		if err != nil {
			var re *rpc.RemoteError
			if errors.As(err, &re) && strings.HasSuffix(re.Class, "NotFound") {
				zerolog.Ctx(ctx).Warn().Str("volume_id", volumeID).Msg("Extend volume failed, volume is not attached to instance.")
				return nil
			}
			return err
		}
		return novaError("ExtendVolumeNotSupported", "Volume size extension is not supported by the hypervisor.", 400, nil)
	})
}

// powerUpdate is nova's power_update for a power-update event (POWER_ON or
// POWER_OFF): a no-op unless the instance is settled in the opposite
// state; otherwise the task state and the start notifications, then the
// VMware driver's power_update_event, which it does not implement.
func (l *lifecycle) powerUpdate(ctx context.Context, req *rpc.Request, inst *ovo.Object, target string) error {
	err := l.eventOperation(ctx, req, inst, "compute_power_update", true, func(ctx context.Context) error {
		rc := req.Context
		t, ok := inst.Get("task_state")
		vm, power := inst.StringOrEmpty("vm_state"), intOr(inst, "power_state", -1)
		valid := ok && t == nil &&
			(target == "POWER_ON" && vm == "stopped" && power == powerShutdown || target == "POWER_OFF" && vm == "active" && power == powerRunning)
		if !valid {
			zerolog.Ctx(ctx).Info().Str("target", target).Msg("The power-update event is a no-op for the instance's state")
			return nil
		}
		action, task := "power_on", "powering-on"
		if target != "POWER_ON" {
			action, task = "power_off", "powering-off"
			inst.SetInt("progress", 0)
		}
		inst.SetString("task_state", task)
		if err := l.save(ctx, rc, inst, []any{nil}); err != nil {
			var re *rpc.RemoteError
			if errors.As(err, &re) && re.Class == "UnexpectedTaskStateError" {
				zerolog.Ctx(ctx).Info().Err(err).Msg("The power-update event was possibly preempted")
				return nil
			}
			return err
		}
		l.loadFlavor(ctx, rc, inst)
		l.notify.instanceAction(ctx, rc, inst, action, action, "start", nil, nil)
		return rpc.BuiltinError("NotImplementedError", "")
	})
	if err != nil {
		l.notify.exception(ctx, req.Context, "power_update", map[string]any{"instance": instanceFields(inst), "target_power_state": target}, err)
	}
	return err
}

// instanceFields is the instance as wrap_exception's arguments carry it.
func instanceFields(inst *ovo.Object) any {
	enc, err := ovo.NovaCodec().Encode(inst)
	if err != nil {
		return nil
	}
	return enc["nova_object.data"]
}

// eventOperation runs body as @wrap_instance_event(prefix='compute')
// @wrap_instance_fault (and @reverts_task_state when reverts) on an
// instance given in another argument than "instance".
func (l *lifecycle) eventOperation(ctx context.Context, req *rpc.Request, inst *ovo.Object, event string, reverts bool, body func(ctx context.Context) error) error {
	uuid := inst.StringOrEmpty("uuid")
	unlock := l.locks.lock(uuid)
	defer unlock()
	rc := req.Context
	if err := l.eventStart(ctx, rc, uuid, event); err != nil {
		return err
	}
	err := body(ctx)
	if err != nil {
		l.recordCodedFault(ctx, rc, inst, err)
	}
	l.eventFinish(ctx, rc, uuid, event, err)
	if err != nil && reverts {
		l.revertTask(ctx, rc, inst)
	}
	return err
}

// hostCall runs body as nova's @wrap_exception methods without an
// instance: a failure sends the exception notifications and is the reply.
func (l *lifecycle) hostCall(ctx context.Context, req *rpc.Request, method string, body func() (any, error)) (any, error) {
	res, err := body()
	if err != nil {
		var args map[string]any
		_ = req.DecodeArgs(&args)
		if args == nil {
			args = map[string]any{}
		}
		l.notify.exception(ctx, req.Context, method, args, err)
	}
	return res, err
}

// notImplemented answers as a @wrap_exception method whose VMware driver
// call raises NotImplementedError() (host_power_action,
// host_maintenance_mode, check_instance_shared_storage).
func (l *lifecycle) notImplemented(method string) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		return l.hostCall(ctx, req, method, func() (any, error) {
			return nil, rpc.BuiltinError("NotImplementedError", "")
		})
	}
}

// HostPowerAction is host_power_action: the VMware driver raises
// NotImplementedError (the API answers 501).
func (l *lifecycle) HostPowerAction(ctx context.Context, req *rpc.Request) (any, error) {
	return l.notImplemented("host_power_action")(ctx, req)
}

// HostMaintenanceMode is host_maintenance_mode: NotImplementedError, as
// HostPowerAction.
func (l *lifecycle) HostMaintenanceMode(ctx context.Context, req *rpc.Request) (any, error) {
	return l.notImplemented("host_maintenance_mode")(ctx, req)
}

// CheckInstanceSharedStorage is check_instance_shared_storage: the VMware
// driver has no check_instance_shared_storage_remote (NotImplementedError).
func (l *lifecycle) CheckInstanceSharedStorage(ctx context.Context, req *rpc.Request) (any, error) {
	return l.notImplemented("check_instance_shared_storage")(ctx, req)
}

// GetHostUptimeNotified is get_host_uptime with nova's @wrap_exception
// notifications around GetHostUptime's NotImplementedError.
func (l *lifecycle) GetHostUptimeNotified(ctx context.Context, req *rpc.Request) (any, error) {
	return l.hostCall(ctx, req, "get_host_uptime", func() (any, error) { return GetHostUptime(ctx, req) })
}

// statusDisabledTrait is the trait nova puts on a disabled compute's
// providers.
const statusDisabledTrait = "COMPUTE_STATUS_DISABLED"

// SetHostEnabled is set_host_enabled (os-services enable/disable): the
// COMPUTE_STATUS_DISABLED trait of every node's placement provider follows
// the service, and since the VMware driver has no set_host_enabled, the
// reply is "enabled" or "disabled".
func (l *lifecycle) SetHostEnabled(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Enabled bool `json:"enabled"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.hostCall(ctx, req, "set_host_enabled", func() (any, error) {
		if err := l.updateProviderStatus(ctx, req.Context, a.Enabled); err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Msg("An error occurred while updating COMPUTE_STATUS_DISABLED trait on compute node resource providers")
		}
		if a.Enabled {
			return "enabled", nil
		}
		return "disabled", nil
	})
}

// updateProviderStatus is _update_compute_provider_status.
func (l *lifecycle) updateProviderStatus(ctx context.Context, rc rpc.Context, enabled bool) error {
	if l.pl == nil {
		return nil
	}
	v, err := l.cond.ClassAction(ctx, rc, "ComputeNodeList", "get_all_by_host", []any{l.host}, nil)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Unable to add/remove trait COMPUTE_STATUS_DISABLED. No ComputeNode(s) found for host")
		return nil
	}
	list, _ := v.(*ovo.Object)
	if list == nil {
		return nil
	}
	nodes, _ := list.Items()
	var errs []error
	for _, n := range nodes {
		uuid := n.StringOrEmpty("uuid")
		traits, err := l.pl.Traits(ctx, uuid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		has := slices.Contains(traits, statusDisabledTrait)
		switch {
		case enabled && has:
			traits = slices.DeleteFunc(traits, func(t string) bool { return t == statusDisabledTrait })
		case !enabled && !has:
			traits = append(traits, statusDisabledTrait)
		default:
			continue
		}
		if err := l.pl.SetTraits(ctx, uuid, traits); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// InjectNetworkInfo is inject_network_info (a cast, @wrap_instance_fault):
// the network info refreshed into the cache, then the VMware driver's
// inject_network_info: the VM's machine.id extraConfig set from it for
// the guest tools.
func (l *lifecycle) InjectNetworkInfo(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := l.instanceArg(req)
	if err != nil {
		return nil, err
	}
	rc := req.Context
	l.refreshInfoCache(ctx, rc, inst, nil)
	err = func() error {
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
	}()
	if err != nil {
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Class != "InstanceNotFound" {
			l.recordCodedFault(ctx, rc, inst, err)
		}
	}
	return nil, err
}

// machineID is vmops._get_machine_id_str: per vif
// "mac;ip;netmask;gateway;broadcast;dns#" from its first IPv4 subnet.
func machineID(vifs []any) string {
	var b strings.Builder
	for _, v := range vifs {
		vif, _ := v.(map[string]any)
		network, _ := vif["network"].(map[string]any)
		subnets, _ := network["subnets"].([]any)
		var ip, mask, gw, bcast, dns string
		for _, s := range subnets {
			sub, _ := s.(map[string]any)
			if fmt.Sprint(sub["version"]) != "4" {
				continue
			}
			if ips, _ := sub["ips"].([]any); len(ips) > 0 {
				first, _ := ips[0].(map[string]any)
				ip, _ = first["address"].(string)
			}
			if d, _ := sub["dns"].([]any); len(d) > 0 {
				first, _ := d[0].(map[string]any)
				dns, _ = first["address"].(string)
			}
			if cidr, _ := sub["cidr"].(string); cidr != "" {
				if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Is4() {
					m := uint32(0xffffffff) << (32 - p.Bits())
					if p.Bits() == 0 {
						m = 0
					}
					a4 := p.Masked().Addr().As4()
					base := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
					mask = u32addr(m)
					bcast = u32addr(base | ^m)
				}
			}
			if g, _ := sub["gateway"].(map[string]any); g != nil {
				gw, _ = g["address"].(string)
			}
			break
		}
		mac, _ := vif["address"].(string)
		b.WriteString(strings.Join([]string{mac, ip, mask, gw, bcast, dns}, ";") + "#")
	}
	return b.String()
}

func u32addr(v uint32) string {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// CacheImages is cache_images (a call from conductor, os-aggregates
// cache-images): the VMware driver has no cache_image, so every image is
// "unsupported".
func (l *lifecycle) CacheImages(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		ImageIDs []string `json:"image_ids"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, id := range a.ImageIDs {
		out[id] = "unsupported"
	}
	zerolog.Ctx(ctx).Warn().Msg("Virt driver does not support image pre-caching; ignoring request")
	return out, nil
}

// driverNotImplemented answers an instance method of nova's that only
// carries @wrap_exception and whose VMware driver call raises
// NotImplementedError (quiesce_instance, unquiesce_instance,
// volume_snapshot_create, volume_snapshot_delete).
func (l *lifecycle) driverNotImplemented(method string) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		inst, err := l.instanceArg(req)
		if err != nil {
			return nil, err
		}
		nerr := rpc.BuiltinError("NotImplementedError", "")
		l.notify.exception(ctx, req.Context, method, l.exceptionArgs(req, inst), nerr)
		return nil, nerr
	}
}

// LiveMigrationForceComplete is live_migration_force_complete: the action
// event, the start notifications, and the VMware driver's
// NotImplementedError with the fault and the error notifications.
func (l *lifecycle) LiveMigrationForceComplete(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_live_migration_force_complete", method: "live_migration_force_complete"},
		func(ctx context.Context, inst *ovo.Object) error {
			l.notify.instanceAction(ctx, req.Context, inst, "live.migration.force.complete", "live_migration_force_complete", "start", nil, nil)
			return rpc.BuiltinError("NotImplementedError", "")
		})
}

// LiveMigrationAbort is live_migration_abort (a cast; @wrap_exception,
// @wrap_instance_event, @wrap_instance_fault, and no instance lock, so
// that it runs beside the migration): live.migration.abort.start, then,
// since the agent queues no live migration (nova's
// _waiting_live_migrations is empty once _do_live_migration started), the
// migration is read: one that is not running is InvalidMigrationState;
// a running one reaches the VMware driver, which has no
// live_migration_abort (NotImplementedError).
func (l *lifecycle) LiveMigrationAbort(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		MigrationID int64 `json:"migration_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	inst, err := l.instanceArg(req)
	if err != nil {
		return nil, err
	}
	uuid := inst.StringOrEmpty("uuid")
	ctx = zerolog.Ctx(ctx).With().Str("instance_uuid", uuid).Logger().WithContext(ctx)
	rc := req.Context
	const event = "compute_live_migration_abort"
	if err := l.eventStart(ctx, rc, uuid, event); err != nil {
		return nil, err
	}
	err = func() error {
		l.loadFlavor(ctx, rc, inst)
		l.notify.instanceAction(ctx, rc, inst, "live.migration.abort", "live_migration_abort", "start", nil, nil)
		v, err := l.cond.ClassAction(ctx, rc, "Migration", "get_by_id", []any{a.MigrationID}, nil)
		if err != nil {
			return err
		}
		status := "None"
		if mig, ok := v.(*ovo.Object); ok && mig != nil {
			status = nullableString(mig, "status")
		}
		if status != "running" {
			return novaError("InvalidMigrationState", fmt.Sprintf("Migration %d state of instance %s is %s. Cannot abort live migration while the migration is in this state.", a.MigrationID, uuid, status), 400,
				map[string]any{"migration_id": a.MigrationID, "instance_uuid": uuid, "state": status, "method": "abort live migration"})
		}
		return rpc.BuiltinError("NotImplementedError", "")
	}()
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("live_migration_abort failed")
		if !isRemote(err, "InstanceNotFound") {
			l.recordCodedFault(ctx, rc, inst, err)
		}
	}
	l.eventFinish(ctx, rc, uuid, event, err)
	if err != nil {
		l.notify.exception(ctx, rc, "live_migration_abort", l.exceptionArgs(req, inst), err)
		return nil, err
	}
	l.notify.instanceAction(ctx, rc, inst, "live.migration.abort", "live_migration_abort", "end", nil, nil)
	return nil, nil
}

// vmPowerState is nova's _get_power_state: the VM's power state, NOSTATE
// when it is gone.
func (l *lifecycle) vmPowerState(ctx context.Context, inst *ovo.Object) int64 {
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return powerNoState
	}
	return vmPowerStates[vm.PowerState]
}

// SoftDeleteInstance is soft_delete_instance (API with
// reclaim_instance_interval > 0): the VMware driver has no soft_delete, so
// nova powers the VM off; the instance becomes SOFT_DELETED, between
// soft_delete.start and .end (sent even on failure, as nova's
// notify_about_instance_delete does).
func (l *lifecycle) SoftDeleteInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_soft_delete_instance", method: "soft_delete_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			l.notify.instanceAction(ctx, rc, inst, "soft_delete", "soft_delete", "start", nil, nil)
			defer l.notify.instanceAction(ctx, rc, inst, "soft_delete", "soft_delete", "end", nil, nil)
			vm, err := l.vmRead(ctx, inst)
			if err != nil {
				return err
			}
			if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
				return vimFault(err)
			}
			// Powered off: SHUTDOWN, as nova's _get_power_state would read.
			setStates(inst, "soft-delete", nil, powerShutdown)
			return l.save(ctx, rc, inst, []any{"soft-deleting"})
		})
}

// RestoreInstance is restore_instance: the VMware driver has no restore,
// so nova powers the VM on; the instance is ACTIVE again.
func (l *lifecycle) RestoreInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_restore_instance", method: "restore_instance", action: "restore", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			vm, err := l.vmRead(ctx, inst)
			if err != nil {
				return err
			}
			if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
				return vimFault(err)
			}
			// Powered on: RUNNING, as nova's _get_power_state would read.
			setStates(inst, "active", nil, powerRunning)
			return l.save(ctx, req.Context, inst, "restoring")
		})
}
