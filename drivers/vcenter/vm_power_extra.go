package vcenter

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// ErrPoweredOff reports an operation that needs a running VM (suspend)
// asked of a powered-off one; the error also wraps vCenter's
// InvalidPowerState fault.
var ErrPoweredOff = errors.New("the vm is powered off")

// Suspend suspends the VM (SuspendVM_Task), as nova's VMware driver does
// for suspend; a VM that is already suspended counts as success. A VM that
// is powered off cannot be suspended: the error wraps ErrPoweredOff and
// vCenter's InvalidPowerState fault, so callers need not read the power
// state first (nova does, a round trip more). Resume a suspended VM with
// PowerOn.
//
// Cost: 2 SOAP round trips (SuspendVM_Task, usually 1 task poll). Safe for
// concurrent use.
func (s *Session) Suspend(ctx context.Context, vm Ref) error {
	op := "suspend vm " + vm.Value
	err := s.vmTask(ctx, op, func(c *vim25.Client) (types.ManagedObjectReference, error) {
		r, err := methods.SuspendVM_Task(ctx, c, &types.SuspendVM_Task{This: vm.Reference()})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return r.Returnval, nil
	})
	if inPowerState(err, PowerStateSuspended) {
		return nil
	}
	if inPowerState(err, PowerStateOff) {
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrPoweredOff, err)
	}
	return wrapVMErr(op, err)
}
