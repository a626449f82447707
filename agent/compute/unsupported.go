package compute

import (
	"context"
	"fmt"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Operations nova's VMware driver does not support. nova-compute still
// runs its decorators around them (the action event, the fault, the task
// state reverted, the exception notifications) and the driver raises
// NotImplementedError; the agent answers the same way, so that the API
// and the user see what they see with the Python service.

// PauseInstance is pause_instance: the VMware driver raises
// NotImplementedError("pause not supported for vmwareapi").
func (l *lifecycle) PauseInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_pause_instance", method: "pause_instance", action: "pause", revertsTaskState: true},
		func(context.Context, *ovo.Object) error {
			return rpc.BuiltinError("NotImplementedError", "pause not supported for vmwareapi")
		})
}

// UnpauseInstance is unpause_instance, unsupported like pause.
func (l *lifecycle) UnpauseInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_unpause_instance", method: "unpause_instance", action: "unpause", revertsTaskState: true},
		func(context.Context, *ovo.Object) error {
			return rpc.BuiltinError("NotImplementedError", "unpause not supported for vmwareapi")
		})
}

// TriggerCrashDump is trigger_crash_dump: the driver has none (the API
// answers 400 from the NotImplementedError). It changes no task state.
func (l *lifecycle) TriggerCrashDump(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_trigger_crash_dump", method: "trigger_crash_dump", action: "trigger_crash_dump"},
		func(context.Context, *ovo.Object) error {
			return rpc.BuiltinError("NotImplementedError", "")
		})
}

// SetAdminPassword is set_admin_password (a call): a server that is not
// running fails with InstancePasswordSetFailed; a running one reaches the
// driver, which has no way to set it (NotImplementedError, which the API
// turns into HTTP 501). Either way task_state updating_password is cleared.
func (l *lifecycle) SetAdminPassword(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_set_admin_password", method: "set_admin_password", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			uuid := inst.StringOrEmpty("uuid")
			vm, err := l.hv.FindVMByInstanceUUID(ctx, uuid)
			running := err == nil && vm.PowerState == vcenter.PowerStateOn
			inst.SetNull("task_state")
			if serr := l.save(ctx, req.Context, inst, "updating_password"); serr != nil {
				return serr
			}
			if !running {
				reason := fmt.Sprintf("instance %s is not running", uuid)
				return &rpc.RemoteError{Class: "InstancePasswordSetFailed", Module: "nova.exception",
					Message: fmt.Sprintf("Failed to set admin password on %s because %s", uuid, reason),
					Kwargs:  map[string]any{"instance": uuid, "reason": reason, "code": 409}}
			}
			return rpc.BuiltinError("NotImplementedError", "set_admin_password is not implemented by this driver or guest instance.")
		})
}
