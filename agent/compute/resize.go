package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Resize and cold migration, as nova's manager and the VMware driver do
// them: prep_resize (destination) → resize_instance (source:
// migrate_disk_and_power_off) → finish_resize (destination:
// finish_migration) → confirm_resize (source) or revert_resize
// (destination) → finish_revert_resize (source).
//
// Upstream the VM stays in its old cluster even when the destination node
// is another cluster of the vCenter. The agent moves it (RelocateVM_Task
// to the destination cluster's resource pool, onto a datastore of the
// regex) so that the VM is where nova says it is; a revert moves it back.

// resizeTotalSteps is the VMware driver's RESIZE_TOTAL_STEPS.
const resizeTotalSteps = 6

// mover is what moves need of vCenter beyond the Hypervisor
// (*vcenter.Session has it).
type mover interface {
	RelocateVM(ctx context.Context, vm vcenter.Ref, spec vcenter.RelocateSpec) (vcenter.VM, error)
	ResizeVM(ctx context.Context, vm vcenter.Ref, numCPUs int32, memoryMB int64, diskKey int32, capacityKB int64) error
}

// allocationMover moves placement allocations between consumers
// (*cloud.Placement has it).
type allocationMover interface {
	MoveAllocations(ctx context.Context, sourceConsumer, targetConsumer string) (bool, error)
}

// moverHV returns the hypervisor's move operations, or an error saying it
// has none.
func (l *lifecycle) moverHV() (mover, error) {
	m, ok := l.hv.(mover)
	if !ok {
		return nil, fmt.Errorf("the hypervisor (%T) cannot move or resize VMs", l.hv)
	}
	return m, nil
}

// faultRollback is nova's InstanceFaultRollback: the instance goes back
// to the vm_state it had instead of ERROR, and the inner error is the one
// raised.
type faultRollback struct{ err error }

func (e *faultRollback) Error() string { return e.err.Error() }
func (e *faultRollback) Unwrap() error { return e.err }

// computeAt returns a compute RPC 6.0 client of the compute service on
// host.
func (l *lifecycle) computeAt(host string) rpc.Client {
	c := l.tasks
	c.Target = rpc.Target{Exchange: l.tasks.Target.Exchange, Topic: Topic, Server: host, Version: "6.0"}
	return c
}

// decodeObject decodes an object argument or reply.
func decodeObject(v any) (*ovo.Object, error) {
	if raw, ok := v.(json.RawMessage); ok {
		var d any
		if err := json.Unmarshal(raw, &d); err != nil {
			return nil, err
		}
		v = d
	}
	if v == nil {
		return nil, errors.New("missing object")
	}
	return ovo.NovaCodec().Decode(v)
}

// encode encodes an object for an RPC argument.
func encode(o *ovo.Object) any {
	if o == nil {
		return nil
	}
	v, err := ovo.NovaCodec().EncodeEntity(o)
	if err != nil {
		return nil
	}
	return v
}

// setMigrationStatus is nova's migration.status = status; migration.save().
func (l *lifecycle) setMigrationStatus(ctx context.Context, rc rpc.Context, mig *ovo.Object, status string) error {
	if mig == nil {
		return nil
	}
	mig.SetString("status", status)
	if _, err := l.cond.ObjectAction(ctx, rc, mig, "save", nil, nil); err != nil {
		return fmt.Errorf("saving migration status %s: %w", status, err)
	}
	return nil
}

// errorOutMove is nova's _error_out_instance_on_exception with
// errors_out_migration_ctxt around a move step: the migration goes to
// "error"; the instance to ERROR, or back to state for a faultRollback.
func (l *lifecycle) errorOutMove(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, state string, cause error) {
	var rb *faultRollback
	if errors.As(cause, &rb) {
		setStates(inst, state, nil, -1)
	} else {
		inst.SetString("vm_state", "error")
	}
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("setting the instance state after a failed move failed")
	}
	if mig != nil && mig.StringOrEmpty("status") != "error" {
		if err := l.setMigrationStatus(ctx, rc, mig, "error"); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("marking the migration error failed")
		}
	}
}

