package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// cinderError is a cinder.exception class as cinder-api rebuilds it.
func cinderError(class, msg string) *rpc.RemoteError {
	return &rpc.RemoteError{Class: class, Module: "cinder.exception", Message: msg, Args: []any{msg}}
}

// backendError is VolumeBackendAPIException, the manager's wrapper of a
// driver failure.
func backendError(what string, err error) *rpc.RemoteError {
	return cinderError("VolumeBackendAPIException", fmt.Sprintf("Bad or unexpected response from the storage volume backend API: %s (error: %v).", what, err))
}

// User message ids (cinder/message/message_field.py).
const (
	actionUpdateAttachment     = "004"
	actionCreateFromBackend    = "008"
	detailDriverFailedCreate   = "012"
	actionExtendVolume         = "007"
	actionSnapshotCreate       = "009"
	actionSnapshotDelete       = "010"
	detailUnknownError         = "001"
	detailDriverNotInitialized = "002"
	detailDriverFailedExt      = "010"
	detailSnapshotCreate       = "013"
	detailSnapshotDelete       = "016"
	messageTTL                 = 2592000 * time.Second
)

// userMessage records a failure for the user, as cinder's message API
// does (messages table; event VOLUME_<resource>_<action>_<detail>).
func (m *Manager) userMessage(ctx context.Context, rc rpc.Context, resourceType, resourceID, action, detail string) {
	project := rc.String("project_id")
	if project == "" {
		project = rc.String("project")
	}
	now := utcNow()
	if _, err := m.db.ExecContext(ctx, "INSERT INTO messages (id, project_id, message_level, request_id, resource_type, resource_uuid, event_id, detail_id, action_id, expires_at, created_at, deleted) VALUES (?, ?, 'ERROR', ?, ?, ?, ?, ?, ?, ?, ?, 0)",
		newUUID(), project, nullIfEmpty(rc.String("request_id")), resourceType, resourceID,
		fmt.Sprintf("VOLUME_%s_%s_%s", resourceType, action, detail), detail, action, now.Add(messageTTL), now); err != nil {
		m.log.Warn().Err(err).Str("resource_uuid", resourceID).Msg("cannot record the user message")
	}
}

