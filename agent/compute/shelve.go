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

// shelvedOffloadTime is nova's [DEFAULT] shelved_offload_time: 0 (nova's
// default) offloads a shelved instance at once; the agent has no periodic
// offload, so any other value keeps it SHELVED until shelve_offload_instance.
const shelvedOffloadTime = 0

// shelvingStates maps the driver snapshot's task states to the shelve's.
var shelvingStates = map[string]string{ //nolint:gochecknoglobals // a table
	"image_pending_upload": "shelving_image_pending_upload",
	"image_uploading":      "shelving_image_uploading",
	"shelving":             "shelving",
}

// ShelveInstance is shelve_instance, as nova-compute does it: shelve.start,
// the VM powered off (the VMware driver powers off hard), the driver's
// snapshot to the image nova-api created (task states
// shelving_image_pending_upload and shelving_image_uploading), the
// shelved_* keys in system_metadata, SHELVED with the VM's power state,
// shelve.end; with shelved_offload_time 0 the instance is offloaded at
// once (see ShelveOffloadInstance).
func (l *lifecycle) ShelveInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		ImageID string `json:"image_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_shelve_instance", method: "shelve_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			return l.shelve(ctx, req.Context, inst, a.ImageID)
		})
}

// shelve is nova's _shelve_instance.
func (l *lifecycle) shelve(ctx context.Context, rc rpc.Context, inst *ovo.Object, imageID string) error {
	zerolog.Ctx(ctx).Info().Msg("shelving")
	offload := shelvedOffloadTime == 0
	l.notify.instanceAction(ctx, rc, inst, "shelve", "shelve", "start", nil, nil)
	update := func(ctx context.Context, state, expected string) error {
		inst.SetString("task_state", shelvingStates[state])
		return l.save(ctx, rc, inst, shelvingStates[expected])
	}
	vm, err := l.powerOffForShelve(ctx, inst)
	if err != nil {
		return err
	}
	if err := l.driverSnapshot(ctx, rc, inst, imageID, "shelving", update); err != nil {
		return err
	}
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		sm["shelved_at"] = time.Now().UTC().Format("2006-01-02T15:04:05.000000")
		sm["shelved_image_id"] = imageID
		sm["shelved_host"] = l.host
		if err := inst.Set("system_metadata", sm); err != nil {
			return err
		}
	}
	inst.SetString("vm_state", "shelved")
	inst.SetNull("task_state")
	if offload {
		inst.SetString("task_state", "shelving_offloading")
	}
	// The VM was powered off above and the snapshot leaves it off: nova's
	// _get_power_state would read SHUTDOWN (a round trip the agent saves).
	inst.SetInt("power_state", powerShutdown)
	if err := l.save(ctx, rc, inst, []any{"shelving", "shelving_image_uploading"}); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "shelve", "shelve", "end", nil, nil)
	if offload {
		return l.shelveOffload(ctx, rc, inst, &vm)
	}
	return nil
}

// powerOffForShelve is nova's _power_off_instance with the VMware driver:
// a hard power off. It returns the VM as read before, powered off now.
func (l *lifecycle) powerOffForShelve(ctx context.Context, inst *ovo.Object) (vcenter.VM, error) {
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return vm, err
	}
	if vm.PowerState != vcenter.PowerStateOff {
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return vm, err
		}
		vm.PowerState = vcenter.PowerStateOff
	}
	return vm, nil
}

// ShelveOffloadInstance is shelve_offload_instance: shelve_offload.start,
// the VM powered off and destroyed, the instance's allocations removed,
// SHELVED_OFFLOADED, host and node cleared, the schedulers told,
// shelve_offload.end.
func (l *lifecycle) ShelveOffloadInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_shelve_offload_instance", method: "shelve_offload_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			return l.shelveOffload(ctx, req.Context, inst, nil)
		})
}

// shelveOffload is nova's _shelve_offload_instance. off is the VM as the
// shelve just powered it off (nil: read it here).
func (l *lifecycle) shelveOffload(ctx context.Context, rc rpc.Context, inst *ovo.Object, off *vcenter.VM) error {
	log := zerolog.Ctx(ctx)
	log.Info().Msg("shelve offloading")
	uuid := inst.StringOrEmpty("uuid")
	l.notify.instanceAction(ctx, rc, inst, "shelve_offload", "shelve_offload", "start", nil, nil)
	vm, err := l.offloadPowerOff(ctx, inst, off)
	if err != nil && !errors.Is(err, vcenter.ErrNotFound) {
		return err
	}
	// nova's _get_power_state after the power off: SHUTDOWN, or NOSTATE
	// without a VM.
	power := int64(powerShutdown)
	if err != nil {
		power = powerNoState
	}
	// The volumes' disks leave the VM before it is destroyed (their files
	// belong to the backings), and their connections are terminated after
	// (volumes_move.go).
	afterDestroy, verr := l.vols.shelveOffloadVolumes(ctx, rc, inst)
	if verr != nil {
		return verr
	}
	if err == nil {
		if err := l.destroyOffloaded(ctx, inst, vm); err != nil {
			return err
		}
	}
	if err := afterDestroy(); err != nil {
		return err
	}
	if l.pl != nil {
		if _, err := l.pl.DeleteAllocations(ctx, uuid); err != nil {
			log.Warn().Err(err).Msg("removing the shelved instance's allocations failed")
		}
	}
	inst.SetInt("power_state", power)
	inst.SetString("vm_state", "shelved_offloaded")
	inst.SetNull("task_state")
	if err := l.save(ctx, rc, inst, []any{"shelving", "shelving_offloading"}); err != nil {
		return err
	}
	inst.SetNull("host")
	inst.SetNull("node")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	if err := l.sched.Cast(ctx, rc, "delete_instance_info", map[string]any{"host_name": l.host, "instance_uuid": uuid}); err != nil {
		log.Warn().Err(err).Msg("delete_instance_info to the scheduler failed")
	}
	l.notify.instanceAction(ctx, rc, inst, "shelve_offload", "shelve_offload", "end", nil, nil)
	return nil
}

// offloadPowerOff is the power off of nova's _shelve_offload_instance: the
// VM (off, when the shelve has just powered it off; else read and powered
// off), or an error wrapping vcenter.ErrNotFound when there is none.
func (l *lifecycle) offloadPowerOff(ctx context.Context, inst *ovo.Object, off *vcenter.VM) (vcenter.VM, error) {
	if off != nil && off.PowerState == vcenter.PowerStateOff {
		return *off, nil
	}
	vm, err := l.vmRead(ctx, inst)
	if isRemote(err, "InstanceNotFound") {
		return vm, fmt.Errorf("instance %s: %w", inst.StringOrEmpty("uuid"), vcenter.ErrNotFound)
	}
	if err != nil {
		return vm, err
	}
	if vm.PowerState != vcenter.PowerStateOff {
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return vm, err
		}
		vm.PowerState = vcenter.PowerStateOff
	}
	return vm, nil
}

// UnshelveInstance is unshelve_instance: unshelve.start, task_state
// spawning, the instance claimed on this host and the node the conductor
// chose, the VM spawned from the shelve image, the image deleted (nova's
// _delete_snapshot_of_shelved_instance), ACTIVE with the shelved_* keys
// gone from system_metadata, the schedulers told, unshelve.end. A failed
// spawn releases the allocations, clears host and node and leaves the
// instance SHELVED_OFFLOADED with the fault.
func (l *lifecycle) UnshelveInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Image map[string]any `json:"image"`
		Node  *string        `json:"node"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_unshelve_instance", method: "unshelve_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			node := inst.StringOrEmpty("node")
			if a.Node != nil && *a.Node != "" {
				node = *a.Node
			}
			return l.unshelve(ctx, req.Context, inst, a.Image, node)
		})
}

