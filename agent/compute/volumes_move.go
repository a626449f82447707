package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Volumes through the moves of a server, as nova's manager does them
// with the VMware driver: shelve offload destroys the VM (the driver
// detaches the volumes' disks first, their files belong to the backings)
// and hands each volume's attachment back to a reserved one
// (_terminate_volume_connections); unshelve attaches them again before
// the spawn (_prep_block_device), which attaches the disks to the new VM.
// Resize and cold migration hand the attachments over the same way on the
// source and update them with the connector on the destination
// (_update_volume_attachments, _complete_volume_attachments); live
// migration creates the destination's attachments in pre_live_migration
// and deletes the source's after it (or the new ones on a rollback).
//
// One VM serves both ends of a move in the agent, so the disks stay
// attached throughout; when the move took a volume's disk to another
// datastore, the volume's backing is consolidated with it at once (what
// nova's _consolidate_vmdk_volume does only at the detach), so that the
// backing always owns the volume's current file, as cinder's VMDK driver
// expects.

// volumeBDMs returns the instance's volume BDMs. They are read even
// without cinder: the VM's volume disks must still leave it before it is
// destroyed.
func (v *volumes) volumeBDMs(ctx context.Context, rc rpc.Context, inst *ovo.Object) ([]*ovo.Object, error) {
	if v == nil {
		return nil, nil
	}
	bdms, err := v.instanceBDMs(ctx, rc, inst.StringOrEmpty("uuid"))
	if err != nil {
		return nil, err
	}
	var out []*ovo.Object
	for _, b := range bdms {
		if b.StringOrEmpty("destination_type") == "volume" && b.StringOrEmpty("volume_id") != "" {
			out = append(out, b)
		}
	}
	return out, nil
}

// detachVolumeDisks is the volume part of the VMware driver's destroy
// (_detach_instance_volumes) for a caller holding the instance lock: the
// VM powered off and every volume's disk detached, its file kept. A
// missing VM or disk is only logged.
func (v *volumes) detachVolumeDisks(ctx context.Context, inst *ovo.Object, vols []*ovo.Object) {
	if v == nil || len(vols) == 0 {
		return
	}
	vm, err := v.vmOf(ctx, inst)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Instance does not exists. Proceeding to delete instance properties on datastore")
		return
	}
	if vm.PowerState != vcenter.PowerStateOff {
		if err := v.hv.PowerOff(ctx, vm.Ref); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("powering the VM off before detaching its volumes failed")
		}
	}
	for _, b := range vols {
		ci := bdmConnectionInfo(b)
		if len(ci) == 0 {
			continue
		}
		err := v.driverDetach(ctx, inst, ci)
		switch {
		case err == nil:
		case isRemote(err, "DiskNotFound"):
			zerolog.Ctx(ctx).Warn().Err(err).Str("volume_id", b.StringOrEmpty("volume_id")).Msg("The volume was not found on the instance.")
		default:
			zerolog.Ctx(ctx).Error().Err(err).Str("volume_id", b.StringOrEmpty("volume_id")).Msg("Failed to detach the volume before the destroy")
		}
	}
}

// detachBuildVolumes takes the disks of a failed spawn's volumes off its
// VM before the build's clean-up destroys the VM, which would delete
// every file attached to it.
func (v *volumes) detachBuildVolumes(ctx context.Context, inst *ovo.Object, bvols []buildVolume) {
	vols := make([]*ovo.Object, 0, len(bvols))
	for _, bv := range bvols {
		vols = append(vols, bv.bdm)
	}
	v.detachVolumeDisks(context.WithoutCancel(ctx), inst, vols)
}