// volumeSpecOf reads what the driver needs of a volume object: its size,
// project and its type's vmware: extra specs, validated as the driver's
// _verify_volume_creation does.
func (m *Manager) volumeSpecOf(ctx context.Context, vol objectPrimitive) (volumeSpec, error) {
	v := volumeSpec{ID: vol.str("id"), SizeGB: vol.int("size"), ProjectID: vol.str("project_id"),
		DiskType: vcenter.BackingDiskThin, AdapterType: m.cfg.AdapterType, CloneType: "full"}
	if v.AdapterType == "" {
		v.AdapterType = vcenter.BackingAdapterLsiLogic
	}
	if typeID := vol.str("volume_type_id"); typeID != "" {
		rows, err := m.db.QueryContext(ctx, "SELECT `key`, value FROM volume_type_extra_specs WHERE volume_type_id = ? AND deleted = 0 AND `key` LIKE 'vmware:%'", typeID)
		if err != nil {
			return v, fmt.Errorf("read the volume type's extra specs: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var val sql.NullString
			if err := rows.Scan(&k, &val); err != nil {
				return v, err
			}
			if !val.Valid || val.String == "" {
				continue
			}
			switch k {
			case "vmware:vmdk_type":
				v.DiskType = val.String
			case "vmware:adapter_type":
				v.AdapterType = val.String
			case "vmware:clone_type":
				v.CloneType = val.String
			case "vmware:storage_profile":
				v.StorageProfile = val.String
			}
		}
		if err := rows.Err(); err != nil {
			return v, err
		}
	}
	if !vcenter.ValidBackingDiskType(v.DiskType) {
		return v, &rpc.RemoteError{Class: "InvalidDiskTypeException", Module: "cinder.volume.drivers.vmware.exceptions",
			Message: fmt.Sprintf("Invalid disk type: %s.", v.DiskType), Kwargs: map[string]any{"disk_type": v.DiskType}}
	}
	if !vcenter.ValidBackingAdapterType(v.AdapterType) {
		return v, &rpc.RemoteError{Class: "InvalidAdapterTypeException", Module: "cinder.volume.drivers.vmware.exceptions",
			Message: fmt.Sprintf("Invalid disk adapter type: %s.", v.AdapterType), Kwargs: map[string]any{"invalid_type": v.AdapterType}}
	}
	if v.CloneType != "full" && v.CloneType != "linked" {
		return v, cinderError("Invalid", fmt.Sprintf("Clone type '%s' is invalid; valid values are: 'full' and 'linked'.", v.CloneType))
	}
	return v, nil
}

// needDriver fails when the role has no vCenter driver (tests).
func (m *Manager) needDriver() error {
	if m.drv == nil {
		return rpc.BuiltinError("NotImplementedError", "vcagent's cinder-volume has no vCenter session")
	}
	return nil
}

// extendVolume is cinder's VolumeManager.extend_volume with the VMDK
// driver: the backing's disk grows (nothing to do without a backing),
// then the reservations are committed and the volume gets its new size and
// its status back (available, or in-use when attached); on failure the
// volume is error_extending, the reservations rolled back and the user
// told.
func (m *Manager) extendVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume       objectPrimitive `json:"volume"`
		NewSize      int64           `json:"new_size"`
		Reservations []string        `json:"reservations"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	vol := args.Volume
	id := vol.str("id")
	log := m.log.With().Str("volume_id", id).Int64("new_size", args.NewSize).Logger()
	m.notify(ctx, req.Context, "volume.resize.start", vol, nil)
	err := m.needDriver()
	if err == nil {
		err = m.drv.extendVolume(ctx, id, args.NewSize)
	}
	if err != nil {
		log.Error().Err(err).Msg("extend volume failed")
		m.userMessage(ctx, req.Context, "VOLUME", id, actionExtendVolume, detailDriverFailedExt)
		if _, uerr := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'error_extending', updated_at = ? WHERE id = ?", utcNow(), id); uerr != nil {
			log.Error().Err(uerr).Msg("cannot set the volume's status to error_extending")
		}
		if rerr := m.settleReservations(ctx, args.Reservations, false); rerr != nil {
			log.Error().Err(rerr).Msg("cannot roll the extend's quota reservations back")
		}
		return nil, nil // the manager swallows it (return in finally)
	}
	status, err := m.finishExtend(ctx, id, args.NewSize, args.Reservations)
	if err != nil {
		log.Error().Err(err).Msg("extend volume: cannot record it in cinder's database")
		return nil, err
	}
	vol.Data["status"], _ = json.Marshal(status)
	vol.Data["size"], _ = json.Marshal(args.NewSize)
	m.notify(ctx, req.Context, "volume.resize.end", vol, map[string]any{"size": args.NewSize})
	log.Info().Msg("extend volume completed successfully")
	m.triggerReport()
	return nil, nil
}

// finishExtend commits the reservations and sets size and status in one
// transaction.
func (m *Manager) finishExtend(ctx context.Context, id string, newSize int64, reservations []string) (string, error) {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer func() { _ = tx.Rollback() }()
	if err := settleReservationsTx(ctx, tx, reservations, true); err != nil {
		return "", err
	}
	var attached int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM volume_attachment WHERE volume_id = ? AND deleted = 0", id).Scan(&attached); err != nil {
		return "", err
	}
	status := "available"
	if attached > 0 {
		status = "in-use"
	}
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET size = ?, status = ?, updated_at = ? WHERE id = ?", newSize, status, utcNow(), id); err != nil {
		return "", err
	}
	return status, tx.Commit()
}

// settleReservations commits (or rolls back) quota reservations, as
// cinder's reservation_commit and reservation_rollback do.
func (m *Manager) settleReservations(ctx context.Context, reservations []string, commit bool) error {
	if len(reservations) == 0 {
		return nil
	}
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := settleReservationsTx(ctx, tx, reservations, commit); err != nil {
		return err
	}
	return tx.Commit()
}

func settleReservationsTx(ctx context.Context, tx *sql.Tx, reservations []string, commit bool) error {
	if len(reservations) == 0 {
		return nil
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(reservations)), ",")
	params := make([]any, len(reservations))
	for i, r := range reservations {
		params[i] = r
	}
	rows, err := tx.QueryContext(ctx, "SELECT id, usage_id, delta FROM reservations WHERE deleted = 0 AND uuid IN ("+marks+") FOR UPDATE", params...)
	if err != nil {
		return fmt.Errorf("read the quota reservations: %w", err)
	}
	type res struct{ id, usage, delta int64 }
	var list []res
	for rows.Next() {
		var r res
		if err := rows.Scan(&r.id, &r.usage, &r.delta); err != nil {
			rows.Close()
			return err
		}
		list = append(list, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	now := utcNow()
	for _, r := range list {
		var inUse, reserved int64
		if err := tx.QueryRowContext(ctx, "SELECT in_use, reserved FROM quota_usages WHERE id = ? FOR UPDATE", r.usage).Scan(&inUse, &reserved); err != nil {
			return fmt.Errorf("read quota usage %d: %w", r.usage, err)
		}
		delta := r.delta
		if delta >= 0 {
			reserved -= min(delta, reserved)
		} else if -delta > inUse {
			delta = -inUse
		}
		if commit {
			inUse += delta
		}
		if _, err := tx.ExecContext(ctx, "UPDATE quota_usages SET in_use = ?, reserved = ?, updated_at = ? WHERE id = ?", inUse, reserved, now, r.usage); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE reservations SET deleted = 1, deleted_at = ?, updated_at = ? WHERE id = ?", now, now, r.id); err != nil {
			return err
		}
	}
	return nil
}

// connectionInfo is the driver's _get_connection_info completed by the
// manager's _parse_connection_options (qos_specs, access_mode, encrypted,
// cacheable).
func (m *Manager) connectionInfo(ctx context.Context, vol objectPrimitive, b vcenter.Backing, connector map[string]any) (map[string]any, error) {
	id := vol.str("id")
	data := map[string]any{"volume": b.Ref.Value, "volume_id": id, "name": "volume-" + id, "profile_id": nil}
	if name := m.storageProfileOf(ctx, vol); name != "" {
		// _get_storage_profile_id: the profile's id, None when vCenter has
		// no such profile
		if pid, err := m.drv.pol.id(ctx, name); err == nil {
			data["profile_id"] = pid
		} else {
			m.log.Warn().Err(err).Str("volume_id", id).Str("storage_profile", name).Msg("no storage profile id for the connection info")
		}
	}
	_, platform := connector["platform"]
	_, osType := connector["os_type"]
	if platform && osType {
		data["vmdk_size"] = vol.int("size") << 30
		data["vmdk_path"] = b.DiskPath
		if len(b.Datastores) > 0 {
			data["datastore"] = b.Datastores[0].Value
		}
		if vm, err := m.drv.vc.GetVM(ctx, b.Ref); err == nil {
			data["datacenter"] = vm.Datacenter.Value
		}
		data["config"] = m.cfg.ConnectorConfig
	}
	typeID := vol.str("volume_type_id")
	var qos any
	cacheable := false
	if typeID != "" {
		var specsID sql.NullString
		if err := m.db.QueryRowContext(ctx, "SELECT qos_specs_id FROM volume_types WHERE id = ?", typeID).Scan(&specsID); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		if specsID.Valid && specsID.String != "" {
			specs, consumer, err := m.qosSpecs(ctx, specsID.String)
			if err != nil {
				return nil, err
			}
			if consumer == "front-end" || consumer == "both" {
				qos = perGBQoS(specs, vol.int("size"))
			}
		}
		var c sql.NullString
		if err := m.db.QueryRowContext(ctx, "SELECT value FROM volume_type_extra_specs WHERE volume_type_id = ? AND `key` = 'cacheable' AND deleted = 0", typeID).Scan(&c); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		cacheable = c.String == "<is> True"
	}
	data["qos_specs"] = qos
	mode := ""
	readonly := ""
	rows, err := m.db.QueryContext(ctx, "SELECT `key`, value FROM volume_admin_metadata WHERE volume_id = ? AND deleted = 0 AND `key` IN ('attached_mode', 'readonly')", id)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var k string
		var v sql.NullString
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return nil, err
		}
		if k == "attached_mode" {
			mode = v.String
		} else {
			readonly = v.String
		}
	}
	rows.Close()
	if mode == "" {
		mode = "rw"
		if readonly == "True" {
			mode = "ro"
		}
	}
	data["access_mode"] = mode
	data["encrypted"] = vol.str("encryption_key_id") != ""
	if typeID != "" {
		data["cacheable"] = cacheable
	}
	return map[string]any{"driver_volume_type": "vmdk", "data": data}, nil
}

// qosSpecs reads a QoS specs entity: its key/value children and consumer.
func (m *Manager) qosSpecs(ctx context.Context, specsID string) (map[string]string, string, error) {
	rows, err := m.db.QueryContext(ctx, "SELECT `key`, value FROM quality_of_service_specs WHERE specs_id = ? AND deleted = 0", specsID)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	specs := map[string]string{}
	consumer := "back-end"
	for rows.Next() {
		var k, v sql.NullString
		if err := rows.Scan(&k, &v); err != nil {
			return nil, "", err
		}
		if k.String == "consumer" {
			consumer = v.String
			continue
		}
		specs[k.String] = v.String
	}
	return specs, consumer, rows.Err()
}

// perGBQoS applies the *_per_gb options as _parse_connection_options does.
func perGBQoS(specs map[string]string, sizeGB int64) map[string]any {
	out := map[string]any{}
	for k, v := range specs {
		out[k] = v
	}
	atoi := func(s string) int64 {
		var n int64
		_, _ = fmt.Sscan(s, &n)
		return n
	}
	for _, opt := range []string{"read_iops_sec", "read_bytes_sec", "write_iops_sec", "write_bytes_sec", "total_iops_sec", "total_bytes_sec"} {
		per, ok := specs[opt+"_per_gb"]
		if !ok {
			continue
		}
		minimum := atoi(specs[opt+"_per_gb_min"])
		delete(out, opt+"_per_gb_min")
		value := max(minimum, atoi(per)*sizeGB)
		maxValue := value
		if mv, ok := specs[opt+"_max"]; ok {
			maxValue = atoi(mv)
			delete(out, opt+"_max")
		}
		out[opt] = min(value, maxValue)
		delete(out, opt+"_per_gb")
	}
	return out
}

// initializeConnection is the legacy initialize_connection call: the
// backing (created now if the volume has none) and its connection_info.
func (m *Manager) initializeConnection(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume    objectPrimitive `json:"volume"`
		Connector map[string]any  `json:"connector"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if err := m.needDriver(); err != nil {
		return nil, err
	}
	info, err := m.connect(ctx, args.Volume, args.Connector)
	if err != nil {
		return nil, err
	}
	m.log.Info().Str("volume_id", args.Volume.str("id")).Msg("initialize volume connection completed successfully")
	return info, nil
}