// revertAllocation is nova's _revert_allocation: the allocations the
// migration consumer holds (the source node's) go back to the instance.
func (l *lifecycle) revertAllocation(ctx context.Context, inst, mig *ovo.Object) error {
	am, ok := l.pl.(allocationMover)
	if !ok || mig == nil {
		return nil
	}
	moved, err := am.MoveAllocations(ctx, mig.StringOrEmpty("uuid"), inst.StringOrEmpty("uuid"))
	if err != nil {
		return fmt.Errorf("moving the allocations of migration %s back to the instance: %w", mig.StringOrEmpty("uuid"), err)
	}
	if !moved {
		zerolog.Ctx(ctx).Info().Str("migration", mig.StringOrEmpty("uuid")).Msg("the migration holds no allocations to revert")
	}
	return nil
}

// deleteMigrationAllocation is nova's _delete_allocation_after_move: the
// source node's allocation, held by the migration, is released.
func (l *lifecycle) deleteMigrationAllocation(ctx context.Context, mig *ovo.Object) {
	if l.pl == nil || mig == nil {
		return
	}
	if _, err := l.pl.DeleteAllocations(ctx, mig.StringOrEmpty("uuid")); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Str("migration", mig.StringOrEmpty("uuid")).Msg("deleting the migration's allocations failed")
	}
}

// resizeProgress is the VMware driver's _update_instance_progress.
func (l *lifecycle) resizeProgress(ctx context.Context, rc rpc.Context, inst *ovo.Object, step int) {
	inst.SetInt("progress", int64(math.Round(float64(step)/resizeTotalSteps*100)))
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("saving the resize progress failed")
	}
}

// setInstanceInfo is nova's _set_instance_info: the instance takes the
// flavor's sizes.
func setInstanceInfo(inst, flavor *ovo.Object) {
	if id, err := flavor.Int("id"); err == nil {
		inst.SetInt("instance_type_id", id)
	}
	for _, k := range []string{"memory_mb", "vcpus", "root_gb", "ephemeral_gb"} {
		if v, err := flavor.Int(k); err == nil {
			inst.SetInt(k, v)
		}
	}
	inst.SetObject("flavor", flavor)
}

// oldVMState is system_metadata's old_vm_state, "active" without one.
func oldVMState(inst *ovo.Object) string {
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		if s, _ := sm["old_vm_state"].(string); s != "" {
			return s
		}
	}
	return "active"
}

// dropStashedFlavors is nova's _delete_stashed_flavor_info.
func dropStashedFlavors(inst *ovo.Object) {
	inst.SetNull("old_flavor")
	inst.SetNull("new_flavor")
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		if _, ok := sm["old_vm_state"]; ok {
			delete(sm, "old_vm_state")
			_ = inst.Set("system_metadata", sm)
		}
	}
}

// clusterOfNode returns the vCenter cluster of a node name
// ("<cluster moref>.<vCenter uuid>"); a node of another vCenter fails.
func (l *lifecycle) clusterOfNode(ctx context.Context, node string) (vcenter.Cluster, error) {
	moref, vc, _ := strings.Cut(node, ".")
	if vc != l.hv.InstanceUUID() {
		return vcenter.Cluster{}, fmt.Errorf("node %s is not in this vCenter (%s)", node, l.hv.InstanceUUID())
	}
	clusters, err := l.clusters(ctx)
	if err != nil {
		return vcenter.Cluster{}, err
	}
	for _, c := range clusters {
		if c.Ref.Value == moref {
			return c, nil
		}
	}
	return vcenter.Cluster{}, fmt.Errorf("node %s: no such cluster in vCenter: %w", node, vcenter.ErrNotFound)
}

// moveVMToCluster relocates the VM into the cluster's root resource pool
// unless it is there already. The VM keeps its datastore when the cluster
// mounts it and the regex allows it, as nova's
// _find_datastore_for_migration chooses; otherwise it goes to the
// cluster's best datastore. vCenter's DRS picks the host; a cluster
// without DRS gets its first usable host.
func (l *lifecycle) moveVMToCluster(ctx context.Context, vm vcenter.VM, cluster vcenter.Cluster, dsRegex *regexp.Regexp) (vcenter.VM, error) {
	if vm.ResourcePool == cluster.ResourcePool {
		return vm, nil
	}
	mv, err := l.moverHV()
	if err != nil {
		return vm, err
	}
	spec := vcenter.RelocateSpec{ResourcePool: cluster.ResourcePool}
	cur, _ := vcenter.ParseDatastorePath(vm.VMPathName)
	keep := false
	for _, ds := range cluster.UsableDatastores(dsRegex) {
		if ds.Name == cur.Datastore {
			keep = true
		}
	}
	if !keep {
		best, ok := cluster.BestDatastore(dsRegex)
		if !ok {
			return vm, fmt.Errorf("cluster %s has no usable datastore", cluster.Name)
		}
		spec.Datastore = best.Ref
	}
	if !cluster.DRSEnabled {
		for _, h := range cluster.Hosts {
			if h.Usable() {
				spec.Host = h.Ref
				break
			}
		}
	}
	zerolog.Ctx(ctx).Info().Str("cluster", cluster.Name).Str("vm", vm.Ref.Value).Msg("relocating the VM to the cluster")
	moved, err := mv.RelocateVM(ctx, vm.Ref, spec)
	if err != nil {
		return vm, fmt.Errorf("moving the VM to cluster %s: %w", cluster.Name, err)
	}
	return moved, nil
}

