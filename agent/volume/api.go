package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// methods is cinder Zed's VolumeAPI (cinder/volume/rpcapi.py): every
// method a sender may address to cinder-volume 3.x.
var methods = []string{
	"create_volume", "revert_to_snapshot", "delete_volume", "create_snapshot", "delete_snapshot",
	"attach_volume", "detach_volume", "copy_volume_to_image", "initialize_connection",
	"terminate_connection", "remove_export", "publish_service_capabilities", "accept_transfer",
	"extend_volume", "migrate_volume", "migrate_volume_completion", "retype", "manage_existing",
	"update_migrated_volume", "freeze_host", "thaw_host", "failover", "failover_completed",
	"manage_existing_snapshot", "get_capabilities", "get_backup_device",
	"secure_file_operations_enabled", "get_manageable_volumes", "get_manageable_snapshots",
	"create_group", "delete_group", "update_group", "create_group_from_src",
	"create_group_snapshot", "delete_group_snapshot", "initialize_connection_snapshot",
	"terminate_connection_snapshot", "remove_export_snapshot", "attachment_update",
	"attachment_delete", "do_cleanup", "set_log_levels", "get_log_levels",
	"enable_replication", "disable_replication", "failover_replication",
	"list_replication_targets", "reimage",
}

// endpoint is the VolumeManager endpoint (version 3.18, no namespace).
// Methods the role does not implement yet answer NotImplementedError.
func (m *Manager) endpoint() rpc.Endpoint {
	h := map[string]rpc.Handler{}
	for _, name := range methods {
		h[name] = m.notImplemented
	}
	// the cleanable operations keep cinder's workers rows (set_workers)
	h["create_volume"] = m.withWorker("volume", "Volume", "volumes", m.createVolume)
	h["delete_volume"] = m.withWorker("volume", "Volume", "volumes", m.deleteVolume)
	h["get_capabilities"] = m.getCapabilities
	h["publish_service_capabilities"] = m.publishServiceCapabilities
	h["extend_volume"] = m.extendVolume
	h["initialize_connection"] = m.initializeConnection
	h["terminate_connection"] = m.terminateConnection
	h["remove_export"] = m.removeExport
	h["attachment_update"] = m.attachmentUpdate
	h["attachment_delete"] = m.attachmentDelete
	h["copy_volume_to_image"] = m.copyVolumeToImage
	h["accept_transfer"] = m.acceptTransfer
	h["create_snapshot"] = m.withWorker("snapshot", "Snapshot", "snapshots", m.createSnapshot)
	h["delete_snapshot"] = m.deleteSnapshot
	h["do_cleanup"] = m.doCleanupRPC
	h["revert_to_snapshot"] = m.revertToSnapshot
	h["retype"] = m.retype
	h["manage_existing"] = m.manageExisting
	return rpc.Endpoint{Version: RPCVersion, Methods: h}
}

// notImplemented answers a feature the role lacks as Python's
// NotImplementedError. Nobody waits for a cast, so for the casts that
// leave a volume or snapshot in a transient state it also writes the
// state cinder-volume's manager writes when the driver fails.
func (m *Manager) notImplemented(ctx context.Context, req *rpc.Request) (any, error) {
	m.log.Warn().Str("method", req.Method).Str("version", req.Version).Bool("call", req.IsCall()).
		Msg("volume RPC method not implemented by vcagent yet")
	if !req.IsCall() {
		m.failTransient(ctx, req)
	}
	return nil, rpc.BuiltinError("NotImplementedError", fmt.Sprintf("vcagent's cinder-volume (VMDK) does not implement %s yet", req.Method))
}

