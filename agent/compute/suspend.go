package compute

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// powerSuspended is nova's power_state SUSPENDED.
const powerSuspended = 7

// suspender is what suspend needs of vCenter beyond the Hypervisor.
type suspender interface {
	Suspend(ctx context.Context, vm vcenter.Ref) error
}

// suspendHV returns the hypervisor's suspend, or an error saying it has
// none.
func (l *lifecycle) suspendHV() (suspender, error) {
	s, ok := l.hv.(suspender)
	if !ok {
		return nil, fmt.Errorf("suspend: the hypervisor (%T) cannot suspend VMs", l.hv)
	}
	return s, nil
}

// errorOut is nova's _error_out_instance_on_exception for errors other
// than NotImplementedError: the instance goes to ERROR (task_state is left
// to reverts_task_state).
func (l *lifecycle) errorOut(ctx context.Context, rc rpc.Context, inst *ovo.Object) {
	inst.SetString("vm_state", "error")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("setting the instance to ERROR failed")
	}
}

func invalidState(class, format, reason string) error {
	return &rpc.RemoteError{Class: class, Module: "nova.exception",
		Message: fmt.Sprintf(format, reason), Kwargs: map[string]any{"reason": reason, "code": 400}}
}

// SuspendInstance is suspend_instance: the VM is suspended in vCenter
// (SuspendVM_Task; a powered-off VM fails with InstanceSuspendFailure, as
// in nova's vmops.suspend), the old vm_state is kept in system_metadata
// for resume, and the instance becomes SUSPENDED with power_state 7. A
// failure leaves the instance in ERROR, as nova's
// _error_out_instance_on_exception does.
func (l *lifecycle) SuspendInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_suspend_instance", method: "suspend_instance", action: "suspend", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			// Only a loaded system_metadata is written back: saving a partial
			// one would delete the other keys.
			if sm, _ := inst.Dict("system_metadata"); sm != nil {
				sm["old_vm_state"] = inst.StringOrEmpty("vm_state")
				if err := inst.Set("system_metadata", sm); err != nil {
					return err
				}
			}
			if err := l.suspendVM(ctx, inst); err != nil {
				l.errorOut(ctx, rc, inst)
				return err
			}
			setStates(inst, "suspended", nil, powerSuspended)
			return l.save(ctx, rc, inst, "suspending")
		})
}

// suspendVM is the VMware driver's suspend. With the watcher's moref the
// VM is suspended straight away: vCenter's InvalidPowerState fault says
// what nova's power-state read would (off: InstanceSuspendFailure; already
// suspended: nothing to do), a round trip less (2 instead of 3).
func (l *lifecycle) suspendVM(ctx context.Context, inst *ovo.Object) error {
	hv, err := l.suspendHV()
	if err != nil {
		return err
	}
	uuid := inst.StringOrEmpty("uuid")
	if ref, ok := l.vms.get(uuid); ok {
		err := suspendRef(ctx, hv, ref)
		if !errors.Is(err, vcenter.ErrNotFound) {
			return err
		}
		l.vms.forget(uuid, ref) // gone behind the watcher's back
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	switch vm.PowerState {
	case vcenter.PowerStateOn:
		return suspendRef(ctx, hv, vm.Ref)
	case vcenter.PowerStateOff:
		return errSuspendOff()
	default: // already suspended
		zerolog.Ctx(ctx).Debug().Msg("VM was already suspended")
		return nil
	}
}

// suspendRef suspends the VM; a powered-off one is nova's
// InstanceSuspendFailure.
func suspendRef(ctx context.Context, hv suspender, vm vcenter.Ref) error {
	err := hv.Suspend(ctx, vm)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vcenter.ErrPoweredOff):
		return errSuspendOff()
	case errors.Is(err, vcenter.ErrNotFound):
		return err
	}
	return fmt.Errorf("suspending the VM: %w", err)
}

func errSuspendOff() error {
	return invalidState("InstanceSuspendFailure", "Failed to suspend instance: %s", "instance is powered off and cannot be suspended.")
}

// ResumeInstance is resume_instance: a suspended VM is powered on again
// (PowerOnVM_Task; a VM that is not suspended fails with
// InstanceResumeFailure, as in nova's vmops.resume) and the instance goes
// back to the vm_state it had before the suspend (ACTIVE by default).
func (l *lifecycle) ResumeInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_resume_instance", method: "resume_instance", action: "resume", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			if err := l.resumeVM(ctx, inst); err != nil {
				l.errorOut(ctx, rc, inst)
				return err
			}
			vmState := "active"
			if sm, _ := inst.Dict("system_metadata"); sm != nil {
				if old, ok := sm["old_vm_state"]; ok {
					if s, _ := old.(string); s != "" {
						vmState = s
					}
					delete(sm, "old_vm_state")
					if err := inst.Set("system_metadata", sm); err != nil {
						return err
					}
				}
			}
			setStates(inst, vmState, nil, powerRunning)
			return l.save(ctx, rc, inst, "resuming")
		})
}

// resumeVM is the VMware driver's resume: the power state read (through
// the watcher's moref, 1 round trip) is kept, because a power on would
// also start a VM that is off, which nova refuses; then PowerOnVM_Task.
func (l *lifecycle) resumeVM(ctx context.Context, inst *ovo.Object) error {
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return err
	}
	if vm.PowerState != vcenter.PowerStateSuspended {
		return invalidState("InstanceResumeFailure", "Failed to resume instance: %s", "instance is not in a suspended state")
	}
	if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
		return fmt.Errorf("resuming the VM: %w", err)
	}
	return nil
}