// instanceRootDisk is the root disk a resize grows, keeps and restores
// (vm_util.get_vmdk_info with the instance's uuid): a disk of the VM in
// the instance's own folder. A volume's disk is in its backing's folder,
// so a server booted from a volume has none, and a resize never grows,
// copies or replaces a volume's disk.
func instanceRootDisk(vm vcenter.VM) (vcenter.Disk, bool) {
	for _, d := range vm.Disks {
		if strings.HasSuffix(d.FileName, rescueSuffix) {
			continue
		}
		p, err := vcenter.ParseDatastorePath(d.FileName)
		if err != nil {
			continue
		}
		if vm.InstanceUUID == "" || p.Dir().Base() == vm.InstanceUUID {
			return d, true
		}
	}
	return vcenter.Disk{}, false
}

// resizeVMToFlavor gives the VM the flavor's CPUs and memory and grows its
// root disk to the flavor's root_gb (nova's _resize_vm and _resize_disk);
// a disk already as big or bigger is left alone.
func (l *lifecycle) resizeVMToFlavor(ctx context.Context, vm vcenter.VM, uuid string, flavor *ovo.Object) error {
	mv, err := l.moverHV()
	if err != nil {
		return err
	}
	vcpus, _ := flavor.Int("vcpus")
	mem, _ := flavor.Int("memory_mb")
	rootGB, _ := flavor.Int("root_gb")
	var key int32
	var capKB int64
	if d, ok := instanceRootDisk(vm); ok && rootGB > 0 && rootGB<<20 > d.CapacityKB {
		key, capKB = d.Key, rootGB<<20
	}
	if err := mv.ResizeVM(ctx, vm.Ref, int32(vcpus), mem, key, capKB); err != nil {
		return fmt.Errorf("resizing the VM: %w", err)
	}
	return nil
}

// resizeArgs are the arguments of the resize RPC methods.
type resizeArgs struct {
	Image            json.RawMessage `json:"image"`
	Flavor           any             `json:"flavor"`
	Migration        any             `json:"migration"`
	RequestSpec      json.RawMessage `json:"request_spec"`
	FilterProperties json.RawMessage `json:"filter_properties"`
	Node             *string         `json:"node"`
	CleanShutdown    *bool           `json:"clean_shutdown"`
	DiskInfo         json.RawMessage `json:"disk_info"`
}

func (l *lifecycle) resizeArgs(req *rpc.Request) (resizeArgs, *ovo.Object, error) {
	var a resizeArgs
	if err := req.DecodeArgs(&a); err != nil {
		return a, nil, err
	}
	mig, err := decodeObject(a.Migration)
	if err != nil {
		return a, nil, fmt.Errorf("migration argument: %w", err)
	}
	return a, mig, nil
}

// PrepResize is prep_resize (a cast, on the destination): the new flavor
// and the old vm_state are stashed, the move is claimed on the node (the
// migration's destination, status pre-migrating) and the source is told
// to resize_instance. A failure moves the allocations back to the
// instance and leaves the migration in error.
func (l *lifecycle) PrepResize(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_prep_resize", method: "prep_resize", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			state := inst.StringOrEmpty("vm_state")
			flavor, err := decodeObject(a.Flavor)
			if err != nil {
				return fmt.Errorf("flavor argument: %w", err)
			}
			name := flavor.StringOrEmpty("name")
			flavorID, _ := flavor.Int("id")
			l.notify.resizePrepAction(ctx, rc, inst, flavor, "start", nil)
			err = l.prepResize(ctx, rc, inst, mig, flavor, a)
			if err != nil {
				if rerr := l.revertAllocation(ctx, inst, mig); rerr != nil {
					zerolog.Ctx(ctx).Error().Err(rerr).Msg("reverting the allocations failed")
				}
				l.errorOutMove(ctx, rc, inst, mig, state, err)
			}
			l.notify.resizePrepAction(ctx, rc, inst, flavor, "end",
				map[string]any{"new_instance_type": name, "new_instance_type_id": flavorID})
			return err
		})
}

