package vcenter

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// simTicketer answers VirtualMachine.AcquireTicket, which govmomi's
// simulator does not implement, so that the embedded vCenter serves MKS
// consoles (nova's get_mks_console) as vCenter does: a one-time ticket
// for the VM's host, port 902, with the VM's .vmx as cfgFile. It is an
// extension of the embedded simulator only; a real vCenter answers itself.
//
// vcsim dispatches a call to the calling session's own registry's object
// when there is one (else the shared registry's, which the Handler hook
// cannot override), so the ticketer, embedding the VM (whose other methods
// and properties it thus serves unchanged), is put in the session's
// registry for the one call and removed at its end.
type simTicketer struct {
	*simulator.VirtualMachine
}

// AcquireTicket is dispatched by vcsim by name (see installMKSExtension).
func (t *simTicketer) AcquireTicket(ctx *simulator.Context, req *types.AcquireTicket) soap.HasFault {
	body := &methods.AcquireTicketBody{}
	vm := t.VirtualMachine
	defer ctx.Session.Registry.Remove(ctx, vm.Self)
	if req.TicketType != string(types.VirtualMachineTicketTypeMks) && req.TicketType != string(types.VirtualMachineTicketTypeWebmks) {
		body.Fault_ = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "ticketType"})
		return body
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		body.Fault_ = simulator.Fault("", &types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: vm.Runtime.PowerState})
		return body
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	ticket := types.VirtualMachineTicket{Ticket: hex.EncodeToString(b[:]), Port: 902}
	if vm.Config != nil {
		ticket.CfgFile = vm.Config.Files.VmPathName
	}
	if vm.Runtime.Host != nil {
		if h, ok := ctx.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
			ticket.Host = h.Name
		}
	}
	body.Res = &types.AcquireTicketResponse{Returnval: ticket}
	return body
}

// installMKSExtension routes AcquireTicket on VMs to simTicketer, after the
// registry's existing Handler (the DVS extension) had its say. vcsim
// dispatches a method to the Handler's answer unless the calling session's
// own registry holds the object, which it does not for VMs.
func installMKSExtension(m *simulator.Model) {
	reg := m.Map()
	next := reg.Handler
	reg.Handler = func(ctx *simulator.Context, method *simulator.Method) (mo.Reference, types.BaseMethodFault) {
		if method.This.Type == "VirtualMachine" && method.Name == "AcquireTicket" && ctx.Session != nil {
			if vm, ok := ctx.Map.Get(method.This).(*simulator.VirtualMachine); ok {
				t := &simTicketer{VirtualMachine: vm}
				ctx.Session.Registry.Put(t)
				return t, nil
			}
		}
		if next != nil {
			return next(ctx, method)
		}
		return nil, nil
	}
}
