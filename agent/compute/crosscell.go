package compute

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Cross-cell (snapshot-based) resize, which conductor's
// cross_cell_migrate.py runs when a resize or cold migration leaves the
// cell: prep_snapshot_based_resize_at_dest (the claim, the
// MigrationContext back), prep_snapshot_based_resize_at_source (power off,
// the root disk snapshotted to the image conductor made),
// finish_snapshot_based_resize_at_dest (the VM spawned from the snapshot
// with the new flavor, RESIZED); then confirm_snapshot_based_resize_at_source
// (the source VM destroyed), or revert_snapshot_based_resize_at_dest (the
// destination VM destroyed, the claim dropped) and
// finish_revert_snapshot_based_resize_at_source (the old flavor, host and
// node back, the source VM powered on). All of them are calls.
//
// nova's VMware driver unregisters the source VM in
// prep_snapshot_based_resize_at_source (destroy with destroy_disks=False)
// and its finish_revert_migration then finds no VM; the agent keeps the
// powered-off VM registered instead, so that a revert powers it on.

// crossCellArgs are the arguments of the cross-cell methods.
type crossCellArgs struct {
	Flavor     any     `json:"flavor"`
	Nodename   string  `json:"nodename"`
	Migration  any     `json:"migration"`
	SnapshotID *string `json:"snapshot_id"`
}

func (l *lifecycle) crossCellArgs(req *rpc.Request) (crossCellArgs, *ovo.Object, error) {
	var a crossCellArgs
	if err := req.DecodeArgs(&a); err != nil {
		return a, nil, err
	}
	mig, err := decodeObject(a.Migration)
	if err != nil {
		return a, nil, fmt.Errorf("migration argument: %w", err)
	}
	return a, mig, nil
}

// errorsOutMigration is @errors_out_migration: a failure leaves the
// migration in error.
func (l *lifecycle) errorsOutMigration(ctx context.Context, rc rpc.Context, mig *ovo.Object, err error) error {
	if err != nil && mig != nil && mig.StringOrEmpty("status") != "error" {
		if serr := l.setMigrationStatus(context.WithoutCancel(ctx), rc, mig, "error"); serr != nil {
			zerolog.Ctx(ctx).Warn().Err(serr).Msg("setting the migration to error failed")
		}
	}
	return err
}

// errorOutInstance is _error_out_instance_on_exception(instance_state):
// a failure sets vm_state (ERROR) and saves it.
func (l *lifecycle) errorOutInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object, err error) error {
	if err != nil {
		inst.SetString("vm_state", "error")
		if serr := l.save(context.WithoutCancel(ctx), rc, inst, nil); serr != nil {
			zerolog.Ctx(ctx).Error().Err(serr).Msg("setting the instance to ERROR failed")
		}
	}
	return err
}

// DropMoveClaimAtDestination is drop_move_claim_at_destination (a call
// from a live migration's source during its rollback; @wrap_exception,
// @wrap_instance_fault): the resource tracker's drop_move_claim for the
// instance on this host's first node. The agent reports each node's usage
// as vCenter has it and tracks no move claims, so there is nothing to
// drop: the answer is None.
func (l *lifecycle) DropMoveClaimAtDestination(ctx context.Context, req *rpc.Request) (any, error) {
	return l.instanceCall(ctx, req, "drop_move_claim_at_destination", func(ctx context.Context, inst *ovo.Object) (any, error) {
		zerolog.Ctx(ctx).Debug().Str("node", inst.StringOrEmpty("node")).Msg("Dropping live migration resource claim on destination node")
		return nil, nil
	})
}

