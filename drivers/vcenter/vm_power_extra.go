package vcenter

import (
	"context"

	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// Suspend suspends the VM (SuspendVM_Task), as nova's VMware driver does
// for suspend; a VM that is already suspended counts as success. A VM that
// is powered off cannot be suspended: vCenter's InvalidPowerState fault is
// returned (callers check the power state first, as nova does). Resume a
// suspended VM with PowerOn.
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
	return wrapVMErr(op, err)
}