// terminateVolumeConnections is nova's _terminate_volume_connections:
// each volume's attachment is replaced by a new one without a connector
// (the volume stays reserved for the instance) and the BDM keeps the new
// id; a BDM of the pre-3.44 flow has its connection terminated. An old
// attachment already gone is no error.
func (v *volumes) terminateVolumeConnections(ctx context.Context, rc rpc.Context, inst *ovo.Object, vols []*ovo.Object) error {
	if v == nil || v.api == nil || len(vols) == 0 {
		return nil
	}
	cc := cinderContext(rc)
	var connector map[string]any
	for _, b := range vols {
		volumeID := b.StringOrEmpty("volume_id")
		old := b.StringOrEmpty("attachment_id")
		if old == "" {
			if connector == nil {
				connector = v.connector(ctx, inst)
			}
			if err := v.api.TerminateConnection(ctx, cc, volumeID, connector); err != nil {
				return cinderError(err, "volume", volumeID)
			}
			continue
		}
		id, _, err := v.api.AttachmentCreate(ctx, cc, volumeID, inst.StringOrEmpty("uuid"), nil, "")
		if err != nil {
			return cinderError(err, "volume", volumeID)
		}
		if err := v.api.AttachmentDelete(ctx, cc, old); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return cinderError(err, "attachment", old)
		}
		b.SetString("attachment_id", id)
		if _, err := v.cond.ObjectAction(ctx, rc, b, "save", nil, nil); err != nil {
			return err
		}
		zerolog.Ctx(ctx).Debug().Str("volume_id", volumeID).Str("old_attachment", old).Str("attachment", id).Msg("volume connection terminated; attachment reserved")
	}
	return nil
}

// updateVolumeAttachments is nova's _update_volume_attachments with the
// refresh of the connection info that follows it: each attachment gets
// this host's connector and the BDM the connection info cinder answers.
func (v *volumes) updateVolumeAttachments(ctx context.Context, rc rpc.Context, inst *ovo.Object, vols []*ovo.Object) error {
	if v == nil || v.api == nil || len(vols) == 0 {
		return nil
	}
	cc := cinderContext(rc)
	connector := v.connector(ctx, inst)
	for _, b := range vols {
		att := b.StringOrEmpty("attachment_id")
		if att == "" {
			continue
		}
		ci, err := v.api.AttachmentUpdate(ctx, cc, att, connector, b.StringOrEmpty("device_name"))
		if err != nil {
			return cinderError(err, "attachment", att)
		}
		if err := v.saveConnectionInfo(ctx, rc, b, ci); err != nil {
			return err
		}
	}
	return nil
}

// saveConnectionInfo keeps ci (with the volume id as its serial, as nova
// adds it) in the BDM.
func (v *volumes) saveConnectionInfo(ctx context.Context, rc rpc.Context, b *ovo.Object, ci map[string]any) error {
	if ci == nil {
		return nil
	}
	if _, ok := ci["serial"]; !ok {
		ci["serial"] = b.StringOrEmpty("volume_id")
	}
	raw, err := json.Marshal(ci)
	if err != nil {
		return err
	}
	b.SetString("connection_info", string(raw))
	_, err = v.cond.ObjectAction(ctx, rc, b, "save", nil, nil)
	return err
}

// completeVolumeAttachments is nova's _complete_volume_attachments: the
// volumes are in-use again.
func (v *volumes) completeVolumeAttachments(ctx context.Context, rc rpc.Context, vols []*ovo.Object) error {
	if v == nil || v.api == nil {
		return nil
	}
	cc := cinderContext(rc)
	for _, b := range vols {
		if att := b.StringOrEmpty("attachment_id"); att != "" {
			if err := v.api.AttachmentComplete(ctx, cc, att); err != nil {
				return cinderError(err, "attachment", att)
			}
		}
	}
	return nil
}