// failTransient ends the transient state a failed cast leaves: extend
// (error_extending), snapshot create and delete (error, error_deleting),
// upload to image and retype (the volume's previous status).
func (m *Manager) failTransient(ctx context.Context, req *rpc.Request) {
	var args struct {
		Volume   objectPrimitive `json:"volume"`
		Snapshot objectPrimitive `json:"snapshot"`
	}
	if err := req.DecodeArgs(&args); err != nil || m.db == nil {
		return
	}
	var query string
	var params []any
	now := utcNow()
	switch req.Method {
	case "extend_volume":
		query, params = "UPDATE volumes SET status = 'error_extending', updated_at = ? WHERE id = ? AND status = 'extending' AND deleted = 0", []any{now, args.Volume.str("id")}
	case "copy_volume_to_image", "retype":
		query, params = "UPDATE volumes SET status = COALESCE(previous_status, 'available'), updated_at = ? WHERE id = ? AND status IN ('uploading', 'retyping') AND deleted = 0", []any{now, args.Volume.str("id")}
	case "create_snapshot":
		query, params = "UPDATE snapshots SET status = 'error', updated_at = ? WHERE id = ? AND status = 'creating' AND deleted = 0", []any{now, args.Snapshot.str("id")}
	case "delete_snapshot":
		query, params = "UPDATE snapshots SET status = 'error_deleting', updated_at = ? WHERE id = ? AND status = 'deleting' AND deleted = 0", []any{now, args.Snapshot.str("id")}
	default:
		return
	}
	if _, err := m.db.ExecContext(ctx, query, params...); err != nil {
		m.log.Error().Err(err).Str("method", req.Method).Msg("cannot record the failure in cinder's database")
	}
}

// publishServiceCapabilities is the scheduler's fanout asking every volume
// service for its capabilities.
func (m *Manager) publishServiceCapabilities(context.Context, *rpc.Request) (any, error) {
	m.triggerReport()
	return nil, nil
}

// getCapabilities is the driver's capabilities (its stats and properties).
func (m *Manager) getCapabilities(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Discover bool `json:"discover"`
	}
	_ = req.DecodeArgs(&args)
	m.mu.Lock()
	caps := m.lastCaps
	m.mu.Unlock()
	if caps == nil || args.Discover {
		caps = m.currentCapabilities(ctx)
	}
	out := map[string]any{}
	for k, v := range caps {
		switch k {
		case "allocated_capacity_gb", "filter_function", "goodness_function":
			continue // added by the manager, not the driver's
		}
		out[k] = v
	}
	out["properties"] = driverProperties()
	return out, nil
}