// connect ensures the backing and builds the connection info.
func (m *Manager) connect(ctx context.Context, vol objectPrimitive, connector map[string]any) (map[string]any, error) {
	spec, err := m.volumeSpecOf(ctx, vol)
	if err != nil {
		return nil, backendError("Validate volume connection failed", err)
	}
	b, err := m.drv.connection(ctx, spec, connector)
	if err != nil {
		m.log.Error().Err(err).Str("volume_id", spec.ID).Msg("driver initialize connection failed")
		return nil, backendError("Driver initialize connection failed", err)
	}
	return m.connectionInfo(ctx, vol, b, connector)
}

// terminateConnection: the VMDK driver has nothing to undo.
func (m *Manager) terminateConnection(context.Context, *rpc.Request) (any, error) { return nil, nil }

// removeExport: the VMDK driver exports nothing.
func (m *Manager) removeExport(context.Context, *rpc.Request) (any, error) { return nil, nil }

// attachmentUpdate is cinder's attachment_update: the connection made
// (the backing created next to the connector's instance if missing), the
// attachment row attaching with its connector, mountpoint, host, mode and
// time, the volume attaching (the API's attachment_complete makes it
// in-use), and the flattened connection_info returned.
func (m *Manager) attachmentUpdate(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Vref         objectPrimitive `json:"vref"`
		Connector    map[string]any  `json:"connector"`
		AttachmentID string          `json:"attachment_id"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if args.Connector == nil {
		args.Connector = map[string]any{}
	}
	vol := args.Vref
	id := vol.str("id")
	log := m.log.With().Str("volume_id", id).Str("attachment_id", args.AttachmentID).Logger()
	mode, _ := args.Connector["mode"].(string)
	if mode == "" {
		mode = "rw"
	}
	m.notify(ctx, req.Context, "volume.attach.start", vol, nil)
	var attachMode, instanceUUID sql.NullString
	if err := m.db.QueryRowContext(ctx, "SELECT attach_mode, instance_uuid FROM volume_attachment WHERE id = ? AND deleted = 0", args.AttachmentID).
		Scan(&attachMode, &instanceUUID); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, cinderError("VolumeAttachmentNotFound", fmt.Sprintf("Volume attachment could not be found with filter: attachment_id = %s.", args.AttachmentID))
		}
		return nil, err
	}
	if attachMode.Valid && attachMode.String != "" && attachMode.String != "null" {
		mode = attachMode.String
		args.Connector["mode"] = mode
	}
	if err := m.needDriver(); err != nil {
		// require_driver_initialized failing: UPDATE_ATTACHMENT with the
		// detail of DriverNotInitialized, the attachment error_attaching
		m.userMessage(ctx, req.Context, "VOLUME", id, actionUpdateAttachment, detailDriverNotInitialized)
		if _, uerr := m.db.ExecContext(ctx, "UPDATE volume_attachment SET attach_status = 'error_attaching', updated_at = ? WHERE id = ?", utcNow(), args.AttachmentID); uerr != nil {
			log.Error().Err(uerr).Msg("cannot set the attachment's status to error_attaching")
		}
		return nil, err
	}
	info, err := m.connect(ctx, vol, args.Connector)
	if err != nil {
		log.Error().Err(err).Msg("attachment_update failed")
		return nil, err
	}
	data, _ := info["data"].(map[string]any)
	flat := map[string]any{}
	for k, v := range data {
		flat[k] = v
	}
	flat["driver_volume_type"] = info["driver_volume_type"]
	flat["attachment_id"] = args.AttachmentID
	connJSON, _ := json.Marshal(args.Connector)
	host, _ := args.Connector["host"].(string)
	mountpoint, _ := args.Connector["mountpoint"].(string)
	if mountpoint == "" {
		mountpoint = "na"
	}
	if err := m.attachingInDB(ctx, id, args.AttachmentID, string(connJSON), host, mountpoint, mode, instanceUUID); err != nil {
		log.Error().Err(err).Msg("attachment_update: cannot record the attachment in cinder's database")
		return nil, err
	}
	log.Info().Str("backing", flat["volume"].(string)).Msg("attachment_update completed successfully")
	return flat, nil
}

// attachingInDB is _connection_create's volume_attachment_update and
// volume_attached(mark_attached=False), in one transaction.
func (m *Manager) attachingInDB(ctx context.Context, volumeID, attachmentID, connector, host, mountpoint, mode string, instanceUUID sql.NullString) error {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	now := utcNow()
	if _, err := tx.ExecContext(ctx, "UPDATE volume_attachment SET volume_id = ?, attach_status = 'attaching', connector = ?, mountpoint = ?, instance_uuid = ?, attached_host = ?, attach_time = ?, attach_mode = ?, updated_at = ? WHERE id = ?",
		volumeID, connector, mountpoint, instanceUUID, host, now, mode, now, attachmentID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET status = 'attaching', attach_status = 'attaching', updated_at = ? WHERE id = ?", now, volumeID); err != nil {
		return err
	}
	return tx.Commit()
}

// attachmentDelete is cinder's attachment_delete: the driver's
// terminate_connection and remove_export, both nothing for the VMDK
// driver; the API finishes the detach.
func (m *Manager) attachmentDelete(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		AttachmentID string          `json:"attachment_id"`
		Vref         objectPrimitive `json:"vref"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	m.notify(ctx, req.Context, "volume.detach.start", args.Vref, nil)
	m.log.Info().Str("volume_id", args.Vref.str("id")).Str("attachment_id", args.AttachmentID).Msg("attachment deleted (nothing to undo on the backing)")
	return nil, nil
}

