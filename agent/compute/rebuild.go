package compute

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// supportsEvacuate is the VMware driver's capability "supports_evacuate".
const supportsEvacuate = false

// rebuildArgs are rebuild_instance's arguments the agent uses (new_pass,
// injected_files and the like have no use without a config drive).
type rebuildArgs struct {
	OrigImageRef      string  `json:"orig_image_ref"`
	ImageRef          string  `json:"image_ref"`
	Recreate          bool    `json:"recreate"`
	PreserveEphemeral bool    `json:"preserve_ephemeral"`
	ScheduledNode     *string `json:"scheduled_node"`
	Migration         any     `json:"migration"`
}

// RebuildInstance is rebuild_instance. nova's VMware driver has no rebuild
// of its own, so nova-compute's default one runs: rebuild.start, the
// instance saved as rebuilding with the VM's power state, the VM powered
// off and destroyed, rebuild_block_device_mapping, rebuild_spawning, the
// VM spawned again from the (new) image on the same node, ACTIVE with a
// new launched_at, the schedulers told, rebuild.end. A server that was
// STOPPED is stopped again afterwards, as nova does.
//
// An evacuation (recreate=True) fails as it does with the VMware driver,
// whose capabilities say supports_evacuate=False: the migration is marked
// failed, rebuild.error is sent, and the instance goes to ERROR with
// InstanceEvacuateNotSupported. Any other failure also ends in ERROR with
// rebuild.error, as nova's _error_out_instance_on_exception does.
func (l *lifecycle) RebuildInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a rebuildArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_rebuild_instance", method: "rebuild_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			err := l.rebuild(ctx, rc, inst, a)
			if err == nil {
				return nil
			}
			if errors.Is(err, errInstanceGone) {
				// Deleted while rebuilding: nova only tells rebuild.error.
				l.notify.rebuildAction(ctx, rc, inst, "error", err, nil)
				return nil
			}
			l.failMigration(ctx, rc, a.Migration)
			l.notify.rebuildAction(ctx, rc, inst, "error", err, nil)
			l.errorOut(ctx, rc, inst)
			return err
		})
}

// errInstanceGone marks a save that failed because the instance was
// deleted meanwhile.
var errInstanceGone = errors.New("instance deleted while rebuilding")

// rebuild is nova's _do_rebuild_instance with _rebuild_default_impl.
func (l *lifecycle) rebuild(ctx context.Context, rc rpc.Context, inst *ovo.Object, a rebuildArgs) error {
	log := zerolog.Ctx(ctx)
	if a.Recreate {
		log.Info().Msg("evacuating instance")
		if !supportsEvacuate {
			return &rpc.RemoteError{Class: "InstanceEvacuateNotSupported", Module: "nova.exception",
				Message: "Instance evacuate is not supported.", Kwargs: map[string]any{"code": 400}}
		}
	}
	log.Info().Msg("rebuilding instance")
	origVMState := inst.StringOrEmpty("vm_state")
	node := inst.StringOrEmpty("node")
	if a.ScheduledNode != nil && *a.ScheduledNode != "" {
		node = *a.ScheduledNode
	}
	imageID := a.ImageRef
	if imageID == "" {
		imageID = inst.StringOrEmpty("image_ref")
	}
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	imageName := ""
	if l.images != nil {
		meta, err := l.images.Image(ctx, rc.String("auth_token"), imageID)
		if err != nil {
			return err
		}
		imageName = meta.Name
	}
	extra := map[string]any{"image_name": imageName}
	l.notify.rebuildAction(ctx, rc, inst, "start", nil, extra)

	vm, ferr := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid"))
	power := int64(powerNoState)
	if ferr == nil {
		power = novaPowerState(vm.PowerState)
	}
	setStates(inst, "", str("rebuilding"), power)
	if err := l.saveRebuild(ctx, rc, inst, []any{"rebuilding"}); err != nil {
		return err
	}

	// _rebuild_default_impl.
	if a.PreserveEphemeral {
		return &rpc.RemoteError{Class: "PreserveEphemeralNotSupported", Module: "nova.exception",
			Message: "The current driver does not support preserving ephemeral partitions.", Kwargs: map[string]any{"code": 400}}
	}
	switch {
	case ferr == nil:
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return err
		}
	case !errors.Is(ferr, vcenter.ErrNotFound):
		return ferr
	}
	// detach_block_devices: the volumes' disks leave the VM before it is
	// destroyed with its files (volumes_move.go).
	vols, err := l.vols.rebuildDetachVolumes(ctx, rc, inst)
	if err != nil {
		return err
	}
	if ferr == nil {
		if err := l.hv.Destroy(ctx, vm.Ref); err != nil {
			return err
		}
	}
	inst.SetString("task_state", "rebuild_block_device_mapping")
	if err := l.saveRebuild(ctx, rc, inst, []any{"rebuilding"}); err != nil {
		return err
	}
	bvols, err := l.vols.prepVolumes(ctx, rc, inst, vols) // _prep_block_device
	if err != nil {
		return err
	}
	inst.SetString("task_state", "rebuild_spawning")
	if err := l.saveRebuild(ctx, rc, inst, []any{"rebuild_block_device_mapping"}); err != nil {
		return err
	}
	if err := l.spawnVolumes(ctx, rc, inst, node, map[string]any{"id": imageID}, bvols); err != nil {
		return err
	}

	// _update_instance_after_spawn.
	setStates(inst, "active", nil, powerRunning)
	inst.SetDateTime("launched_at", time.Now().UTC())
	if err := l.saveRebuild(ctx, rc, inst, []any{"rebuild_spawning"}); err != nil {
		return err
	}
	if origVMState == "stopped" {
		log.Info().Msg("bringing the VM to its original state: stopped")
		if err := l.stopAfterRebuild(ctx, rc, inst); err != nil {
			return err
		}
	}
	l.updateSchedulerInstanceInfo(ctx, rc, inst)
	l.notify.rebuildAction(ctx, rc, inst, "end", nil, extra)

	// The resource tracker's finish_evacuation: host and node, then the
	// migration context dropped.
	inst.SetString("host", l.host)
	inst.SetString("node", node)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	if _, err := l.cond.ObjectAction(ctx, rc, inst, "drop_migration_context", nil, nil); err != nil {
		log.Warn().Err(err).Msg("dropping the migration context failed")
	}
	return nil
}

