package vcenter

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VNC extraConfig keys, as nova's VMware driver writes them
// (vm_util.get_vnc_config_spec).
const (
	VNCEnabledKey = "RemoteDisplay.vnc.enabled"
	VNCPortKey    = "RemoteDisplay.vnc.port"
	VNCKeymapKey  = "RemoteDisplay.vnc.keyMap"
)

// ErrVNCPortsExhausted reports that every port of the VNC range is used by
// some VM (nova's ConsolePortRangeExhausted).
var ErrVNCPortsExhausted = errors.New("no free vnc port")

// VNCPortsInUse returns the RemoteDisplay.vnc.port of every VM in vCenter
// (nova's _get_allocated_vnc_ports: the port is unique per vCenter).
//
// Cost: 3 SOAP round trips (CreateContainerView, RetrievePropertiesEx,
// DestroyView) plus 1 per further page. Safe for concurrent use.
func (s *Session) VNCPortsInUse(ctx context.Context) (map[int]Ref, error) {
	const op = "list vnc ports"
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	m := view.NewManager(c)
	v, err := m.CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"config.extraConfig"}, &vms); err != nil {
		return nil, wrapErr(op, err)
	}
	out := map[int]Ref{}
	for _, vm := range vms {
		if vm.Config == nil {
			continue
		}
		for _, o := range vm.Config.ExtraConfig {
			ov := o.GetOptionValue()
			if ov == nil || ov.Key != VNCPortKey {
				continue
			}
			if p, err := strconv.Atoi(fmt.Sprint(ov.Value)); err == nil {
				out[p] = refFrom(vm.Self)
			}
		}
	}
	return out, nil
}

// EnableVNC gives the VM a VNC port unless it has one, as nova's
// _get_and_set_vnc_config does at spawn: the first port of
// [minPort, minPort+total) that no VM of the vCenter uses, set with
// RemoteDisplay.vnc.enabled, .port and .keyMap by a reconfigure. It returns
// the VM's port. A full range fails with ErrVNCPortsExhausted.
//
// Cost: 1 SOAP round trip (the VM's extraConfig) when the VM has a port,
// else 6 (+ the port scan and ReconfigVM_Task with its poll). Allocations in
// this process are serialised.
func (s *Session) EnableVNC(ctx context.Context, vm Ref, minPort, total int, keymap string) (int, error) {
	op := "enable vnc on vm " + vm.Value
	if port, ok, err := s.VNCPort(ctx, vm); err != nil || ok {
		return port, err
	}
	s.vncMu.Lock()
	defer s.vncMu.Unlock()
	used, err := s.VNCPortsInUse(ctx)
	if err != nil {
		return 0, wrapErr(op, err)
	}
	port, err := s.freeVNCPort(used, minPort, total)
	if err != nil {
		return 0, wrapErr(op, err)
	}
	spec := types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
		&types.OptionValue{Key: VNCEnabledKey, Value: "true"},
		&types.OptionValue{Key: VNCPortKey, Value: strconv.Itoa(port)},
		&types.OptionValue{Key: VNCKeymapKey, Value: keymap},
	}}
	if err := s.reconfigure(ctx, op, vm, spec); err != nil {
		return 0, wrapVMErr(op, err)
	}
	s.log.Info().Str("vm", vm.Value).Int("port", port).Msg("enabled vnc")
	return port, nil
}