// unshelve is nova's _unshelve_instance.
func (l *lifecycle) unshelve(ctx context.Context, rc rpc.Context, inst *ovo.Object, image map[string]any, node string) error {
	log := zerolog.Ctx(ctx)
	log.Info().Msg("unshelving")
	uuid := inst.StringOrEmpty("uuid")
	l.notify.instanceAction(ctx, rc, inst, "unshelve", "unshelve", "start", nil, nil)
	inst.SetString("task_state", "spawning")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	if node == "" {
		return errors.New("unshelve: the conductor chose no node")
	}
	if err := l.requireFlavor(ctx, rc, inst); err != nil {
		return err
	}
	shelvedImageRef := inst.StringOrEmpty("image_ref")
	imageID, _ := image["id"].(string)
	if imageID == "" {
		if sm, _ := inst.Dict("system_metadata"); sm != nil {
			imageID, _ = sm["shelved_image_id"].(string)
		}
	}
	if imageID == "" {
		imageID = shelvedImageRef
	}
	// The resource claim (instance_claim): this host and node.
	inst.SetString("host", l.host)
	inst.SetString("node", node)
	inst.SetString("launched_on", l.host)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	// _prep_block_device: the volumes attached in cinder again, with the
	// connector of this host (volumes.go); spawn attaches their disks.
	vols, err := l.vols.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return err
	}
	bvols, err := l.vols.prepVolumes(ctx, rc, inst, vols)
	if err == nil {
		err = l.spawnVolumes(ctx, rc, inst, node, map[string]any{"id": imageID}, bvols)
	}
	if err != nil {
		log.Error().Err(err).Msg("instance failed to spawn")
		l.cleanupFailedBuild(ctx, inst)
		if terr := l.vols.terminateVolumeConnections(ctx, rc, inst, vols); terr != nil {
			log.Warn().Err(terr).Msg("terminating the volume connections after the failed unshelve failed")
		}
		l.forgetSpawnCache()
		if l.pl != nil {
			if _, derr := l.pl.DeleteAllocations(ctx, uuid); derr != nil {
				log.Warn().Err(derr).Msg("releasing the allocations failed")
			}
		}
		inst.SetNull("host")
		inst.SetNull("node")
		return err
	}
	if _, ok := image["id"].(string); ok {
		if iw, ok := l.images.(imageWriter); ok && l.images != nil {
			if err := iw.DeleteImage(ctx, rc.String("auth_token"), imageID); err != nil {
				log.Warn().Err(err).Str("image_id", imageID).Msg("failed to delete the snapshot of the shelved instance")
			}
		}
	}
	setStates(inst, "active", nil, powerRunning)
	inst.SetDateTime("launched_at", time.Now().UTC())
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		delete(sm, "shelved_at")
		delete(sm, "shelved_image_id")
		delete(sm, "shelved_host")
		if err := inst.Set("system_metadata", sm); err != nil {
			return err
		}
	}
	if err := l.save(ctx, rc, inst, "spawning"); err != nil {
		return err
	}
	l.updateSchedulerInstanceInfo(ctx, rc, inst)
	l.notify.instanceAction(ctx, rc, inst, "unshelve", "unshelve", "end", nil, nil)
	return nil
}