// createSnapshot is cinder's create_snapshot with the driver's template
// format: the backing cloned to a template in Volumes/Snapshots, its
// inventory path the snapshot's provider_location (none without a
// backing), then status available, progress 100%, the volume's
// encryption key id; on failure error and a user message.
func (m *Manager) createSnapshot(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Snapshot objectPrimitive `json:"snapshot"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if err := m.createSnapshotObject(ctx, req.Context, args.Snapshot); err != nil {
		return nil, err
	}
	return args.Snapshot.str("id"), nil
}

// createSnapshotObject is create_snapshot's work on a snapshot object.
func (m *Manager) createSnapshotObject(ctx context.Context, rc rpc.Context, snap objectPrimitive) error {
	id := snap.str("id")
	log := m.log.With().Str("snapshot_id", id).Logger()
	m.notifySnapshot(ctx, rc, "snapshot.create.start", snap)
	var volRaw objectPrimitive
	if raw, ok := snap.Data["volume"]; ok {
		_ = json.Unmarshal(raw, &volRaw)
	}
	if volRaw.Data == nil {
		volRaw.Data = map[string]json.RawMessage{}
		volRaw.Data["id"], _ = json.Marshal(snap.str("volume_id"))
		volRaw.Data["project_id"], _ = json.Marshal(snap.str("project_id"))
	}
	location := ""
	err := m.needDriver()
	if err == nil {
		var spec volumeSpec
		spec, err = m.volumeSpecOf(ctx, volRaw)
		if err == nil {
			location, err = m.drv.createSnapshot(ctx, spec, id)
		}
	}
	if err != nil {
		log.Error().Err(err).Msg("create snapshot failed")
		if _, uerr := m.db.ExecContext(ctx, "UPDATE snapshots SET status = 'error', updated_at = ? WHERE id = ?", utcNow(), id); uerr != nil {
			log.Error().Err(uerr).Msg("cannot set the snapshot's status to error")
		}
		m.userMessage(ctx, rc, "VOLUME_SNAPSHOT", id, actionSnapshotCreate, detailSnapshotCreate)
		return err
	}
	var encKey sql.NullString
	_ = m.db.QueryRowContext(ctx, "SELECT encryption_key_id FROM volumes WHERE id = ?", snap.str("volume_id")).Scan(&encKey)
	if _, err := m.db.ExecContext(ctx, "UPDATE snapshots SET status = 'available', progress = '100%', provider_location = ?, encryption_key_id = ?, updated_at = ? WHERE id = ?",
		nullIfEmpty(location), encKey, utcNow(), id); err != nil {
		log.Error().Err(err).Msg("create snapshot: cannot record it in cinder's database")
		return err
	}
	snap.Data["status"] = json.RawMessage(`"available"`)
	m.notifySnapshot(ctx, rc, "snapshot.create.end", snap)
	log.Info().Str("provider_location", location).Msg("create snapshot completed successfully")
	return nil
}

// deleteSnapshot is cinder's delete_snapshot: the template removed, the
// quota (snapshots -1, gigabytes -volume size, per type too) released and
// the row destroyed; on failure error_deleting and a user message.
func (m *Manager) deleteSnapshot(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Snapshot     objectPrimitive `json:"snapshot"`
		UnmanageOnly bool            `json:"unmanage_only"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	return nil, m.deleteSnapshotObject(ctx, req.Context, args.Snapshot, args.UnmanageOnly)
}