// createVolume is cinder's create flow for the VMDK driver: a volume
// without a source gets no backing until it is attached, so creating it is
// only the database's end of the flow (status available, launched_at,
// service_uuid, shared_targets) and the volume.create notifications.
func (m *Manager) createVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume      objectPrimitive `json:"volume"`
		RequestSpec objectPrimitive `json:"request_spec"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	vol := args.Volume
	id := vol.str("id")
	if id == "" {
		return nil, rpc.BuiltinError("ValueError", "create_volume without a volume id")
	}
	log := m.log.With().Str("volume_id", id).Logger()
	m.notify(ctx, req.Context, "volume.create.start", vol, nil)
	imageID := args.RequestSpec.str("image_id")
	var image *cloud.Image
	spec, err := m.volumeSpecOf(ctx, vol)
	if err == nil {
		snapID, srcID := vol.str("snapshot_id"), vol.str("source_volid")
		switch {
		case imageID != "":
			var meta cloud.Image
			if meta, err = m.createFromImage(ctx, req.Context, spec, imageID); err == nil {
				image = &meta
			}
		case snapID != "" || srcID != "":
			if err = m.needDriver(); err == nil {
				err = m.createFromSource(ctx, spec, snapID, srcID)
			}
		case !m.cfg.LazyCreate:
			if err = m.needDriver(); err == nil {
				_, err = m.drv.createBacking(ctx, spec, vcenter.Ref{})
			}
		case spec.StorageProfile != "":
			// _verify_volume_creation: the profile must exist
			if err = m.needDriver(); err == nil {
				_, err = m.drv.pol.id(ctx, spec.StorageProfile)
			}
		}
	}
	if err == nil && image != nil {
		err = m.bootableFromImage(ctx, vol.str("id"), *image)
	}
	if err != nil {
		// only the driver's create_volume (a volume from nothing, its
		// type's specs verified there too) records a user message
		fromNothing := imageID == "" && vol.str("snapshot_id") == "" && vol.str("source_volid") == ""
		// a failed copy of an image is the flow's ImageCopyFailure (every
		// failure of the driver's copy_image_to_volume becomes one), which
		// is not rescheduled
		// the arguments again, raw, only on this rare path: a reschedule
		// sends them back to the scheduler as they came
		var raw createArgs
		if req.DecodeArgs(&raw) == nil && raw.wantsReschedule() && reschedulable(err) && imageID == "" {
			log.Error().Err(err).Msg("create_volume failed: rescheduling")
			if fromNothing {
				m.userMessage(ctx, req.Context, "VOLUME", id, actionCreateFromBackend, detailDriverFailedCreate)
			}
			rerr := m.reschedule(ctx, req.Context, raw, id, err)
			if rerr == nil {
				log.Info().Msg("volume re-scheduled")
				var re *rpc.RemoteError
				if errors.As(err, &re) {
					return nil, re
				}
				return nil, backendError("create volume", err)
			}
			// cinder leaves the volume as it is then; error is what the
			// user can act on
			log.Error().Err(rerr).Msg("rescheduling failed")
			fromNothing = false // its user message is recorded
		}
		return m.createFailed(ctx, req, vol, err, fromNothing)
	}
	now := utcNow()
	res, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'available', launched_at = ?, updated_at = ?, service_uuid = ?, shared_targets = 0 WHERE id = ? AND deleted = 0",
		now, now, nullIfEmpty(m.serviceUUID()), id)
	if err != nil {
		log.Error().Err(err).Msg("create_volume: cannot update the volume in cinder's database")
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		log.Info().Msg("create_volume: the volume was deleted before it was created")
		return nil, nil
	}
	vol.Data["status"] = json.RawMessage(`"available"`)
	ts, _ := json.Marshal(now.Format(time.RFC3339Nano))
	vol.Data["launched_at"] = ts
	m.notify(ctx, req.Context, "volume.create.end", vol, nil)
	log.Info().Int64("size_gb", vol.int("size")).Str("volume_host", vol.str("host")).Bool("lazy", m.cfg.LazyCreate).Msg("volume created")
	m.triggerReport()
	return nil, nil
}

// createFailed sets the volume in error, as the create flow does when the
// driver fails and it cannot reschedule.
func (m *Manager) createFailed(ctx context.Context, req *rpc.Request, vol objectPrimitive, cause error, raw bool) (any, error) {
	m.log.Error().Str("volume_id", vol.str("id")).Err(cause).Msg("create_volume failed")
	if _, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'error', updated_at = ? WHERE id = ? AND deleted = 0", utcNow(), vol.str("id")); err != nil {
		m.log.Error().Err(err).Msg("cannot set the volume's status to error")
	}
	if raw {
		// _create_raw_volume: CREATE_VOLUME_FROM_BACKEND, DRIVER_FAILED_CREATE
		m.userMessage(ctx, req.Context, "VOLUME", vol.str("id"), actionCreateFromBackend, detailDriverFailedCreate)
	}
	vol.Data["status"] = json.RawMessage(`"error"`)
	m.notify(ctx, req.Context, "volume.create.error", vol, nil)
	var re *rpc.RemoteError
	if errors.As(cause, &re) {
		return nil, re
	}
	return nil, backendError("create volume", cause)
}

// deleteVolume is cinder's delete_volume RPC: see deleteVolumeObject.
func (m *Manager) deleteVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume       objectPrimitive `json:"volume"`
		UnmanageOnly bool            `json:"unmanage_only"`
		Cascade      bool            `json:"cascade"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	return nil, m.deleteVolumeObject(ctx, req.Context, args.Volume, args.UnmanageOnly, args.Cascade)
}