// PrepSnapshotBasedResizeAtDest is prep_snapshot_based_resize_at_dest
// (@wrap_exception, @wrap_instance_event, @wrap_instance_fault; no task
// state revert: conductor reschedules): resize_prep.start, the resize
// claim on nodename — the migration claimed (dest_compute, dest_node,
// dest_host, status pre-migrating) and a MigrationContext saved on the
// instance — and resize_prep.end; the MigrationContext is the answer. A
// failed claim is MigrationPreCheckError.
func (l *lifecycle) PrepSnapshotBasedResizeAtDest(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	flavor, err := decodeObject(a.Flavor)
	if err != nil {
		return nil, fmt.Errorf("flavor argument: %w", err)
	}
	return l.operationResult(ctx, req, opSpec{event: "compute_prep_snapshot_based_resize_at_dest", method: "prep_snapshot_based_resize_at_dest"},
		func(ctx context.Context, inst *ovo.Object) (any, error) {
			rc := req.Context
			zerolog.Ctx(ctx).Debug().Str("host", l.host).Msg("Checking if we can cross-cell migrate instance to this host")
			l.notify.resizePrepAction(ctx, rc, inst, flavor, "start", nil)
			mc, err := l.crossCellResizeClaim(ctx, rc, inst, mig, a.Nodename)
			flavorID, _ := flavor.Int("id")
			l.notify.resizePrepAction(ctx, rc, inst, flavor, "end",
				map[string]any{"new_instance_type": flavor.StringOrEmpty("name"), "new_instance_type_id": flavorID})
			if err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Cross-cell resize pre-checks failed for this host. Cleaning up.")
				reason := fmt.Sprintf("Pre-checks failed on host '%s'. Error: %s", l.host, remoteMessage(err))
				return nil, novaError("MigrationPreCheckError", "Migration pre-check error: "+reason, 500, map[string]any{"reason": reason})
			}
			return encode(mc), nil
		})
}

// crossCellResizeClaim is the resource tracker's resize_claim for a
// migration that exists: _claim_existing_migration and the instance's
// MigrationContext (no NUMA, PCI or resources with the VMware driver).
func (l *lifecycle) crossCellResizeClaim(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, node string) (*ovo.Object, error) {
	if _, err := l.clusterOfNode(ctx, node); err != nil {
		return nil, fmt.Errorf("compute node %s: %w", node, err)
	}
	mig.SetString("dest_compute", l.host)
	mig.SetString("dest_node", node)
	mig.SetString("dest_host", l.hostIP())
	mig.SetString("status", "pre-migrating")
	if _, err := l.cond.ObjectAction(ctx, rc, mig, "save", nil, nil); err != nil {
		return nil, err
	}
	mc := ovo.New("MigrationContext", l.cond.version("MigrationContext"))
	mc.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	id, _ := mig.Int("id")
	mc.SetInt("migration_id", id)
	for _, k := range []string{"old_numa_topology", "new_numa_topology", "old_pci_devices", "new_pci_devices",
		"old_pci_requests", "new_pci_requests", "old_resources", "new_resources"} {
		mc.SetNull(k)
	}
	inst.SetObject("migration_context", mc)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return nil, err
	}
	return mc, nil
}

// hostIP is the VMware driver's get_host_ip_addr: the vCenter's address
// (CONF.vmware.host_ip); the agent's host name without one.
func (l *lifecycle) hostIP() string {
	if h, ok := l.hv.(interface{ HostIP() string }); ok {
		if ip := h.HostIP(); ip != "" {
			return ip
		}
	}
	return l.host
}

// PrepSnapshotBasedResizeAtSource is prep_snapshot_based_resize_at_source
// (@wrap_exception, @reverts_task_state, @wrap_instance_event,
// @errors_out_migration, @wrap_instance_fault): the info cache refreshed,
// resize.start, the migration migrating, the VM powered off
// (InstancePowerOffFailure when it fails), the root disk snapshotted to
// snapshot_id (the image deleted on failure), the migration
// post-migrating and task_state resize_migrated (expected
// resize_migrating; a failure from here on is ERROR), resize.end. Host and
// node stay the source's.
func (l *lifecycle) PrepSnapshotBasedResizeAtSource(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_prep_snapshot_based_resize_at_source", method: "prep_snapshot_based_resize_at_source", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			zerolog.Ctx(ctx).Info().Str("host", l.host).Msg("Preparing for snapshot based resize on source host")
			return l.errorsOutMigration(ctx, rc, mig, l.prepCrossCellSource(ctx, rc, inst, mig, a.SnapshotID))
		})
}