func (l *lifecycle) prepResize(ctx context.Context, rc rpc.Context, inst, mig, flavor *ovo.Object, a resizeArgs) error {
	if inst.StringOrEmpty("host") == "" {
		return novaError("MigrationError", "Migration error: Instance has no source host", 500, map[string]any{"reason": "Instance has no source host"})
	}
	node := ""
	if a.Node != nil {
		node = *a.Node
	}
	if node == "" {
		node = mig.StringOrEmpty("dest_node")
	}
	if _, err := l.clusterOfNode(ctx, node); err != nil {
		return &faultRollback{novaError("MigrationError", "Migration error: "+err.Error(), 500, map[string]any{"reason": err.Error()})}
	}
	// VMware supports_migrate_to_same_host: a same-host migrate is fine.
	inst.SetObject("new_flavor", flavor)
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		sm["old_vm_state"] = inst.StringOrEmpty("vm_state")
		if err := inst.Set("system_metadata", sm); err != nil {
			return err
		}
	}
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	// The resize claim (resource_tracker.resize_claim).
	mig.SetString("dest_compute", l.host)
	mig.SetString("dest_node", node)
	if id, err := flavor.Int("id"); err == nil {
		mig.SetInt("new_instance_type_id", id)
	}
	if err := l.setMigrationStatus(ctx, rc, mig, "pre-migrating"); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("source", inst.StringOrEmpty("node")).Str("destination", node).Msg("migrating")
	return l.computeAt(inst.StringOrEmpty("host")).Cast(ctx, rc, "resize_instance", map[string]any{
		"instance": encode(inst), "migration": encode(mig), "image": rawOrNull(a.Image),
		"flavor": encode(flavor), "clean_shutdown": a.CleanShutdown == nil || *a.CleanShutdown,
		"request_spec": rawOrNull(a.RequestSpec),
	})
}

// ResizeInstance is resize_instance (a cast, on the source): the VMware
// driver's migrate_disk_and_power_off (a root disk shrink is refused with
// its "Unable to shrink disk." and the instance goes back to its state),
// then the instance is handed to the destination node and
// finish_resize is cast there.
func (l *lifecycle) ResizeInstance(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_resize_instance", method: "resize_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			state := inst.StringOrEmpty("vm_state")
			err := l.resizeInstance(ctx, rc, inst, mig, a)
			if err != nil {
				l.errorOutMove(ctx, rc, inst, mig, state, err)
				if rerr := l.revertAllocation(ctx, inst, mig); rerr != nil {
					zerolog.Ctx(ctx).Error().Err(rerr).Msg("reverting the allocations failed")
				}
				return err
			}
			l.notify.instanceAction(ctx, rc, inst, "resize", "resize", "end", nil, nil)
			return nil
		})
}

func (l *lifecycle) resizeInstance(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, a resizeArgs) error {
	flavor, err := decodeObject(a.Flavor)
	if err != nil {
		return fmt.Errorf("flavor argument: %w", err)
	}
	if err := l.setMigrationStatus(ctx, rc, mig, "migrating"); err != nil {
		return err
	}
	inst.SetString("task_state", "resize_migrating")
	if err := l.save(ctx, rc, inst, "resize_prep"); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "resize", "resize", "start", nil, nil)
	if err := l.migrateDiskAndPowerOff(ctx, rc, inst, flavor); err != nil {
		return err
	}
	// _terminate_volume_connections: the source's attachments are handed
	// back to reserved ones, the destination updates them (volumes_move.go).
	vols, err := l.vols.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return err
	}
	if err := l.vols.terminateVolumeConnections(ctx, rc, inst, vols); err != nil {
		return err
	}
	if err := l.setMigrationStatus(ctx, rc, mig, "post-migrating"); err != nil {
		return err
	}
	inst.SetString("host", mig.StringOrEmpty("dest_compute"))
	inst.SetString("node", mig.StringOrEmpty("dest_node"))
	if cur, err := inst.Object("flavor"); err == nil && cur != nil {
		inst.SetObject("old_flavor", cur)
	}
	inst.SetString("task_state", "resize_migrated")
	if err := l.save(ctx, rc, inst, "resize_migrating"); err != nil {
		return err
	}
	return l.computeAt(mig.StringOrEmpty("dest_compute")).Cast(ctx, rc, "finish_resize", map[string]any{
		"instance": encode(inst), "migration": encode(mig), "image": rawOrNull(a.Image),
		"disk_info": "[]", "request_spec": rawOrNull(a.RequestSpec),
	})
}