// saveRebuild saves with expected_task_state; an instance deleted meanwhile
// (InstanceNotFound, UnexpectedDeletingTaskStateError) ends the rebuild.
func (l *lifecycle) saveRebuild(ctx context.Context, rc rpc.Context, inst *ovo.Object, expected any) error {
	err := l.save(ctx, rc, inst, expected)
	var re *rpc.RemoteError
	if errors.As(err, &re) && (re.Class == "InstanceNotFound" || re.Class == "UnexpectedDeletingTaskStateError") {
		return errors.Join(errInstanceGone, err)
	}
	return err
}

// stopAfterRebuild is what nova does for a server rebuilt while STOPPED:
// ACTIVE with task powering-off saved, then stop_instance (its own action
// event and power_off notifications).
func (l *lifecycle) stopAfterRebuild(ctx context.Context, rc rpc.Context, inst *ovo.Object) error {
	setStates(inst, "active", str("powering-off"), -1)
	inst.SetInt("progress", 0)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	uuid := inst.StringOrEmpty("uuid")
	if err := l.eventStart(ctx, rc, uuid, "compute_stop_instance"); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "power_off", "power_off", "start", nil, nil)
	err := func() error {
		vm, err := l.vmOf(ctx, inst)
		if err != nil {
			return err
		}
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return err
		}
		setStates(inst, "stopped", nil, powerShutdown)
		return l.save(ctx, rc, inst, "powering-off")
	}()
	if err == nil {
		l.notify.instanceAction(ctx, rc, inst, "power_off", "power_off", "end", nil, nil)
	}
	l.eventFinish(ctx, rc, uuid, "compute_stop_instance", err)
	return err
}

// requireFlavor loads the instance's flavor when the request did not
// carry it: the spawn needs it whether or not notifications are sent.
func (l *lifecycle) requireFlavor(ctx context.Context, rc rpc.Context, inst *ovo.Object) error {
	if inst.Has("flavor") {
		return nil
	}
	res, err := l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{inst.StringOrEmpty("uuid")},
		map[string]any{"expected_attrs": []any{"flavor"}})
	if err != nil {
		return err
	}
	if fresh, ok := res.(*ovo.Object); ok {
		if f, ok := fresh.Get("flavor"); ok {
			inst.Fields["flavor"] = f
			return nil
		}
	}
	return errors.New("the instance has no flavor")
}

// failMigration is nova's _set_migration_status(migration, "failed").
func (l *lifecycle) failMigration(ctx context.Context, rc rpc.Context, raw any) {
	if raw == nil {
		return
	}
	mig, err := ovo.NovaCodec().Decode(raw)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("decoding the migration failed")
		return
	}
	mig.SetString("status", "failed")
	if _, err := l.cond.ObjectAction(ctx, rc, mig, "save", nil, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("marking the migration failed failed")
	}
}

// rebuildAction sends rebuild.<phase>: legacy compute.instance.rebuild.*
// (with extra, and the fault for "error") and versioned instance.rebuild.*
// with nova's InstanceActionRebuildPayload 1.9.
func (n *notifier) rebuildAction(ctx context.Context, rc rpc.Context, inst *ovo.Object, phase string, cause error, extra map[string]any) {
	if n == nil {
		return
	}
	priority := rpc.PriorityInfo
	if cause != nil {
		priority = rpc.PriorityError
	}
	if n.legacy != nil {
		p := n.legacyPayload(inst, extra)
		if cause != nil {
			code, msg := faultCodeAndMessage(cause)
			p["exception"] = exceptionRepr(cause)
			p["message"] = msg
			p["code"] = code
		}
		n.send(ctx, n.legacy, rc, priority, "compute.instance.rebuild."+phase, p)
	}
	if n.versioned != nil {
		p := n.instancePayload(rc, inst)
		p["fault"] = nil
		if cause != nil {
			p["fault"] = exceptionPayload(cause, "rebuild")
		}
		p["trusted_image_certificates"] = nil
		n.send(ctx, n.versioned, rc, priority, "instance.rebuild."+phase, versionedObject("InstanceActionRebuildPayload", "1.9", p))
	}
}