func (l *lifecycle) prepCrossCellSource(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, snapshotID *string) error {
	if l.net != nil {
		if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{}); err != nil {
			return err
		}
	}
	l.notify.instanceAction(ctx, rc, inst, "resize", "resize", "start", nil, nil)
	if err := l.setMigrationStatus(ctx, rc, mig, "migrating"); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Debug().Msg("Stopping instance")
	if err := l.powerOffForCrossCell(ctx, inst); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to power off instance.")
		reason := remoteMessage(err)
		return novaError("InstancePowerOffFailure", "Failed to power off instance: "+reason, 400, map[string]any{"reason": reason})
	}
	inst.SetInt("power_state", l.vmPowerState(ctx, inst))
	if snapshotID != nil && *snapshotID != "" {
		// _snapshot_for_resize: the driver's snapshot without task state
		// updates, delete_image_on_error.
		none := func(context.Context, string, string) error { return nil }
		zerolog.Ctx(ctx).Debug().Str("image_id", *snapshotID).Msg("Uploading snapshot data")
		if err := l.driverSnapshot(ctx, rc, inst, *snapshotID, "", none); err != nil {
			return l.deleteImageOnError(ctx, rc, *snapshotID, err)
		}
	}
	err := func() error {
		if err := l.setMigrationStatus(ctx, rc, mig, "post-migrating"); err != nil {
			return err
		}
		inst.SetString("task_state", "resize_migrated")
		return l.save(ctx, rc, inst, "resize_migrating")
	}()
	if err := l.errorOutInstance(ctx, rc, inst, err); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "resize", "resize", "end", nil, nil)
	return nil
}

// powerOffForCrossCell is _power_off_instance: the VM powered off unless
// it is off already.
func (l *lifecycle) powerOffForCrossCell(ctx context.Context, inst *ovo.Object) error {
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	if vm.PowerState == vcenter.PowerStateOff {
		return nil
	}
	return l.hv.PowerOff(ctx, vm.Ref)
}

// FinishSnapshotBasedResizeAtDest is finish_snapshot_based_resize_at_dest
// (@wrap_exception, @reverts_task_state, @wrap_instance_event,
// @errors_out_migration, @wrap_instance_fault; the instance ERROR on
// failure): the old flavor stashed, the new one applied (a resize),
// task_state resize_finish (expected resize_migrated),
// finish_resize.start, the VM spawned on the migration's node from the
// snapshot (powered on when the instance was ACTIVE), the snapshot image
// deleted, the migration finished, the instance RESIZED on this host and
// node (expected resize_finish), the schedulers told, finish_resize.end.
func (l *lifecycle) FinishSnapshotBasedResizeAtDest(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_finish_snapshot_based_resize_at_dest", method: "finish_snapshot_based_resize_at_dest", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			zerolog.Ctx(ctx).Info().Str("host", l.host).Msg("Finishing snapshot based resize on destination host")
			err := l.finishCrossCellDest(ctx, rc, inst, mig, a.SnapshotID)
			return l.errorsOutMigration(ctx, rc, mig, l.errorOutInstance(ctx, rc, inst, err))
		})
}