// deleteVolumeObject is cinder's VolumeManager.delete_volume: a volume
// gone already is nothing to do; an attached one fails (VolumeAttached);
// with cascade the volume's snapshots (all in deleting, or the volume is
// error_deleting) go first; the backing, if any, is deleted (unmanage
// leaves it), the quota released (QUOTAS.reserve of minus the volume and
// its size, per volume type too, then commit, done as the net change of
// quota_usages) and the row destroyed (volume_destroy: soft-deleted with
// status deleted, with its metadata rows). A driver failure leaves the
// volume error_deleting (error_unmanaging).
func (m *Manager) deleteVolumeObject(ctx context.Context, rc rpc.Context, vol objectPrimitive, unmanageOnly, cascade bool) error {
	id := vol.str("id")
	log := m.log.With().Str("volume_id", id).Logger()
	var attachStatus, encKey sql.NullString
	var deleted bool
	err := m.db.QueryRowContext(ctx, "SELECT attach_status, encryption_key_id, COALESCE(deleted, 0) FROM volumes WHERE id = ?", id).Scan(&attachStatus, &encKey, &deleted)
	if errors.Is(err, sql.ErrNoRows) || err == nil && deleted {
		log.Debug().Msg("attempted delete of non-existent volume")
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case attachStatus.String == "attached":
		return cinderError("VolumeAttached", fmt.Sprintf("Volume %s is still attached, detach volume first.", id))
	case unmanageOnly && encKey.Valid:
		return cinderError("Invalid", "Unacceptable parameters: Unmanaging encrypted volumes is not supported.")
	case unmanageOnly && cascade:
		return cinderError("Invalid", "Unacceptable parameters: Unmanage and cascade delete options are mutually exclusive.")
	}
	event := "volume.delete"
	if unmanageOnly {
		event = "volume.unmanage"
	}
	m.notify(ctx, rc, event+".start", vol, nil)
	err = m.needDriver()
	if err == nil && unmanageOnly {
		err = m.drv.unmanage(ctx, id)
	} else if err == nil {
		if cascade {
			err = m.deleteSnapshotsOf(ctx, rc, id)
		}
		if err == nil {
			err = m.drv.deleteVolume(ctx, id)
		}
	}
	if err != nil {
		log.Error().Err(err).Msg("delete_volume failed")
		status := "error_deleting"
		if unmanageOnly {
			status = "error_unmanaging"
		}
		if _, uerr := m.db.ExecContext(ctx, "UPDATE volumes SET status = ?, updated_at = ? WHERE id = ? AND deleted = 0", status, utcNow(), id); uerr != nil {
			log.Error().Err(uerr).Msgf("cannot set the volume's status to %s", status)
		}
		return err
	}
	if err := m.destroyVolume(ctx, vol); err != nil {
		log.Error().Err(err).Msg("delete_volume: cannot record it in cinder's database")
		return err
	}
	vol.Data["status"] = json.RawMessage(`"deleted"`)
	m.notify(ctx, rc, event+".end", vol, nil)
	if unmanageOnly {
		log.Info().Msg("unmanaged volume successfully")
	} else {
		log.Info().Msg("volume deleted")
	}
	m.triggerReport()
	return nil
}

