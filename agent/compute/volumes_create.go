package compute

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// Volumes nova-compute creates at a build (nova/virt/block_device.py
// DriverVolImageBlockDevice, DriverVolBlankBlockDevice,
// DriverVolSnapshotBlockDevice): a BDM with destination_type volume whose
// source is an image, a snapshot or nothing (blank) has no volume yet.
// nova creates it in cinder (volume_api.create with the BDM's size and
// volume type; the image or the snapshot as its source; a blank one named
// "<instance uuid>-blank-vol"), waits until cinder has it available
// (_await_block_device_map_created), creates a reserved attachment for
// the instance and keeps both ids in the BDM; the volume is then attached
// as any other.

// Nova's [DEFAULT] block_device_allocate_retries and
// block_device_allocate_retries_interval defaults.
const (
	defaultAllocateRetries  = 60
	defaultAllocateInterval = 3 * time.Second
)

// allocatePolicy is [DEFAULT] block_device_allocate_retries and
// block_device_allocate_retries_interval.
type allocatePolicy struct {
	retries  int
	interval time.Duration
}

// createdSources are the BDM sources whose volume nova-compute creates.
var createdSources = map[string]bool{"image": true, "blank": true, "snapshot": true} //nolint:gochecknoglobals // a table

// needsVolumeCreate reports a volume BDM whose volume does not exist yet.
func needsVolumeCreate(b *ovo.Object) bool {
	return b.StringOrEmpty("destination_type") == "volume" && createdSources[b.StringOrEmpty("source_type")] && b.StringOrEmpty("volume_id") == ""
}

// allocateSchedule returns the number of attempts and the wait between
// them, as _await_block_device_map_created counts them: retries + 1
// attempts (one when retries is 0).
func (v *volumes) allocateSchedule() (int, time.Duration) {
	retries, interval := defaultAllocateRetries, defaultAllocateInterval
	if v.allocate != nil {
		retries, interval = v.allocate.retries, v.allocate.interval
	}
	attempts := 1
	if retries >= 1 {
		attempts = retries + 1
	}
	return attempts, interval
}

// volumeNotCreated is nova's VolumeNotCreated.
func volumeNotCreated(id string, seconds, attempts int, status string) error {
	return novaError("VolumeNotCreated", fmt.Sprintf("Volume %s did not finish being created even after we waited %d seconds or %d attempts. And its status is %s.",
		id, seconds, attempts, status), 500, map[string]any{"volume_id": id, "seconds": seconds, "attempts": attempts, "volume_status": status})
}

// awaitVolumeCreated is _await_block_device_map_created: the volume is
// read until it leaves "creating" and "downloading"; available is
// success, any other status or running out of attempts VolumeNotCreated.
func (v *volumes) awaitVolumeCreated(ctx context.Context, cc cloud.CinderContext, id string) error {
	attempts, interval := v.allocateSchedule()
	start := time.Now()
	status := ""
	attempt := 1
	for ; attempt <= attempts; attempt++ {
		vol, err := v.api.Volume(ctx, cc, id)
		if err != nil {
			return cinderError(err, "volume", id)
		}
		status = vol.Status
		if status != "creating" && status != "downloading" {
			if status == "available" {
				return nil
			}
			zerolog.Ctx(ctx).Warn().Str("volume_id", id).Str("status", status).Msg("Volume finished being created but its status is not available.")
			break
		}
		if attempt == attempts {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return volumeNotCreated(id, int(time.Since(start).Seconds()), min(attempt, attempts), status)
}

// createBDMVolume is _create_volume for a BDM of source image, blank or
// snapshot: the volume created (no availability zone: nova's
// [cinder] cross_az_attach default), awaited, given a reserved attachment
// for the instance, and both ids saved in the BDM at once, so that a
// later failure or the server's delete finds the volume. A volume that
// never became available is deleted when the BDM says
// delete_on_termination, as _call_wait_func does.
func (v *volumes) createBDMVolume(ctx context.Context, rc rpc.Context, inst, b *ovo.Object) error {
	cc := cinderContext(rc)
	uuid := inst.StringOrEmpty("uuid")
	size, _ := b.Int("volume_size")
	spec := cloud.VolumeCreate{Size: size, VolumeType: b.StringOrEmpty("volume_type")}
	switch b.StringOrEmpty("source_type") {
	case "image":
		spec.ImageID = b.StringOrEmpty("image_id")
	case "blank":
		spec.Name = uuid + "-blank-vol"
	case "snapshot":
		snapID := b.StringOrEmpty("snapshot_id")
		snap, err := v.api.Snapshot(ctx, cc, snapID)
		if err != nil {
			return cinderError(err, "snapshot", snapID)
		}
		spec.SnapshotID = snap.ID
		// The original volume's type when the BDM names none.
		if spec.VolumeType == "" && snap.VolumeID != "" {
			orig, err := v.api.Volume(ctx, cc, snap.VolumeID)
			if err != nil {
				return cinderError(err, "volume", snap.VolumeID)
			}
			spec.VolumeType = orig.VolumeType
		}
	}
	vol, err := v.api.CreateVolume(ctx, cc, spec)
	if err != nil {
		return cinderError(err, "volume", "")
	}
	zerolog.Ctx(ctx).Info().Str("volume_id", vol.ID).Str("source_type", b.StringOrEmpty("source_type")).Msg("created the volume of a block device mapping")
	if err := v.awaitVolumeCreated(ctx, cc, vol.ID); err != nil {
		if del, _ := b.Bool("delete_on_termination"); del && isRemote(err, "VolumeNotCreated") {
			if derr := v.api.DeleteVolume(context.WithoutCancel(ctx), cc, vol.ID); derr != nil {
				zerolog.Ctx(ctx).Warn().Err(derr).Str("volume_id", vol.ID).Msg("Failed to delete volume")
			}
		}
		return err
	}
	attID, _, err := v.api.AttachmentCreate(ctx, cc, vol.ID, uuid, nil, "")
	if err != nil {
		return cinderError(err, "volume", vol.ID)
	}
	b.SetString("volume_id", vol.ID)
	b.SetString("attachment_id", attID)
	if _, err := v.cond.ObjectAction(ctx, rc, b, "save", nil, nil); err != nil {
		return err
	}
	return nil
}

// cleanupBuildVolumes is the volume part of a build whose block devices
// could not be prepared (nova's _shutdown_instance, then _cleanup_volumes
// for the BuildAbortException or the instance deleted meanwhile): every
// volume's attachment is deleted and every volume whose BDM says
// delete_on_termination is deleted.
func (v *volumes) cleanupBuildVolumes(ctx context.Context, rc rpc.Context, vols []*ovo.Object) {
	if v == nil || v.api == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	cc := cinderContext(rc)
	log := zerolog.Ctx(ctx)
	for _, b := range vols {
		if att := b.StringOrEmpty("attachment_id"); att != "" {
			if err := v.api.AttachmentDelete(ctx, cc, att); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				log.Warn().Err(err).Str("volume_id", b.StringOrEmpty("volume_id")).Msg("Ignoring unknown exception for volume")
			}
		}
	}
	for _, b := range vols {
		id := b.StringOrEmpty("volume_id")
		if del, _ := b.Bool("delete_on_termination"); del && id != "" {
			log.Debug().Str("volume_id", id).Msg("terminating bdm")
			if err := v.api.DeleteVolume(ctx, cc, id); err != nil {
				log.Warn().Err(err).Str("volume_id", id).Msg("Failed to delete volume")
			}
		}
	}
}