// deleteSnapshotObject is delete_snapshot's work on a snapshot object.
func (m *Manager) deleteSnapshotObject(ctx context.Context, rc rpc.Context, snap objectPrimitive, unmanageOnly bool) error {
	id := snap.str("id")
	log := m.log.With().Str("snapshot_id", id).Logger()
	m.notifySnapshot(ctx, rc, "snapshot.delete.start", snap)
	err := m.needDriver()
	if err == nil && !unmanageOnly {
		var loc sql.NullString
		if err = m.db.QueryRowContext(ctx, "SELECT provider_location FROM snapshots WHERE id = ?", id).Scan(&loc); err == nil {
			err = m.drv.deleteSnapshot(ctx, loc.String)
		}
	}
	if err != nil {
		log.Error().Err(err).Msg("delete snapshot failed")
		if _, uerr := m.db.ExecContext(ctx, "UPDATE snapshots SET status = 'error_deleting', updated_at = ? WHERE id = ?", utcNow(), id); uerr != nil {
			log.Error().Err(uerr).Msg("cannot set the snapshot's status to error_deleting")
		}
		m.userMessage(ctx, rc, "VOLUME_SNAPSHOT", id, actionSnapshotDelete, detailSnapshotDelete)
		return err
	}
	if err := m.destroySnapshot(ctx, id); err != nil {
		log.Error().Err(err).Msg("delete snapshot: cannot record it in cinder's database")
		return err
	}
	snap.Data["status"] = json.RawMessage(`"deleted"`)
	m.notifySnapshot(ctx, rc, "snapshot.delete.end", snap)
	log.Info().Msg("delete snapshot completed successfully")
	return nil
}

