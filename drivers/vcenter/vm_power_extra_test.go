package vcenter

import (
	"errors"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/types"
)

func TestSuspendAndResume(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm := e.create(t, "7a3f5f0e-0d3c-4a4e-9d43-3f1c8d7f0b01")

	// A powered-off VM cannot be suspended: vCenter's fault comes back.
	err := e.s.Suspend(ctx, vm.Ref)
	if !fault.Is(err, &types.InvalidPowerState{}) || !errors.Is(err, ErrPoweredOff) {
		t.Errorf("Suspend of a powered-off vm: %v, want ErrPoweredOff and InvalidPowerState", err)
	}

	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	d := vmMeasure(t, e.s, "Suspend", func() error { return e.s.Suspend(ctx, vm.Ref) })
	if d["SuspendVM_Task"] != 1 {
		t.Errorf("Suspend calls = %v, want one SuspendVM_Task", d)
	}
	if got, err := e.s.GetVM(ctx, vm.Ref); err != nil || got.PowerState != PowerStateSuspended {
		t.Errorf("after Suspend: %q, %v", got.PowerState, err)
	}
	// Suspending a suspended VM succeeds.
	if err := e.s.Suspend(ctx, vm.Ref); err != nil {
		t.Errorf("second Suspend: %v", err)
	}
	// Resume is a power on.
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	if got, err := e.s.GetVM(ctx, vm.Ref); err != nil || got.PowerState != PowerStateOn {
		t.Errorf("after resume: %q, %v", got.PowerState, err)
	}

	// A VM that is gone: ErrNotFound.
	if err := e.s.Destroy(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Suspend(ctx, vm.Ref); err == nil || !isGone(err) {
		t.Errorf("Suspend of a destroyed vm: %v, want ErrNotFound", err)
	}
}