// consolidateVolumes runs after the VM moved: a volume whose disk the
// move took to another datastore gets its backing consolidated with it
// (consolidate, nova's _consolidate_vmdk_volume), so that the backing
// owns the file the instance uses. Failures are logged: the detach
// consolidates again.
func (v *volumes) consolidateVolumes(ctx context.Context, inst *ovo.Object, vols []*ovo.Object) {
	if v == nil || len(vols) == 0 {
		return
	}
	hv, err := v.volumeHV()
	if err != nil {
		return
	}
	vm, err := v.vmOf(ctx, inst)
	if err != nil {
		return
	}
	for _, b := range vols {
		t, data := connectionData(bdmConnectionInfo(b))
		if t != "vmdk" {
			continue
		}
		volumeID, _ := data["volume_id"].(string)
		disk, err := hv.FindVolumeDisk(ctx, vm.Ref, vm.ExtraConfig[volumeOptionPrefix+volumeID])
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Str("volume_id", volumeID).Msg("the moved VM's volume disk was not found")
			continue
		}
		if err := v.consolidate(ctx, hv, vm, data, disk); err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Str("volume_id", volumeID).Msg("consolidating the volume's backing after the move failed")
		}
	}
}

// preLiveMigrationVolumes is the volume part of nova's
// pre_live_migration (on the destination): each volume gets a new
// attachment with this host's connector, the BDM keeps it and the
// refreshed connection info, and the attachments are completed. It
// returns the old attachment ids by volume (old_vol_attachment_ids). On
// failure the new attachments are deleted and the BDMs get their old ids
// back, as nova does.
func (v *volumes) preLiveMigrationVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object) (map[string]string, error) {
	old := map[string]string{}
	vols, err := v.volumeBDMs(ctx, rc, inst)
	if err != nil || len(vols) == 0 {
		return old, err
	}
	if _, err := v.cinderAPI(); err != nil {
		return nil, err
	}
	cc := cinderContext(rc)
	err = func() error {
		connector := v.connector(ctx, inst)
		for _, b := range vols {
			prev := b.StringOrEmpty("attachment_id")
			if prev == "" {
				continue
			}
			id, ci, err := v.api.AttachmentCreate(ctx, cc, b.StringOrEmpty("volume_id"), inst.StringOrEmpty("uuid"), connector, b.StringOrEmpty("device_name"))
			if err != nil {
				return cinderError(err, "volume", b.StringOrEmpty("volume_id"))
			}
			old[b.StringOrEmpty("volume_id")] = prev
			b.SetString("attachment_id", id)
			if _, err := v.cond.ObjectAction(ctx, rc, b, "save", nil, nil); err != nil {
				return err
			}
			if ci == nil {
				got, err := v.api.Attachment(ctx, cc, id)
				if err != nil {
					return cinderError(err, "attachment", id)
				}
				ci, _ = got["connection_info"].(map[string]any)
			}
			if err := v.saveConnectionInfo(ctx, rc, b, ci); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		for _, b := range vols {
			prev, ok := old[b.StringOrEmpty("volume_id")]
			if !ok {
				continue
			}
			if derr := v.api.AttachmentDelete(context.WithoutCancel(ctx), cc, b.StringOrEmpty("attachment_id")); derr != nil && !errors.Is(derr, cloud.ErrNotFound) {
				zerolog.Ctx(ctx).Warn().Err(derr).Msg("deleting the new attachment failed")
			}
			b.SetString("attachment_id", prev)
			if _, serr := v.cond.ObjectAction(context.WithoutCancel(ctx), rc, b, "save", nil, nil); serr != nil {
				zerolog.Ctx(ctx).Warn().Err(serr).Msg("restoring the BDM's attachment failed")
			}
		}
		return nil, err
	}
	if err := v.completeVolumeAttachments(ctx, rc, vols); err != nil {
		return nil, err
	}
	return old, nil
}

// removeSourceVolumeConnections is nova's
// _post_live_migration_remove_source_vol_connections: the source's
// attachments (those of the BDMs as they were before the migration) are
// deleted, or for the pre-3.44 flow the connections terminated. Failures
// are logged, so that the migration still completes.
func (v *volumes) removeSourceVolumeConnections(ctx context.Context, rc rpc.Context, inst *ovo.Object, source []*ovo.Object) {
	if v == nil || v.api == nil {
		return
	}
	cc := cinderContext(rc)
	for _, b := range source {
		volumeID := b.StringOrEmpty("volume_id")
		var err error
		if att := b.StringOrEmpty("attachment_id"); att != "" {
			err = v.api.AttachmentDelete(ctx, cc, att)
		} else {
			err = v.api.TerminateConnection(ctx, cc, volumeID, v.connector(ctx, inst))
		}
		if err != nil && !errors.Is(err, cloud.ErrNotFound) {
			zerolog.Ctx(ctx).Error().Err(err).Str("volume_id", volumeID).Str("host", v.host).
				Msg("Connection for volume not terminated on source host during post_live_migration")
		}
	}
}

// rollbackVolumeBDMs is nova's _rollback_volume_bdms (on the source,
// after a failed live migration): a BDM whose attachment the destination
// replaced has the new attachment deleted and gets the source's
// attachment and connection info back. nova first has the destination
// remove its connections (remove_volume_connection), whose VMware
// driver_detach would take the disks off the one VM both ends share:
// the agent leaves them attached.
func (v *volumes) rollbackVolumeBDMs(ctx context.Context, rc rpc.Context, inst *ovo.Object, source []*ovo.Object) {
	if v == nil || v.api == nil || len(source) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	cur, err := v.volumeBDMs(ctx, rc, inst)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("reading the BDMs to roll back failed")
		return
	}
	orig := map[string]*ovo.Object{}
	for _, b := range source {
		orig[b.StringOrEmpty("volume_id")] = b
	}
	cc := cinderContext(rc)
	for _, b := range cur {
		o, ok := orig[b.StringOrEmpty("volume_id")]
		if !ok {
			continue
		}
		att, oatt := b.StringOrEmpty("attachment_id"), o.StringOrEmpty("attachment_id")
		if att == oatt && b.StringOrEmpty("connection_info") == o.StringOrEmpty("connection_info") {
			continue
		}
		if att != "" && oatt != "" && att != oatt {
			if err := v.api.AttachmentDelete(ctx, cc, att); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				zerolog.Ctx(ctx).Warn().Err(err).Str("attachment_id", att).Str("volume_id", b.StringOrEmpty("volume_id")).
					Msg("Ignoring cinderclient exception when attempting to delete attachment while rolling back volume bdms.")
			}
			b.SetString("attachment_id", oatt)
		}
		if ci := o.StringOrEmpty("connection_info"); ci != "" {
			b.SetString("connection_info", ci)
		}
		if _, err := v.cond.ObjectAction(ctx, rc, b, "save", nil, nil); err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Str("volume_id", b.StringOrEmpty("volume_id")).Msg("Exception while attempting to rollback BDM for volume.")
		}
	}
}