// migrateDiskAndPowerOff is the VMware driver's migrate_disk_and_power_off
// up to the power-off; the agent resizes the VM in finish_resize, after
// moving it to the destination cluster.
func (l *lifecycle) migrateDiskAndPowerOff(ctx context.Context, rc rpc.Context, inst, flavor *ovo.Object) error {
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	cur, _ := inst.Object("flavor")
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	newRoot, _ := flavor.Int("root_gb")
	oldRoot, _ := cur.Int("root_gb")
	var capKB int64
	if d, ok := instanceRootDisk(vm); ok {
		capKB = d.CapacityKB
	}
	if newRoot < oldRoot || (newRoot != 0 && newRoot<<20 < capKB) {
		return &faultRollback{novaError("ResizeError", "Resize error: Unable to shrink disk.", 500, map[string]any{"reason": "Unable to shrink disk."})}
	}
	l.resizeProgress(ctx, rc, inst, 0)
	if vm.PowerState != vcenter.PowerStateOff {
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return fmt.Errorf("powering off the VM: %w", err)
		}
	}
	l.resizeProgress(ctx, rc, inst, 1)
	return nil
}

// FinishResize is finish_resize (a cast, on the destination): the
// instance takes the new flavor, the VM is moved to the destination
// node's cluster, gets the new CPUs, memory and root disk size and is
// powered on (unless it was stopped), and the instance becomes RESIZED
// (VERIFY_RESIZE). A failure releases the source node's allocation.
func (l *lifecycle) FinishResize(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_finish_resize", method: "finish_resize", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			err := l.finishResize(ctx, rc, inst, mig)
			if err != nil {
				l.errorOutMove(ctx, rc, inst, mig, "", err)
				zerolog.Ctx(ctx).Info().Str("source", mig.StringOrEmpty("source_compute")).
					Msg("deleting allocations for old flavor on source node after finish_resize failure")
				l.deleteMigrationAllocation(ctx, mig)
				return err
			}
			l.updateSchedulerInstanceInfo(ctx, rc, inst)
			l.notify.instanceAction(ctx, rc, inst, "finish_resize", "resize_finish", "end", nil, nil)
			return nil
		})
}

func (l *lifecycle) finishResize(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object) error {
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	oldFlavor, _ := inst.Object("flavor")
	oldState := oldVMState(inst)
	inst.SetObject("old_flavor", oldFlavor)
	oldID, _ := mig.Int("old_instance_type_id")
	newID, _ := mig.Int("new_instance_type_id")
	if oldID != newID {
		nf, err := inst.Object("new_flavor")
		if err != nil || nf == nil {
			return fmt.Errorf("the instance has no new flavor: %w", err)
		}
		setInstanceInfo(inst, nf)
	}
	inst.SetString("task_state", "resize_finish")
	if err := l.save(ctx, rc, inst, "resize_migrated"); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "finish_resize", "resize_finish", "start", nil, nil)
	powerOn := oldState != "stopped"
	// _update_volume_attachments: the attachments get this host's
	// connector before the driver's finish_migration (volumes_move.go).
	vols, err := l.vols.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return err
	}
	if err := l.vols.updateVolumeAttachments(ctx, rc, inst, vols); err != nil {
		return err
	}
	if err := l.finishMigration(ctx, rc, inst, mig.StringOrEmpty("dest_node"), powerOn, false); err != nil {
		if oldID != newID {
			setInstanceInfo(inst, oldFlavor)
		}
		return err
	}
	l.vols.consolidateVolumes(ctx, inst, vols)
	if err := l.vols.completeVolumeAttachments(ctx, rc, vols); err != nil {
		return err
	}
	if err := l.setMigrationStatus(ctx, rc, mig, "finished"); err != nil {
		return err
	}
	power := int64(powerShutdown)
	if powerOn {
		power = powerRunning
	}
	setStates(inst, "resized", nil, power)
	inst.SetDateTime("launched_at", time.Now().UTC())
	return l.save(ctx, rc, inst, "resize_finish")
}