func (l *lifecycle) finishCrossCellDest(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, snapshotID *string) error {
	log := zerolog.Ctx(ctx)
	originImageRef := inst.StringOrEmpty("image_ref")
	imageID := originImageRef
	if snapshotID != nil && *snapshotID != "" {
		imageID = *snapshotID
		inst.SetString("image_ref", imageID)
		if _, err := l.images.Image(ctx, rc.String("auth_token"), imageID); err != nil {
			return err
		}
	}
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	if old, err := inst.Object("flavor"); err == nil && old != nil {
		inst.SetObject("old_flavor", old)
	}
	if mig.StringOrEmpty("migration_type") == "resize" {
		newFlavor, err := inst.Object("new_flavor")
		if err != nil || newFlavor == nil {
			return errors.New("finish_snapshot_based_resize_at_dest: the instance has no new_flavor")
		}
		setInstanceInfo(inst, newFlavor)
	}
	// apply_migration_context: no NUMA topology, PCI or resources with the
	// VMware driver.
	inst.SetString("task_state", "resize_finish")
	if err := l.save(ctx, rc, inst, "resize_migrated"); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "finish_resize", "resize_finish", "start", nil, nil)
	node := mig.StringOrEmpty("dest_node")
	powerOn := oldVMState(inst) == "active"
	if err := l.spawn(ctx, rc, inst, node, map[string]any{"id": imageID}); err != nil {
		log.Error().Err(err).Msg("spawning the instance from the snapshot failed")
		l.cleanupFailedBuild(ctx, inst)
		l.forgetSpawnCache()
		return err
	}
	if !powerOn {
		if vm, err := l.vmOf(ctx, inst); err == nil {
			if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
				return vimFault(err)
			}
		}
	}
	if snapshotID != nil && *snapshotID != "" {
		inst.SetString("image_ref", originImageRef)
		if iw, ok := l.images.(imageWriter); ok && l.images != nil {
			if err := iw.DeleteImage(ctx, rc.String("auth_token"), *snapshotID); err != nil {
				log.Warn().Err(err).Str("image_id", *snapshotID).Msg("deleting the snapshot image failed")
			}
		}
	}
	if err := l.setMigrationStatus(ctx, rc, mig, "finished"); err != nil {
		return err
	}
	// _update_instance_after_spawn(vm_state=RESIZED).
	setStates(inst, "resized", nil, l.vmPowerState(ctx, inst))
	inst.SetDateTime("launched_at", time.Now().UTC())
	inst.SetString("host", mig.StringOrEmpty("dest_compute"))
	inst.SetString("node", node)
	if err := l.save(ctx, rc, inst, "resize_finish"); err != nil {
		return err
	}
	l.updateSchedulerInstanceInfo(ctx, rc, inst)
	l.notify.instanceAction(ctx, rc, inst, "finish_resize", "resize_finish", "end", nil, nil)
	return nil
}

// ConfirmSnapshotBasedResizeAtSource is confirm_snapshot_based_resize_at_source
// (@wrap_exception, @wrap_instance_event, @errors_out_migration,
// @wrap_instance_fault; the instance ERROR on failure): the info cache
// refreshed, the source VM destroyed with its disks (the driver's
// cleanup), the move claim at the source dropped (nothing tracked), and
// in any case the migration's allocations on the source node deleted.
func (l *lifecycle) ConfirmSnapshotBasedResizeAtSource(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_confirm_snapshot_based_resize_at_source", method: "confirm_snapshot_based_resize_at_source"},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			zerolog.Ctx(ctx).Info().Msg("Confirming resize on source host.")
			err := func() error {
				defer l.deleteMigrationAllocation(ctx, mig)
				if l.net != nil {
					if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{}); err != nil {
						return err
					}
				}
				zerolog.Ctx(ctx).Debug().Msg("Cleaning up guest from source hypervisor including disks.")
				return l.destroyCrossCellVM(ctx, inst)
			}()
			return l.errorsOutMigration(ctx, rc, mig, l.errorOutInstance(ctx, rc, inst, err))
		})
}

// destroyCrossCellVM is the VMware driver's destroy with its disks: the VM
// powered off, unregistered and its files deleted; no VM is a warning.
func (l *lifecycle) destroyCrossCellVM(ctx context.Context, inst *ovo.Object) error {
	vm, err := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid"))
	if errors.Is(err, vcenter.ErrNotFound) {
		zerolog.Ctx(ctx).Warn().Msg("Instance does not exist on backend")
		return nil
	}
	if err != nil {
		return err
	}
	if vm.PowerState == vcenter.PowerStateOn {
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return vimFault(err)
		}
	}
	if err := l.hv.Destroy(ctx, vm.Ref); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Destroy instance failed")
		return vimFault(err)
	}
	return nil
}

