package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// revertToSnapshot is cinder's VolumeManager.revert_to_snapshot with the
// VMDK driver. The manager first takes a backup snapshot ("[revert]
// volume <id> backup snapshot", no quota; the driver's
// snapshot_revert_use_temp_snapshot is the default True), then asks the
// driver, whose revert_to_snapshot refuses a template snapshot (one with
// a provider_location: InvalidSnapshot "Cannot revert to template based
// snapshot"), does nothing for a volume without a backing, and otherwise
// reverts the backing to its VM snapshot snapshot-<id>
// (SnapshotNotFoundException when there is none). On failure the volume
// is error, the snapshot available again, and the backup snapshot stays
// (the manager deletes it only after a successful revert); on success
// both are available and the backup snapshot deleted. volume.revert.* and
// snapshot.revert.* are sent either way. No user message.
func (m *Manager) revertToSnapshot(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume   objectPrimitive `json:"volume"`
		Snapshot objectPrimitive `json:"snapshot"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	vol, snap := args.Volume, args.Snapshot
	volID, snapID := vol.str("id"), snap.str("id")
	log := m.log.With().Str("volume_id", volID).Str("snapshot_id", snapID).Logger()
	log.Info().Msg("start to perform revert to snapshot process")
	m.notify(ctx, req.Context, "volume.revert.start", vol, nil)
	m.notifySnapshot(ctx, req.Context, "snapshot.revert.start", snap)
	var backupID string
	err := m.needDriver()
	if err == nil {
		backupID, err = m.createBackupSnapshot(ctx, req.Context, vol)
	}
	if err == nil {
		err = m.driverRevert(ctx, volID, snapID)
	}
	if err != nil {
		m.notify(ctx, req.Context, "volume.revert.end", vol, nil)
		m.notifySnapshot(ctx, req.Context, "snapshot.revert.end", snap)
		log.Error().Err(err).Msg("volume revert to snapshot failed")
		now := utcNow()
		if _, uerr := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'error', updated_at = ? WHERE id = ? AND status = 'reverting' AND deleted = 0", now, volID); uerr != nil {
			log.Error().Err(uerr).Msg("failed to reset the volume's status to error")
		}
		if _, uerr := m.db.ExecContext(ctx, "UPDATE snapshots SET status = 'available', updated_at = ? WHERE id = ? AND status = 'restoring' AND deleted = 0", now, snapID); uerr != nil {
			log.Error().Err(uerr).Msg("failed to reset the snapshot's status to available")
		}
		return nil, err
	}
	now := utcNow()
	res, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'available', updated_at = ? WHERE id = ? AND status = 'reverting' AND deleted = 0", now, volID)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, cinderError("BadResetResourceStatus", fmt.Sprintf("Bad reset resource status : Revert finished, but failed to reset volume %s status to available, please manually reset it.", volID))
	}
	res, err = m.db.ExecContext(ctx, "UPDATE snapshots SET status = 'available', updated_at = ? WHERE id = ? AND status = 'restoring' AND deleted = 0", now, snapID)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, cinderError("BadResetResourceStatus", fmt.Sprintf("Bad reset resource status : Revert finished, but failed to reset snapshot %s status to available, please manually reset it.", snapID))
	}
	if backupID != "" {
		obj, err := m.snapshotObject(ctx, backupID)
		if err == nil {
			err = m.deleteSnapshotObject(ctx, req.Context, obj, false)
		}
		if err != nil {
			return nil, err
		}
	}
	log.Info().Msg("volume reverted to snapshot successfully")
	vol.Data["status"] = json.RawMessage(`"available"`)
	snap.Data["status"] = json.RawMessage(`"available"`)
	m.notify(ctx, req.Context, "volume.revert.end", vol, nil)
	m.notifySnapshot(ctx, req.Context, "snapshot.revert.end", snap)
	return nil, nil
}

// createBackupSnapshot is the manager's _create_backup_snapshot: a
// snapshot row (creating, 0%, use_quota false) created and taken with
// create_snapshot (holding its workers row).
func (m *Manager) createBackupSnapshot(ctx context.Context, rc rpc.Context, vol objectPrimitive) (string, error) {
	id := newUUID()
	volID := vol.str("id")
	now := utcNow()
	if _, err := m.db.ExecContext(ctx, "INSERT INTO snapshots (created_at, updated_at, deleted, id, volume_id, user_id, project_id, status, progress, volume_size, display_name, display_description, encryption_key_id, volume_type_id, use_quota) "+
		"SELECT ?, ?, 0, ?, id, ?, ?, 'creating', '0%', size, ?, ?, encryption_key_id, volume_type_id, 0 FROM volumes WHERE id = ?",
		now, now, id, nullIfEmpty(rc.String("user_id")), nullIfEmpty(rc.String("project_id")),
		"[revert] volume "+volID+" backup snapshot",
		"This is only used for backup when reverting. If the reverting process failed, you can restore you data by creating new volume with this snapshot.",
		volID); err != nil {
		return "", fmt.Errorf("create the backup snapshot: %w", err)
	}
	snap, err := m.snapshotObject(ctx, id)
	if err != nil {
		return "", err
	}
	w := m.setWorker(ctx, "Snapshot", id, "creating")
	err = m.createSnapshotObject(ctx, rc, snap)
	m.unsetWorker(ctx, w, m.resourceStatus(ctx, "snapshots", id))
	return id, err
}

// driverRevert is the VMDK driver's revert_to_snapshot.
func (m *Manager) driverRevert(ctx context.Context, volumeID, snapshotID string) error {
	var loc *string
	if err := m.db.QueryRowContext(ctx, "SELECT provider_location FROM snapshots WHERE id = ?", snapshotID).Scan(&loc); err != nil {
		return fmt.Errorf("read snapshot %s: %w", snapshotID, err)
	}
	if loc != nil {
		m.log.Error().Str("snapshot_id", snapshotID).Msg("revert to template based snapshot is not supported")
		return cinderError("InvalidSnapshot", "Cannot revert to template based snapshot") // the message given as is
	}
	b, ok, err := m.drv.findBacking(ctx, volumeID)
	if err != nil {
		return err
	}
	if !ok {
		m.log.Debug().Str("volume_id", volumeID).Msg("backing does not exist for volume")
		return nil
	}
	name := "snapshot-" + snapshotID
	snap, err := m.drv.vc.FindBackingSnapshot(ctx, b.Ref, name)
	if errors.Is(err, vcenter.ErrNotFound) {
		return &rpc.RemoteError{Class: "SnapshotNotFoundException", Module: "cinder.volume.drivers.vmware.exceptions",
			Message: fmt.Sprintf("Snapshot: %s not found.", name), Kwargs: map[string]any{"name": name}}
	}
	if err != nil {
		return err
	}
	return m.drv.vc.RevertBackingSnapshot(ctx, snap)
}