// finishMigration is the VMware driver's finish_migration (revert false)
// or finish_revert_migration (revert true) with the agent's move: the VM
// is powered off, a revert first puts the pre-resize root disk back, the
// VM goes to the node's cluster and takes the flavor's sizes (a growing
// root disk is copied to original.vmdk first, as nova's _resize_disk
// keeps it), and it is powered on.
func (l *lifecycle) finishMigration(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, powerOn, revert bool) error {
	cluster, err := l.clusterOfNode(ctx, node)
	if err != nil {
		return err
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	if vm.PowerState != vcenter.PowerStateOff {
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return fmt.Errorf("powering off the VM: %w", err)
		}
	}
	if revert {
		if err := l.restoreOriginalDisk(ctx, vm); err != nil {
			return err
		}
		if vm, err = l.vmOf(ctx, inst); err != nil {
			return err
		}
	}
	if vm, err = l.moveVMToCluster(ctx, vm, cluster, l.ds); err != nil {
		return err
	}
	flavor, _ := inst.Object("flavor")
	if !revert {
		if err := l.keepOriginalDisk(ctx, vm, flavor); err != nil {
			return err
		}
	}
	if err := l.resizeVMToFlavor(ctx, vm, inst.StringOrEmpty("uuid"), flavor); err != nil {
		return err
	}
	if !revert {
		l.resizeProgress(ctx, rc, inst, 5)
	}
	if powerOn {
		if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
			return fmt.Errorf("powering on the VM: %w", err)
		}
	}
	if !revert {
		l.resizeProgress(ctx, rc, inst, 6)
	}
	return nil
}

// resizeDisks is what keeping the pre-resize root disk needs of vCenter
// (*vcenter.Session has it).
type resizeDisks interface {
	CopyVirtualDisk(ctx context.Context, dc string, src, dst vcenter.DatastorePath, thin bool) error
	DeleteVirtualDisk(ctx context.Context, dc string, p vcenter.DatastorePath) error
	FileExists(ctx context.Context, dc string, p vcenter.DatastorePath) (bool, error)
	DetachDisk(ctx context.Context, vm vcenter.Ref, diskKey int32, destroy bool) error
}

// originalDisk returns the VM's root disk, the path of its pre-resize copy
// ("original.vmdk" beside it, as nova names it) and the datacenter.
func (l *lifecycle) originalDisk(ctx context.Context, vm vcenter.VM) (vcenter.Disk, vcenter.DatastorePath, string, bool) {
	root, ok := instanceRootDisk(vm)
	if !ok {
		return root, vcenter.DatastorePath{}, "", false
	}
	p, err := vcenter.ParseDatastorePath(root.FileName)
	if err != nil {
		return root, vcenter.DatastorePath{}, "", false
	}
	dir := p.Path
	if i := strings.LastIndex(dir, "/"); i >= 0 {
		dir = dir[:i+1]
	} else {
		dir = ""
	}
	clusters, err := l.clusters(ctx)
	if err != nil {
		return root, vcenter.DatastorePath{}, "", false
	}
	for _, c := range clusters {
		if c.ResourcePool == vm.ResourcePool {
			return root, vcenter.DatastorePath{Datastore: p.Datastore, Path: dir + "original.vmdk"}, c.Datacenter, true
		}
	}
	return root, vcenter.DatastorePath{}, "", false
}

// keepOriginalDisk copies the root disk to original.vmdk before it grows,
// so that a revert can put it back (vSphere cannot shrink a disk).
func (l *lifecycle) keepOriginalDisk(ctx context.Context, vm vcenter.VM, flavor *ovo.Object) error {
	rd, ok := l.hv.(resizeDisks)
	if !ok || flavor == nil {
		return nil
	}
	rootGB, _ := flavor.Int("root_gb")
	root, orig, dc, ok := l.originalDisk(ctx, vm)
	if !ok || rootGB == 0 || rootGB<<20 <= root.CapacityKB {
		return nil
	}
	src, err := vcenter.ParseDatastorePath(root.FileName)
	if err != nil {
		return err
	}
	if err := rd.DeleteVirtualDisk(ctx, dc, orig); err != nil {
		return fmt.Errorf("removing an old %s: %w", orig, err)
	}
	if err := rd.CopyVirtualDisk(ctx, dc, src, orig, false); err != nil {
		return fmt.Errorf("keeping the root disk as %s: %w", orig, err)
	}
	return nil
}