// destroySnapshot releases the snapshot's quota and soft-deletes it with
// its metadata and glance metadata.
func (m *Manager) destroySnapshot(ctx context.Context, id string) error {
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
	if err := tx.QueryRowContext(ctx, "SELECT s.project_id, v.volume_type_id, COALESCE(s.volume_size, 0), COALESCE(s.use_quota, 1), s.deleted FROM snapshots s LEFT JOIN volumes v ON v.id = s.volume_id WHERE s.id = ? FOR UPDATE", id).
		Scan(&projectID, &typeID, &size, &useQuota, &deleted); err != nil {
		return fmt.Errorf("read the snapshot: %w", err)
	}
	if deleted {
		return nil
	}
	now := utcNow()
	if useQuota && projectID.Valid {
		if err := releaseQuota(ctx, tx, projectID.String, typeID, map[string]int64{"snapshots": -1, "gigabytes": -size}); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, "UPDATE snapshots SET status = 'deleted', deleted = 1, deleted_at = ? WHERE id = ?", now, id); err != nil {
		return err
	}
	for _, q := range []string{"UPDATE snapshot_metadata SET deleted = 1, deleted_at = ? WHERE snapshot_id = ?", "UPDATE volume_glance_metadata SET deleted = 1, deleted_at = ? WHERE snapshot_id = ?"} {
		if _, err := tx.ExecContext(ctx, q, now, id); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// releaseQuota applies negative usage deltas (QUOTAS.reserve then commit,
// as their net effect), the volume type's keys too.
func releaseQuota(ctx context.Context, tx *sql.Tx, projectID string, typeID sql.NullString, deltas map[string]int64) error {
	if typeID.Valid {
		var name string
		if err := tx.QueryRowContext(ctx, "SELECT name FROM volume_types WHERE id = ?", typeID.String).Scan(&name); err == nil {
			for k, d := range maps.Clone(deltas) {
				deltas[k+"_"+name] = d
			}
		}
	}
	now := utcNow()
	for res, d := range deltas {
		if _, err := tx.ExecContext(ctx, "UPDATE quota_usages SET in_use = GREATEST(in_use + ?, 0), updated_at = ? WHERE project_id = ? AND resource = ? AND deleted = 0",
			d, now, projectID, res); err != nil {
			return fmt.Errorf("release quota %s: %w", res, err)
		}
	}
	return nil
}

// notifySnapshot sends a snapshot notification (_usage_from_snapshot),
// publisher snapshot.<host>@<backend>.
func (m *Manager) notifySnapshot(ctx context.Context, rc rpc.Context, event string, snap objectPrimitive) {
	if m.notifier == nil {
		return
	}
	raw := func(k string) any {
		var v any
		if r, ok := snap.Data[k]; ok {
			_ = json.Unmarshal(r, &v)
		}
		return v
	}
	var vol objectPrimitive
	if r, ok := snap.Data["volume"]; ok {
		_ = json.Unmarshal(r, &vol)
	}
	az := any(nil)
	if vol.Data != nil {
		az = vol.str("availability_zone")
	}
	deleted := any("")
	if b, _ := raw("deleted").(bool); b {
		deleted = true
	}
	payload := map[string]any{
		"tenant_id": raw("project_id"), "user_id": raw("user_id"), "availability_zone": az,
		"volume_id": raw("volume_id"), "volume_size": raw("volume_size"), "snapshot_id": raw("id"),
		"display_name": raw("display_name"), "created_at": isoTime(raw("created_at")), "status": raw("status"),
		"deleted": deleted, "metadata": "",
	}
	if md, ok := raw("metadata").(map[string]any); ok && len(md) > 0 {
		payload["metadata"] = md
	}
	n := m.tr.NewNotifier(rpc.NotifierConfig{Exchange: m.cfg.Exchange, PublisherID: "snapshot." + m.backendHost,
		Topics: m.cfg.NotificationTopics, Legacy: m.cfg.NotificationDriver == "messaging"})
	if err := n.Notify(ctx, rc, rpc.PriorityInfo, event, payload); err != nil {
		m.log.Warn().Err(err).Str("event_type", event).Msg("cannot send the notification")
	}
}

// createFromSource is the create flow's driver step for a volume from a
// snapshot (clone of its template) or from a volume (clone of its
// backing); a source without a backing gives a volume without one.
func (m *Manager) createFromSource(ctx context.Context, spec volumeSpec, snapshotID, sourceVolID string) error {
	if snapshotID != "" {
		var loc sql.NullString
		var volID string
		var size int64
		if err := m.db.QueryRowContext(ctx, "SELECT provider_location, volume_id, COALESCE(volume_size, 0) FROM snapshots WHERE id = ?", snapshotID).Scan(&loc, &volID, &size); err != nil {
			return fmt.Errorf("read snapshot %s: %w", snapshotID, err)
		}
		if _, ok, err := m.drv.findBacking(ctx, volID); err != nil || !ok {
			return err
		}
		if loc.String == "" {
			return nil
		}
		tmpl, err := m.drv.vc.FindByInventoryPath(ctx, loc.String)
		if err != nil {
			return cinderError("VolumeBackendAPIException", fmt.Sprintf("Template not found at path: %s.", loc.String))
		}
		return m.drv.cloneFrom(ctx, spec, tmpl, size, true)
	}
	var size int64
	var status string
	if err := m.db.QueryRowContext(ctx, "SELECT COALESCE(size, 0), status FROM volumes WHERE id = ?", sourceVolID).Scan(&size, &status); err != nil {
		return fmt.Errorf("read source volume %s: %w", sourceVolID, err)
	}
	src, ok, err := m.drv.findBacking(ctx, sourceVolID)
	if err != nil || !ok {
		return err
	}
	if spec.CloneType == "linked" && status != "available" {
		return cinderError("InvalidVolume", fmt.Sprintf("Linked clone of source volume not supported in state: %s.", status))
	}
	return m.drv.cloneFrom(ctx, spec, src.Ref, size, false)
}

// worker is a row of cinder's workers table that a cleanable operation
// holds (cinder's CinderCleanableObject.set_workers): claimed (or created)
// for this service when the operation starts, deleted when it ends with
// the resource's status changed. A crash leaves it for do_cleanup.
type worker struct {
	id     int64
	status string
}

// cleanableStatus reports whether status is one cinder keeps a worker row
// for (Volume: creating, deleting, uploading, downloading; Snapshot:
// creating).
func cleanableStatus(resourceType, status string) bool {
	if resourceType == "Snapshot" {
		return status == "creating"
	}
	switch status {
	case "creating", "deleting", "uploading", "downloading":
		return true
	}
	return false
}

// setWorker claims the resource's worker row for this service, or creates
// it; nil when the status is not cleanable or the service is not
// registered yet.
func (m *Manager) setWorker(ctx context.Context, resourceType, id, status string) *worker {
	m.mu.Lock()
	serviceID, registered := m.serviceID, m.registered
	m.mu.Unlock()
	if !registered || !cleanableStatus(resourceType, status) || m.db == nil {
		return nil
	}
	now := utcNow()
	w := &worker{status: status}
	err := m.db.QueryRowContext(ctx, "SELECT id FROM workers WHERE resource_type = ? AND resource_id = ? AND deleted = 0", resourceType, id).Scan(&w.id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		res, err := m.db.ExecContext(ctx, "INSERT INTO workers (created_at, updated_at, deleted, resource_type, resource_id, status, service_id, race_preventer) VALUES (?, ?, 0, ?, ?, ?, ?, 0)",
			now, now, resourceType, id, status, serviceID)
		if err != nil {
			m.log.Warn().Err(err).Str("resource_id", id).Msg("cannot create the workers row")
			return nil
		}
		w.id, _ = res.LastInsertId()
	case err != nil:
		m.log.Warn().Err(err).Str("resource_id", id).Msg("cannot read the workers row")
		return nil
	default:
		if _, err := m.db.ExecContext(ctx, "UPDATE workers SET service_id = ?, status = ?, race_preventer = race_preventer + 1, updated_at = ? WHERE id = ?",
			serviceID, status, now, w.id); err != nil {
			m.log.Warn().Err(err).Str("resource_id", id).Msg("cannot claim the workers row")
			return nil
		}
	}
	return w
}

// unsetWorker deletes the worker row when the resource's status moved on.
func (m *Manager) unsetWorker(ctx context.Context, w *worker, status string) {
	if w == nil || status == w.status {
		return
	}
	if _, err := m.db.ExecContext(context.WithoutCancel(ctx), "DELETE FROM workers WHERE id = ? AND status = ?", w.id, w.status); err != nil {
		m.log.Warn().Err(err).Int64("worker", w.id).Msg("cannot delete the workers row")
	}
}

// resourceStatus reads a volume's or snapshot's current status ("deleted"
// once gone).
func (m *Manager) resourceStatus(ctx context.Context, table, id string) string {
	var st sql.NullString
	var deleted bool
	if err := m.db.QueryRowContext(context.WithoutCancel(ctx), "SELECT status, deleted FROM "+table+" WHERE id = ?", id).Scan(&st, &deleted); err != nil {
		return ""
	}
	if deleted {
		return "deleted"
	}
	return st.String
}

// withWorker runs h holding the worker row of the request's resource
// (arg names the argument: volume or snapshot).
func (m *Manager) withWorker(arg, resourceType, table string, h rpc.Handler) rpc.Handler {
	return func(ctx context.Context, req *rpc.Request) (any, error) {
		var args map[string]json.RawMessage
		var obj objectPrimitive
		if req.DecodeArgs(&args) != nil || json.Unmarshal(args[arg], &obj) != nil || obj.str("id") == "" || m.db == nil {
			return h(ctx, req)
		}
		id := obj.str("id")
		w := m.setWorker(ctx, resourceType, id, obj.str("status"))
		defer func() {
			if w != nil {
				m.unsetWorker(ctx, w, m.resourceStatus(ctx, table, id))
			}
		}()
		return h(ctx, req)
	}
}

// acceptTransfer is cinder's accept_transfer (a call): the driver moves
// the backing to the new project's folder; no model update (the API
// changes the volume's owner).
func (m *Manager) acceptTransfer(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		VolumeID   string `json:"volume_id"`
		NewUser    string `json:"new_user"`
		NewProject string `json:"new_project"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	if err := m.needDriver(); err != nil {
		return nil, err
	}
	if err := m.drv.acceptTransfer(ctx, args.VolumeID, args.NewProject); err != nil {
		m.log.Error().Err(err).Str("volume_id", args.VolumeID).Msg("accept transfer failed")
		return nil, backendError("accept transfer", err)
	}
	m.log.Info().Str("volume_id", args.VolumeID).Str("new_project", args.NewProject).Msg("transfer volume completed successfully")
	return nil, nil
}