// freeVNCPort is the first port of [minPort, minPort+total) neither used
// by a VM nor reserved for one being created. The caller holds vncMu.
func (s *Session) freeVNCPort(used map[int]Ref, minPort, total int) (int, error) {
	for p := minPort; p < minPort+total; p++ {
		if _, taken := used[p]; !taken && !s.vncPending[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%w in %d-%d", ErrVNCPortsExhausted, minPort, minPort+total)
}

// ReserveVNCPort picks the VNC port of a VM about to be created, by nova's
// rule (as EnableVNC), and returns the extraConfig that gives it to the VM
// in CreateVM's own spec: nova reconfigures the VM after creating it, a
// task and its poll more. The port stays reserved in this process until
// release is called, once CreateVM has returned (the VM holds the port
// then, or the build failed), so concurrent builds get different ports.
//
// Cost: 3 SOAP round trips (the port scan). Safe for concurrent use.
func (s *Session) ReserveVNCPort(ctx context.Context, minPort, total int, keymap string) (extraConfig map[string]string, release func(), err error) {
	s.vncMu.Lock()
	defer s.vncMu.Unlock()
	used, err := s.VNCPortsInUse(ctx)
	if err != nil {
		return nil, nil, wrapErr("reserve a vnc port", err)
	}
	port, err := s.freeVNCPort(used, minPort, total)
	if err != nil {
		return nil, nil, wrapErr("reserve a vnc port", err)
	}
	if s.vncPending == nil {
		s.vncPending = map[int]bool{}
	}
	s.vncPending[port] = true
	release = func() {
		s.vncMu.Lock()
		delete(s.vncPending, port)
		s.vncMu.Unlock()
	}
	return map[string]string{VNCEnabledKey: "true", VNCPortKey: strconv.Itoa(port), VNCKeymapKey: keymap}, release, nil
}

// VNCPort returns the VM's RemoteDisplay.vnc.port; false when it has none.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) VNCPort(ctx context.Context, vm Ref) (int, bool, error) {
	op := "read vnc port of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return 0, false, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"config.extraConfig"}, &m); err != nil {
		return 0, false, wrapVMErr(op, err)
	}
	if m.Config == nil {
		return 0, false, nil
	}
	for _, o := range m.Config.ExtraConfig {
		if ov := o.GetOptionValue(); ov != nil && ov.Key == VNCPortKey {
			p, err := strconv.Atoi(fmt.Sprint(ov.Value))
			if err != nil {
				return 0, false, wrapErr(op, fmt.Errorf("%w: %s is %q", ErrInvalidArgument, VNCPortKey, fmt.Sprint(ov.Value)))
			}
			return p, true, nil
		}
	}
	return 0, false, nil
}

// HostName returns the name of an ESXi host (the console host of its VMs:
// vCenter runs no VNC proxy, nova's get_host_name_for_vm).
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) HostName(ctx context.Context, host Ref) (string, error) {
	op := "read name of host " + host.Value
	c := s.activeClient()
	if c == nil {
		return "", wrapErr(op, ErrNotLoggedIn)
	}
	var h mo.HostSystem
	if err := s.retrieveOne(ctx, c, host, []string{"name"}, &h); err != nil {
		return "", wrapErr(op, err)
	}
	return h.Name, nil
}

// MKSTicket is a VM's "mks" ticket (VirtualMachineTicket) for a WebMKS
// console.
type MKSTicket struct {
	Ticket  string
	CfgFile string
	Host    string
	Port    int32
	// SSLThumbprint is the host's certificate thumbprint as vCenter gives
	// it (upper case, colon-separated).
	SSLThumbprint string
}

// ErrNotImplemented reports a method the vCenter endpoint does not
// implement (vSphere fault NotImplemented or MethodNotFound; govmomi's
// simulator lacks AcquireTicket).
var ErrNotImplemented = errors.New("not implemented by the vcenter endpoint")

// AcquireMKSTicket acquires the VM's "mks" ticket (AcquireTicket), as
// nova's get_mks_console does. An endpoint that lacks the method fails with
// an error wrapping ErrNotImplemented and the fault.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) AcquireMKSTicket(ctx context.Context, vm Ref) (MKSTicket, error) {
	op := "acquire mks ticket of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return MKSTicket{}, wrapErr(op, ErrNotLoggedIn)
	}
	res, err := methods.AcquireTicket(ctx, c, &types.AcquireTicket{This: vm.Reference(), TicketType: "mks"})
	if err != nil {
		if fault.Is(err, &types.NotImplemented{}) || fault.Is(err, &types.MethodNotFound{}) {
			return MKSTicket{}, fmt.Errorf("vcenter: %s: %w: %w", op, ErrNotImplemented, err)
		}
		return MKSTicket{}, wrapVMErr(op, err)
	}
	t := res.Returnval
	return MKSTicket{Ticket: t.Ticket, CfgFile: t.CfgFile, Host: t.Host, Port: t.Port, SSLThumbprint: t.SslThumbprint}, nil
}

// SetExtraConfig sets config.extraConfig values of the VM by a reconfigure
// (nova's machine.id for inject_network_info, …).
//
// Cost: 2 SOAP round trips (ReconfigVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) SetExtraConfig(ctx context.Context, vm Ref, values map[string]string) error {
	op := "set extraConfig of vm " + vm.Value
	return wrapVMErr(op, s.reconfigure(ctx, op, vm, types.VirtualMachineConfigSpec{ExtraConfig: extraConfig(values)}))
}