// restoreOriginalDisk is nova's _revert_migration_update_disks: when the
// pre-resize copy exists, the grown root disk is detached and deleted and
// the copy takes its place.
func (l *lifecycle) restoreOriginalDisk(ctx context.Context, vm vcenter.VM) error {
	rd, ok := l.hv.(resizeDisks)
	if !ok {
		return nil
	}
	root, orig, dc, ok := l.originalDisk(ctx, vm)
	if !ok {
		return nil
	}
	if exists, err := rd.FileExists(ctx, dc, orig); err != nil || !exists {
		return err
	}
	dst, err := vcenter.ParseDatastorePath(root.FileName)
	if err != nil {
		return err
	}
	if err := rd.DetachDisk(ctx, vm.Ref, root.Key, true); err != nil {
		return fmt.Errorf("detaching the resized root disk: %w", err)
	}
	if err := rd.CopyVirtualDisk(ctx, dc, orig, dst, false); err != nil {
		return fmt.Errorf("restoring the root disk from %s: %w", orig, err)
	}
	if err := rd.DeleteVirtualDisk(ctx, dc, orig); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("deleting the pre-resize root disk failed")
	}
	if _, err := l.hv.AttachDisk(ctx, vm.Ref, root.FileName, 0, root.ControllerKey); err != nil {
		return fmt.Errorf("attaching the restored root disk: %w", err)
	}
	return nil
}

// deleteOriginalDisk is nova's confirm_migration: the pre-resize copy of
// the root disk is deleted.
func (l *lifecycle) deleteOriginalDisk(ctx context.Context, inst *ovo.Object) {
	rd, ok := l.hv.(resizeDisks)
	if !ok {
		return
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return
	}
	if _, orig, dc, ok := l.originalDisk(ctx, vm); ok {
		if err := rd.DeleteVirtualDisk(ctx, dc, orig); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("deleting the pre-resize root disk failed")
		}
	}
}

// ConfirmResize is confirm_resize (a cast, on the source): the migration
// is confirmed, the instance goes back to ACTIVE (STOPPED when powered
// off), the source node's allocation (held by the migration) is released
// and the stashed flavors are dropped. The VM is already in its new
// cluster; the pre-resize copy of its root disk is deleted.
func (l *lifecycle) ConfirmResize(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_confirm_resize", method: "confirm_resize"},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			switch st := mig.StringOrEmpty("status"); st {
			case "confirmed":
				zerolog.Ctx(ctx).Info().Msg("migration already confirmed")
				return nil
			case "finished", "confirming":
			default:
				zerolog.Ctx(ctx).Warn().Str("status", st).Msg("unexpected confirmation status of the migration; not confirming")
				return nil
			}
			defer func() {
				l.deleteMigrationAllocation(ctx, mig)
				if inst.StringOrEmpty("host") != l.host {
					if err := l.sched.Cast(ctx, rc, "delete_instance_info", map[string]any{"host_name": l.host, "instance_uuid": inst.StringOrEmpty("uuid")}); err != nil {
						zerolog.Ctx(ctx).Warn().Err(err).Msg("delete_instance_info to the scheduler failed")
					}
				}
				dropStashedFlavors(inst)
				if err := l.save(ctx, rc, inst, nil); err != nil {
					zerolog.Ctx(ctx).Warn().Err(err).Msg("dropping the stashed flavors failed")
				}
			}()
			l.notify.instanceAction(ctx, rc, inst, "resize.confirm", "resize_confirm", "start", nil, nil)
			l.deleteOriginalDisk(ctx, inst)
			if err := l.setMigrationStatus(ctx, rc, mig, "confirmed"); err != nil {
				l.errorOutMove(ctx, rc, inst, nil, "", err)
				return err
			}
			vmState := "active"
			if p, _ := inst.Int("power_state"); p == powerShutdown {
				vmState = "stopped"
			}
			setStates(inst, vmState, nil, -1)
			if err := l.save(ctx, rc, inst, []any{nil, "deleting", "soft-deleting"}); err != nil {
				l.errorOutMove(ctx, rc, inst, nil, "", err)
				return err
			}
			l.notify.instanceAction(ctx, rc, inst, "resize.confirm", "resize_confirm", "end", nil, nil)
			return nil
		})
}