// shelveOffloadVolumes is the volume part of _shelve_offload_instance
// around the destroy: before it, the disks are detached from the VM
// (driver.destroy with block_device_info); after it, the connections are
// terminated. It returns the function to call after the destroy.
func (v *volumes) shelveOffloadVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object) (func() error, error) {
	vols, err := v.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return nil, fmt.Errorf("reading the instance's block device mappings: %w", err)
	}
	v.detachVolumeDisks(ctx, inst, vols)
	return func() error { return v.terminateVolumeConnections(ctx, rc, inst, vols) }, nil
}

// rebuildDetachVolumes is detach_block_devices of nova's
// _rebuild_default_impl, before the VM is destroyed: each volume's disk
// leaves the VM (its file stays with the backing) and its attachment is
// replaced by a reserved one (attachment_create, then _detach_volume's
// attachment_delete), which the BDM keeps. It returns the volume BDMs,
// which the spawn's _prep_block_device attaches again.
func (v *volumes) rebuildDetachVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object) ([]*ovo.Object, error) {
	vols, err := v.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return nil, fmt.Errorf("reading the instance's block device mappings: %w", err)
	}
	v.detachVolumeDisks(ctx, inst, vols)
	if err := v.terminateVolumeConnections(ctx, rc, inst, vols); err != nil {
		return nil, err
	}
	return vols, nil
}