// destroyOffloaded destroys the offloaded instance's VM (already off) and
// what is left of its disks.
func (l *lifecycle) destroyOffloaded(ctx context.Context, inst *ovo.Object, vm vcenter.VM) error {
	if err := l.hv.Destroy(ctx, vm.Ref); err != nil && !errors.Is(err, vcenter.ErrNotFound) {
		return err
	}
	l.removeDiskDirs(ctx, inst, vm)
	return nil
}

// removeDiskDirs deletes what Destroy left of the VM's disks: the
// directories of its disks named after the instance. Destroy deletes the
// directory of the .vmx, which is not where the disks are when vCenter put
// the VM's files elsewhere (the simulator names it after the VM); an
// offloaded instance must leave nothing behind for its unshelve, which
// copies its disk to the same place.
func (l *lifecycle) removeDiskDirs(ctx context.Context, inst *ovo.Object, vm vcenter.VM) {
	uuid := inst.StringOrEmpty("uuid")
	seen := map[vcenter.DatastorePath]bool{}
	// Destroy has deleted the directory of the .vmx file already.
	if vmx, err := vcenter.ParseDatastorePath(vm.VMPathName); err == nil {
		seen[vmx.Dir()] = true
	}
	for _, d := range vm.Disks {
		p, err := vcenter.ParseDatastorePath(d.FileName)
		if err != nil || p.Dir().Base() != uuid || seen[p.Dir()] {
			continue
		}
		seen[p.Dir()] = true
		dc, err := l.vmDatacenter(ctx, inst, vm, p.Datastore)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("no datacenter for the offloaded instance's disks")
			continue
		}
		if ok, err := l.fileExists(ctx, dc, p); err != nil || !ok {
			continue
		}
		if err := l.hv.DeleteDatastoreFile(ctx, dc, p.Dir()); err != nil && !errors.Is(err, vcenter.ErrNotFound) {
			zerolog.Ctx(ctx).Warn().Err(err).Str("path", p.Dir().String()).Msg("removing the offloaded instance's disk directory failed")
		}
	}
}

// fileChecker is the datastore look-up removeDiskDirs uses when the
// hypervisor has it (vcenter.Session.FileExists).
type fileChecker interface {
	FileExists(ctx context.Context, dc string, p vcenter.DatastorePath) (bool, error)
}

// fileExists reports whether p exists; without the look-up it assumes so.
func (l *lifecycle) fileExists(ctx context.Context, dc string, p vcenter.DatastorePath) (bool, error) {
	if fc, ok := l.hv.(fileChecker); ok {
		return fc.FileExists(ctx, dc, p)
	}
	return true, nil
}