// RevertResize is revert_resize (a cast, on the destination): the VMware
// driver keeps the VM (one VM serves both ends of a resize), the
// migration is reverted (drop_move_claim_at_dest) and the source is told
// to finish_revert_resize.
func (l *lifecycle) RevertResize(ctx context.Context, req *rpc.Request) (any, error) {
	a, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_revert_resize", method: "revert_resize", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			// The VMware driver's destroy does nothing while reverting (one
			// VM serves both ends); _terminate_volume_connections hands the
			// attachments back to reserved ones for the source.
			vols, err := l.vols.volumeBDMs(ctx, rc, inst)
			if err == nil {
				err = l.vols.terminateVolumeConnections(ctx, rc, inst, vols)
			}
			if err == nil {
				err = l.setMigrationStatus(ctx, rc, mig, "reverted")
			}
			if err == nil {
				err = l.computeAt(mig.StringOrEmpty("source_compute")).Cast(ctx, rc, "finish_revert_resize", map[string]any{
					"instance": encode(inst), "migration": encode(mig), "request_spec": rawOrNull(a.RequestSpec),
				})
			}
			if err != nil {
				l.errorOutMove(ctx, rc, inst, nil, "", err)
			}
			return err
		})
}

// FinishRevertResize is finish_revert_resize (a cast, on the source): the
// instance gets its old flavor, host and node back, the allocations held
// by the migration return to the instance, the VM is powered off, moved
// back to the source node's cluster, given the old CPUs and memory and
// powered on again (unless it was stopped); a grown root disk is replaced
// by its pre-resize copy, as the VMware driver does.
func (l *lifecycle) FinishRevertResize(ctx context.Context, req *rpc.Request) (any, error) {
	_, mig, err := l.resizeArgs(req)
	if err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_finish_revert_resize", method: "finish_revert_resize", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			err := l.finishRevertResize(ctx, rc, inst, mig)
			if err != nil {
				l.errorOutMove(ctx, rc, inst, mig, "", err)
				return err
			}
			l.notify.instanceAction(ctx, rc, inst, "resize.revert", "resize_revert", "end", nil, nil)
			return nil
		})
}

func (l *lifecycle) finishRevertResize(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object) error {
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "resize.revert", "resize_revert", "start", nil, nil)
	oldState := oldVMState(inst)
	old, err := inst.Object("old_flavor")
	if err != nil || old == nil {
		return fmt.Errorf("the instance has no old flavor to revert to: %w", err)
	}
	setInstanceInfo(inst, old)
	inst.SetString("host", mig.StringOrEmpty("source_compute"))
	inst.SetString("node", mig.StringOrEmpty("source_node"))
	if err := l.save(ctx, rc, inst, []any{"resize_reverting"}); err != nil {
		return err
	}
	if err := l.revertAllocation(ctx, inst, mig); err != nil {
		return err
	}
	powerOn := oldState != "stopped"
	// revert_resize left reserved attachments: they get this host's
	// connector before the driver's finish_revert_migration and are
	// completed after (volumes_move.go).
	vols, err := l.vols.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return err
	}
	if err := l.vols.updateVolumeAttachments(ctx, rc, inst, vols); err != nil {
		return err
	}
	if err := l.finishMigration(ctx, rc, inst, mig.StringOrEmpty("source_node"), powerOn, true); err != nil {
		return err
	}
	l.vols.consolidateVolumes(ctx, inst, vols)
	inst.SetDateTime("launched_at", time.Now().UTC())
	dropStashedFlavors(inst)
	if err := l.save(ctx, rc, inst, "resize_reverting"); err != nil {
		return err
	}
	if err := l.vols.completeVolumeAttachments(ctx, rc, vols); err != nil {
		return err
	}
	if powerOn {
		setStates(inst, "active", nil, powerRunning)
	} else {
		setStates(inst, "stopped", nil, powerShutdown)
	}
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	l.updateSchedulerInstanceInfo(ctx, rc, inst)
	return nil
}

// resizePrepAction sends resize.prep.<phase>: legacy
// compute.instance.resize.prep.* (with extra) and versioned
// instance.resize_prep.* with nova's InstanceActionResizePrepPayload 1.3,
// which carries the new flavor.
func (n *notifier) resizePrepAction(ctx context.Context, rc rpc.Context, inst, newFlavor *ovo.Object, phase string, extra map[string]any) {
	if n == nil {
		return
	}
	if n.legacy != nil {
		n.send(ctx, n.legacy, rc, rpc.PriorityInfo, "compute.instance.resize.prep."+phase, n.legacyPayload(inst, extra))
	}
	if n.versioned != nil {
		p := n.instancePayload(rc, inst)
		p["fault"] = nil
		p["new_flavor"] = flavorPayload(newFlavor)
		n.send(ctx, n.versioned, rc, rpc.PriorityInfo, "instance.resize_prep."+phase, versionedObject("InstanceActionResizePrepPayload", "1.3", p))
	}
}