// deleteSnapshotsOf is delete_volume's cascade: every snapshot of the
// volume must be deleting (else the volume is error_deleting and
// InvalidSnapshot raised), and each is deleted as delete_snapshot does.
func (m *Manager) deleteSnapshotsOf(ctx context.Context, rc rpc.Context, volumeID string) error {
	rows, err := m.db.QueryContext(ctx, "SELECT id, status FROM snapshots WHERE volume_id = ? AND deleted = 0", volumeID)
	if err != nil {
		return err
	}
	type snap struct{ id, status string }
	var snaps []snap
	for rows.Next() {
		var s snap
		var st sql.NullString
		if err := rows.Scan(&s.id, &st); err != nil {
			rows.Close()
			return err
		}
		s.status = st.String
		snaps = append(snaps, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, s := range snaps {
		if s.status != "deleting" {
			return cinderError("InvalidSnapshot", fmt.Sprintf("Invalid snapshot: Snapshot %s was found in state %s rather than 'deleting' during cascade delete.", s.id, s.status))
		}
	}
	for _, s := range snaps {
		obj, err := m.snapshotObject(ctx, s.id)
		if err != nil {
			return err
		}
		if err := m.deleteSnapshotObject(ctx, rc, obj, false); err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) destroyVolume(ctx context.Context, vol objectPrimitive) error {
	id := vol.str("id")
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var (
		projectID, typeID sql.NullString
		size              int64
		useQuota          = true
		deleted           bool
	)
	if err := tx.QueryRowContext(ctx, "SELECT project_id, volume_type_id, COALESCE(size, 0), COALESCE(use_quota, 1), COALESCE(deleted, 0) FROM volumes WHERE id = ? FOR UPDATE", id).
		Scan(&projectID, &typeID, &size, &useQuota, &deleted); err != nil {
		return fmt.Errorf("read the volume: %w", err)
	}
	if deleted {
		return nil
	}
	now := utcNow()
	if useQuota && projectID.Valid {
		if err := releaseQuota(ctx, tx, projectID.String, typeID, map[string]int64{"volumes": -1, "gigabytes": -size}); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET status = 'deleted', deleted = 1, deleted_at = ?, migration_status = NULL WHERE id = ?", now, id); err != nil {
		return fmt.Errorf("destroy the volume: %w", err)
	}
	for _, table := range []string{"volume_metadata", "volume_admin_metadata", "snapshots", "transfers", "volume_glance_metadata"} {
		if _, err := tx.ExecContext(ctx, "UPDATE "+table+" SET deleted = 1, deleted_at = ? WHERE volume_id = ?", now, id); err != nil {
			return fmt.Errorf("destroy the volume's %s: %w", table, err)
		}
	}
	return tx.Commit()
}

// notify sends a volume notification (cinder's notify_about_volume_usage,
// payload _usage_from_volume) when notifications are configured. The
// create flow publishes as volume.<volume host> (with its #pool), the
// manager as volume.<host>@<backend>.
func (m *Manager) notify(ctx context.Context, rc rpc.Context, event string, vol objectPrimitive, extra map[string]any) {
	if m.notifier == nil {
		return
	}
	raw := func(k string) any {
		var v any
		if r, ok := vol.Data[k]; ok {
			_ = json.Unmarshal(r, &v)
		}
		return v
	}
	volHost := vol.str("host")
	if volHost == "" {
		volHost = m.backendHost
	}
	publisher := m.backendHost
	if strings.HasPrefix(event, "volume.create.") || strings.HasPrefix(event, "volume.manage_existing.") {
		publisher = volHost
	}
	payload := map[string]any{
		"tenant_id": raw("project_id"), "host": volHost, "user_id": raw("user_id"),
		"availability_zone": raw("availability_zone"), "volume_id": raw("id"), "volume_type": raw("volume_type_id"),
		"display_name": raw("display_name"), "launched_at": isoTime(raw("launched_at")), "created_at": isoTime(raw("created_at")),
		"status": raw("status"), "snapshot_id": raw("snapshot_id"), "size": raw("size"),
		"replication_status": raw("replication_status"), "replication_extended_status": raw("replication_extended_status"),
		"replication_driver_data": raw("replication_driver_data"), "metadata": metadataList(raw("metadata")),
		"volume_attachment": []any{},
	}
	for k, v := range extra {
		payload[k] = v
	}
	priority := rpc.PriorityInfo
	if len(event) > 6 && event[len(event)-6:] == ".error" {
		priority = rpc.PriorityError
	}
	n := m.tr.NewNotifier(rpc.NotifierConfig{Exchange: m.cfg.Exchange, PublisherID: "volume." + publisher,
		Topics: m.cfg.NotificationTopics, Legacy: m.cfg.NotificationDriver == "messaging"})
	if err := n.Notify(ctx, rc, priority, event, payload); err != nil {
		m.log.Warn().Err(err).Str("event_type", event).Msg("cannot send the notification")
	}
}

// isoTime is a datetime as _usage_from_volume formats it (isoformat of
// an aware UTC datetime, now when unset); v is an object's primitive
// (RFC 3339) or nil.
func isoTime(v any) any {
	t := time.Now()
	if s, ok := v.(string); ok && s != "" {
		var err error
		if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return s
		}
	}
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// metadataList is the volume's metadata dict as the payload's list of
// {key, value}, sorted by key.
func metadataList(v any) []any {
	md, _ := v.(map[string]any)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, map[string]any{"key": k, "value": md[k]})
	}
	return out
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
