package compute

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// imageLister lists glance images with filters (cloud.Glance.ListImages),
// what nova's _rotate_backups needs beyond imageWriter.
type imageLister interface {
	ListImages(ctx context.Context, token string, filters map[string]string, sortKey, sortDir string) ([]cloud.Image, error)
}

// BackupInstance is backup_instance (a cast from the API's createBackup,
// with task_state image_backup): @wrap_exception, @reverts_task_state,
// @wrap_instance_event and @wrap_instance_fault around
// _do_snapshot_instance — nova's _snapshot_instance with expected task
// state image_backup (the VMware driver's snapshot to the glance image the
// API created; delete_image_on_error) — then _rotate_backups: the
// instance's backups of backup_type beyond rotation, oldest first, deleted
// from glance.
func (l *lifecycle) BackupInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		ImageID    string `json:"image_id"`
		BackupType string `json:"backup_type"`
		Rotation   int    `json:"rotation"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_backup_instance", method: "backup_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			if err := l.snapshotInstanceExpecting(ctx, rc, inst, a.ImageID, "image_backup"); err != nil {
				return l.deleteImageOnError(ctx, rc, a.ImageID, err)
			}
			return l.rotateBackups(ctx, rc, inst, a.BackupType, a.Rotation)
		})
}

// snapshotInstanceExpecting is nova's _snapshot_instance(expected_task_state):
// the power state saved, snapshot.start, the driver's snapshot whose first
// task state update expects expected, task_state None (expected
// image_uploading) and snapshot.end. An instance gone meanwhile ends it
// quietly (the image deleted unless active); a missing image clears the
// task state.
func (l *lifecycle) snapshotInstanceExpecting(ctx context.Context, rc rpc.Context, inst *ovo.Object, imageID, expected string) error {
	log := zerolog.Ctx(ctx)
	if vm, err := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid")); err == nil {
		inst.SetInt("power_state", novaPowerState(vm.PowerState))
	} else if errors.Is(err, vcenter.ErrNotFound) {
		inst.SetInt("power_state", powerNoState)
	}
	err := func() error {
		if err := l.save(ctx, rc, inst, nil); err != nil {
			return err
		}
		log.Info().Str("image_id", imageID).Msg("instance snapshotting")
		if p, _ := inst.Int("power_state"); p != powerRunning {
			log.Warn().Int64("state", p).Msg("trying to snapshot a non-running instance")
		}
		l.notify.instanceAction(ctx, rc, inst, "snapshot", "", "start", nil, nil)
		l.notify.snapshotAction(ctx, rc, inst, "start", imageID)
		start := time.Now()
		update := func(ctx context.Context, state, exp string) error {
			inst.SetString("task_state", state)
			return l.save(ctx, rc, inst, exp)
		}
		if err := l.driverSnapshot(ctx, rc, inst, imageID, expected, update); err != nil {
			return err
		}
		log.Info().Dur("took", time.Since(start)).Msg("snapshotted the instance on the hypervisor")
		inst.SetNull("task_state")
		if err := l.save(ctx, rc, inst, "image_uploading"); err != nil {
			return err
		}
		l.notify.instanceAction(ctx, rc, inst, "snapshot", "", "end", nil, nil)
		l.notify.snapshotAction(ctx, rc, inst, "end", imageID)
		return nil
	}()
	switch {
	case err == nil:
		return nil
	case instanceGone(err) || isRemote(err, "InstanceNotRunning"):
		log.Debug().Err(err).Msg("instance disappeared during snapshot")
		if meta, gerr := l.images.Image(ctx, rc.String("auth_token"), imageID); gerr == nil && meta.Status != "active" {
			if iw, ok := l.images.(imageWriter); ok {
				if derr := iw.DeleteImage(context.WithoutCancel(ctx), rc.String("auth_token"), imageID); derr != nil {
					log.Warn().Err(derr).Msg("error while trying to clean up the image")
				}
			}
		}
		return nil
	case errors.Is(err, cloud.ErrNotFound):
		inst.SetNull("task_state")
		if serr := l.save(ctx, rc, inst, nil); serr != nil {
			return serr
		}
		log.Warn().Err(err).Msg("image not found during snapshot")
		return nil
	}
	return err
}

// rotateBackups is nova's _rotate_backups: the images with image_type
// backup, the backup_type and the instance's uuid, newest first; those
// beyond rotation are deleted from the oldest on, a failed deletion
// logged and skipped.
func (l *lifecycle) rotateBackups(ctx context.Context, rc rpc.Context, inst *ovo.Object, backupType string, rotation int) error {
	log := zerolog.Ctx(ctx)
	lister, ok := l.images.(imageLister)
	iw, ok2 := l.images.(imageWriter)
	if !ok || !ok2 || l.images == nil {
		return fmt.Errorf("backup: glance is not configured for listing and deleting images")
	}
	token := rc.String("auth_token")
	images, err := lister.ListImages(ctx, token, map[string]string{
		"image_type": "backup", "backup_type": backupType, "instance_uuid": inst.StringOrEmpty("uuid"),
	}, "created_at", "desc")
	if err != nil {
		return err
	}
	log.Debug().Int("num_images", len(images)).Int("rotation", rotation).Msg("found backup images")
	if len(images) <= rotation {
		return nil
	}
	excess := len(images) - rotation
	log.Debug().Int("excess", excess).Msg("rotating out backups")
	for range excess {
		id := images[len(images)-1].ID
		images = images[:len(images)-1]
		log.Debug().Str("image_id", id).Msg("deleting image")
		if err := iw.DeleteImage(ctx, token, id); err != nil {
			if errors.Is(err, cloud.ErrNotFound) {
				log.Info().Str("image_id", id).Msg("failed to find image to delete")
			} else {
				log.Info().Err(err).Str("image_id", id).Msg("failed to delete image during deleting excess backups; continuing for next image")
			}
		}
	}
	return nil
}