// RevertSnapshotBasedResizeAtDest is revert_snapshot_based_resize_at_dest
// (@wrap_exception, @reverts_task_state, @wrap_instance_event,
// @errors_out_migration, @wrap_instance_fault; the instance ERROR on
// failure): the info cache refreshed, the destination VM destroyed with
// its disks, the move claim dropped — the instance's MigrationContext
// dropped (drop_migration_context) — and the schedulers told the instance
// left this host.
func (l *lifecycle) RevertSnapshotBasedResizeAtDest(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_revert_snapshot_based_resize_at_dest", method: "revert_snapshot_based_resize_at_dest", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			zerolog.Ctx(ctx).Info().Msg("Reverting resize on destination host.")
			err := func() error {
				if l.net != nil {
					if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{}); err != nil {
						return err
					}
				}
				zerolog.Ctx(ctx).Debug().Msg("Destroying guest from destination hypervisor including disks.")
				if err := l.destroyCrossCellVM(ctx, inst); err != nil {
					return err
				}
				// rt.drop_move_claim_at_dest: instance.drop_migration_context().
				inst.SetNull("migration_context")
				return l.save(ctx, rc, inst, nil)
			}()
			if err := l.errorsOutMigration(ctx, rc, mig, l.errorOutInstance(ctx, rc, inst, err)); err != nil {
				return err
			}
			if err := l.sched.Cast(ctx, rc, "delete_instance_info", map[string]any{"host_name": l.host, "instance_uuid": inst.StringOrEmpty("uuid")}); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("revert_snapshot_based_resize_at_dest failed during post-processing")
			}
			return nil
		})
}

// FinishRevertSnapshotBasedResizeAtSource is
// finish_revert_snapshot_based_resize_at_source (@wrap_exception,
// @reverts_task_state, @wrap_instance_event, @errors_out_migration,
// @wrap_instance_fault; the instance ERROR on failure): the old flavor,
// the migration's source host and node back (expected resize_reverting),
// the allocations moved back to the instance, the info cache refreshed,
// the source VM powered on when the instance was ACTIVE (the driver's
// finish_revert_migration), the MigrationContext dropped and the instance
// ACTIVE or STOPPED (expected resize_reverting); in any case the stashed
// flavors and old_vm_state dropped; then the schedulers told.
func (l *lifecycle) FinishRevertSnapshotBasedResizeAtSource(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.crossCellArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_finish_revert_snapshot_based_resize_at_source", method: "finish_revert_snapshot_based_resize_at_source", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			zerolog.Ctx(ctx).Info().Msg("Reverting resize on source host.")
			err := l.errorOutInstance(ctx, rc, inst, l.finishRevertCrossCellSource(ctx, rc, inst, mig))
			// _delete_stashed_flavor_info, in a finally.
			dropStashedFlavors(inst)
			if serr := l.save(ctx, rc, inst, nil); serr != nil && err == nil {
				err = serr
			}
			if err := l.errorsOutMigration(ctx, rc, mig, err); err != nil {
				return err
			}
			l.updateSchedulerInstanceInfo(ctx, rc, inst)
			return nil
		})
}

func (l *lifecycle) finishRevertCrossCellSource(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object) error {
	oldState := oldVMState(inst)
	// _revert_instance_flavor_host_node.
	if old, err := inst.Object("old_flavor"); err == nil && old != nil {
		setInstanceInfo(inst, old)
	}
	inst.SetString("host", mig.StringOrEmpty("source_compute"))
	inst.SetString("node", mig.StringOrEmpty("source_node"))
	if err := l.save(ctx, rc, inst, []any{"resize_reverting"}); err != nil {
		return err
	}
	if err := l.revertAllocation(ctx, inst, mig); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Reverting allocation in placement for migration failed. You may need to manually remove the allocations.")
	}
	if l.net != nil {
		if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{}); err != nil {
			return err
		}
	}
	powerOn := oldState == "active"
	vm, err := l.vmOf(ctx, inst)
	if err == nil && powerOn && vm.PowerState != vcenter.PowerStateOn {
		if perr := l.hv.PowerOn(ctx, vm.Ref); perr != nil {
			err = vimFault(perr)
		}
	}
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("An error occurred during finish_revert_migration. The instance may need to be hard rebooted.")
		return err
	}
	inst.SetNull("migration_context")
	state := "stopped"
	if powerOn {
		state = "active"
	}
	setStates(inst, state, nil, l.vmPowerState(ctx, inst))
	inst.SetDateTime("launched_at", time.Now().UTC())
	return l.save(ctx, rc, inst, []any{"resize_reverting"})
}
