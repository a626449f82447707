package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// cleanupRequest is cinder's CleanupRequest as do_cleanup uses it: the
// workers rows of ServiceID (optionally of one resource type or id)
// last updated at or before Until.
type cleanupRequest struct {
	ServiceID    sql.NullInt64
	ResourceType string
	ResourceID   string
	Until        time.Time
}

// workerRow is a row of cinder's workers table.
type workerRow struct {
	id            int64
	resourceType  string
	resourceID    string
	status        string
	serviceID     sql.NullInt64
	racePreventer int64
	updatedAt     any // as read, given back in the claim's condition
}

// initHostCleanup is the end of cinder-volume's init_host
// (CleanableManager.init_host): do_cleanup of this service's own workers
// rows, i.e. of the operations that a previous run of this service had
// under way when it stopped.
func (m *Manager) initHostCleanup(ctx context.Context) {
	m.mu.Lock()
	serviceID := m.serviceID
	m.mu.Unlock()
	m.log.Info().Int64("service_id", serviceID).Msg("initiating service cleanup")
	m.doCleanup(ctx, adminContext(), cleanupRequest{ServiceID: sql.NullInt64{Int64: serviceID, Valid: true}})
}

// doCleanup is cinder's CleanableManager.do_cleanup: each matching
// workers row is claimed for this service (conditionally: a row another
// service or a new operation took since it was read is left alone); its
// resource, when it still exists with the row's status, is cleaned as
// VolumeManager._do_cleanup does (creating and downloading: error;
// uploading: available or in-use; a volume deleting: the delete resumed,
// which removes the row itself); the row is then deleted. A failed
// clean-up gives the row back to its service.
//
// Like cinder, keep_entry is not reset between rows: once a delete was
// resumed, the rows cleaned after it in the same pass are kept (claimed
// by this service; the next clean-up finds their status changed and
// removes them).
func (m *Manager) doCleanup(ctx context.Context, rc rpc.Context, req cleanupRequest) {
	m.mu.Lock()
	claimer := m.serviceID
	m.mu.Unlock()
	until := req.Until
	if until.IsZero() {
		until = utcNow()
	}
	rows, err := m.workers(ctx, req, until)
	if err != nil {
		m.log.Error().Err(err).Msg("service cleanup: cannot read the workers table")
		return
	}
	keepEntry := false
	for _, w := range rows {
		// worker_claim_for_cleanup (a filter on a NULL service_id is
		// dropped, as _clean_filters does)
		q := "UPDATE workers SET service_id = ?, race_preventer = ?, updated_at = ? WHERE deleted = 0 AND resource_type != 'SENTINEL' AND id = ? AND status = ? AND race_preventer = ? AND updated_at <= ?"
		params := []any{claimer, w.racePreventer + 1, utcNow(), w.id, w.status, w.racePreventer, w.updatedAt}
		if w.serviceID.Valid {
			q += " AND service_id = ?"
			params = append(params, w.serviceID.Int64)
		}
		res, err := m.db.ExecContext(ctx, q, params...)
		if err != nil {
			m.log.Error().Err(err).Int64("worker", w.id).Msg("service cleanup: cannot claim the workers row")
			continue
		}
		if n, _ := res.RowsAffected(); n == 0 {
			continue // cleaned by another service, or a new operation started
		}
		log := m.log.With().Str("resource_type", w.resourceType).Str("resource_id", w.resourceID).Str("status", w.status).Logger()
		status, found, err := m.cleanableStatus(ctx, w.resourceType, w.resourceID)
		switch {
		case err != nil:
			log.Error().Err(err).Msg("could not perform cleanup")
			m.returnWorker(ctx, w)
			continue
		case !found:
			log.Debug().Msg("skipping cleanup for a non existent resource")
		case status != w.status:
			log.Debug().Str("found_status", status).Msg("skipping cleanup for mismatching work")
		default:
			log.Info().Msg("cleaning the resource")
			keep, err := m.cleanupResource(ctx, rc, w)
			if err != nil {
				log.Error().Err(err).Msg("could not perform cleanup")
				m.returnWorker(ctx, w)
				continue
			}
			keepEntry = keep
		}
		if !keepEntry {
			if res, err := m.db.ExecContext(ctx, "DELETE FROM workers WHERE deleted = 0 AND resource_type != 'SENTINEL' AND id = ?", w.id); err != nil {
				log.Warn().Err(err).Int64("worker", w.id).Msg("could not remove the workers row")
			} else if n, _ := res.RowsAffected(); n == 0 {
				log.Warn().Int64("worker", w.id).Msg("could not remove the workers row")
			}
		}
	}
	m.log.Info().Any("service_id", req.ServiceID.Int64).Int("workers", len(rows)).Msg("service cleanup completed")
}

// workers is worker_get_all: the rows (not the sentinel) matching req,
// updated at or before until.
func (m *Manager) workers(ctx context.Context, req cleanupRequest, until time.Time) ([]workerRow, error) {
	q := "SELECT id, resource_type, resource_id, status, service_id, race_preventer, updated_at FROM workers WHERE deleted = 0 AND resource_type != 'SENTINEL' AND updated_at <= ?"
	params := []any{until}
	if req.ServiceID.Valid {
		q += " AND service_id = ?"
		params = append(params, req.ServiceID.Int64)
	}
	if req.ResourceType != "" {
		q += " AND resource_type = ?"
		params = append(params, req.ResourceType)
	}
	if req.ResourceID != "" {
		q += " AND resource_id = ?"
		params = append(params, req.ResourceID)
	}
	rows, err := m.db.QueryContext(ctx, q+" ORDER BY id", params...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []workerRow
	for rows.Next() {
		var w workerRow
		if err := rows.Scan(&w.id, &w.resourceType, &w.resourceID, &w.status, &w.serviceID, &w.racePreventer, &w.updatedAt); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// returnWorker gives a row whose clean-up failed back to its service,
// with its time (worker_update: race_preventer+1).
func (m *Manager) returnWorker(ctx context.Context, w workerRow) {
	if _, err := m.db.ExecContext(ctx, "UPDATE workers SET service_id = ?, updated_at = ?, race_preventer = race_preventer + 1 WHERE deleted = 0 AND resource_type != 'SENTINEL' AND id = ?",
		w.serviceID, w.updatedAt, w.id); err != nil {
		m.log.Warn().Err(err).Int64("worker", w.id).Msg("cannot give the workers row back")
	}
}

// cleanableStatus reads the status of a worker's resource (a Volume or a
// Snapshot, not deleted).
func (m *Manager) cleanableStatus(ctx context.Context, resourceType, id string) (string, bool, error) {
	var table string
	switch resourceType {
	case "Volume":
		table = "volumes"
	case "Snapshot":
		table = "snapshots"
	default:
		return "", false, nil // objects the volume service does not know (groups...) are skipped
	}
	var st sql.NullString
	err := m.db.QueryRowContext(ctx, "SELECT status FROM "+table+" WHERE id = ? AND deleted = 0", id).Scan(&st)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return st.String, err == nil, err
}

// cleanupResource is VolumeManager._do_cleanup; it reports whether the
// workers row is left to the operation it resumed.
func (m *Manager) cleanupResource(ctx context.Context, rc rpc.Context, w workerRow) (bool, error) {
	table := "snapshots"
	if w.resourceType == "Volume" {
		table = "volumes"
		switch w.status {
		case "downloading":
			// the driver's clear_download does nothing; the volume goes to error below
		case "uploading":
			// volume_update_status_based_on_attachment
			_, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = IF(EXISTS (SELECT 1 FROM volume_attachment WHERE volume_id = ? AND deleted = 0), 'in-use', 'available'), updated_at = ? WHERE id = ?",
				w.resourceID, utcNow(), w.resourceID)
			return false, err
		case "deleting":
			vol, err := m.volumeObject(ctx, w.resourceID)
			if err != nil {
				return false, err
			}
			// volume_service_inithost_offload (default true): in the
			// background, holding the row (removed when the status changes)
			m.bg.Add(1)
			go func() {
				defer m.bg.Done()
				if err := m.deleteVolumeObject(ctx, rc, vol, false, true); err != nil {
					m.log.Error().Err(err).Str("volume_id", w.resourceID).Msg("resumed delete of the volume failed")
				}
				m.unsetWorker(ctx, &worker{id: w.id, status: w.status}, m.resourceStatus(ctx, "volumes", w.resourceID))
			}()
			return true, nil
		}
	}
	if w.status == "creating" || w.status == "downloading" {
		if _, err := m.db.ExecContext(ctx, "UPDATE "+table+" SET status = 'error', updated_at = ? WHERE id = ?", utcNow(), w.resourceID); err != nil {
			return false, err
		}
	}
	return false, nil
}

// doCleanupRPC is the do_cleanup cast (3.7) that cinder-scheduler's
// work_cleanup sends for the API's POST /workers/cleanup.
func (m *Manager) doCleanupRPC(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		CleanupRequest objectPrimitive `json:"cleanup_request"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	cr := args.CleanupRequest
	r := cleanupRequest{ResourceType: cr.str("resource_type"), ResourceID: cr.str("resource_id")}
	if raw, ok := cr.Data["service_id"]; ok && string(raw) != "null" {
		r.ServiceID.Valid = json.Unmarshal(raw, &r.ServiceID.Int64) == nil
	}
	if s := cr.str("until"); s != "" {
		t, err := parseObjectTime(s)
		if err != nil {
			return nil, rpc.BuiltinError("ValueError", fmt.Sprintf("cleanup request until %q: %v", s, err))
		}
		r.Until = t
	}
	m.log.Info().Any("service_id", r.ServiceID.Int64).Msg("initiating service cleanup")
	m.doCleanup(ctx, req.Context, r)
	return nil, nil
}

// parseObjectTime reads a DateTimeField primitive (ISO 8601, "Z" or an
// offset) as naive UTC.
func parseObjectTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999-07:00", "2006-01-02T15:04:05.999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("not an ISO 8601 time")
}

// objectTime is a database time as a DateTimeField primitive.
func objectTime(t sql.NullTime) json.RawMessage {
	if !t.Valid {
		return json.RawMessage("null")
	}
	b, _ := json.Marshal(t.Time.UTC().Format(time.RFC3339Nano))
	return b
}

func jsonOf(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func nullStr(s sql.NullString) any {
	if !s.Valid {
		return nil
	}
	return s.String
}

// volumeObject reads a volume as the Volume object the manager would
// load (the fields the role uses: identity, size, type, host, times,
// status and metadata).
func (m *Manager) volumeObject(ctx context.Context, id string) (objectPrimitive, error) {
	var (
		projectID, userID, host, az, typeID, name, status, snapID, srcID, encKey, repl, replExt, replData sql.NullString
		size                                                                                              sql.NullInt64
		created, launched                                                                                 sql.NullTime
	)
	if err := m.db.QueryRowContext(ctx, "SELECT project_id, user_id, host, availability_zone, volume_type_id, display_name, status, snapshot_id, source_volid, encryption_key_id, replication_status, replication_extended_status, replication_driver_data, size, created_at, launched_at FROM volumes WHERE id = ?", id).
		Scan(&projectID, &userID, &host, &az, &typeID, &name, &status, &snapID, &srcID, &encKey, &repl, &replExt, &replData, &size, &created, &launched); err != nil {
		return objectPrimitive{}, fmt.Errorf("read volume %s: %w", id, err)
	}
	md := map[string]string{}
	rows, err := m.db.QueryContext(ctx, "SELECT `key`, value FROM volume_metadata WHERE volume_id = ? AND deleted = 0", id)
	if err != nil {
		return objectPrimitive{}, err
	}
	for rows.Next() {
		var k, v sql.NullString
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return objectPrimitive{}, err
		}
		md[k.String] = v.String
	}
	rows.Close()
	data := map[string]json.RawMessage{
		"id": jsonOf(id), "project_id": jsonOf(nullStr(projectID)), "user_id": jsonOf(nullStr(userID)), "host": jsonOf(nullStr(host)),
		"availability_zone": jsonOf(nullStr(az)), "volume_type_id": jsonOf(nullStr(typeID)), "display_name": jsonOf(nullStr(name)),
		"status": jsonOf(nullStr(status)), "snapshot_id": jsonOf(nullStr(snapID)), "source_volid": jsonOf(nullStr(srcID)),
		"encryption_key_id": jsonOf(nullStr(encKey)), "replication_status": jsonOf(nullStr(repl)),
		"replication_extended_status": jsonOf(nullStr(replExt)), "replication_driver_data": jsonOf(nullStr(replData)),
		"size": jsonOf(size.Int64), "created_at": objectTime(created), "launched_at": objectTime(launched), "metadata": jsonOf(md),
	}
	return objectPrimitive{Name: "Volume", Version: "1.9", Data: data}, nil
}

// snapshotObject reads a snapshot as the Snapshot object (with its volume).
func (m *Manager) snapshotObject(ctx context.Context, id string) (objectPrimitive, error) {
	var (
		volumeID, projectID, userID, name, status sql.NullString
		volSize                                   sql.NullInt64
		created                                   sql.NullTime
	)
	if err := m.db.QueryRowContext(ctx, "SELECT volume_id, project_id, user_id, display_name, status, volume_size, created_at FROM snapshots WHERE id = ?", id).
		Scan(&volumeID, &projectID, &userID, &name, &status, &volSize, &created); err != nil {
		return objectPrimitive{}, fmt.Errorf("read snapshot %s: %w", id, err)
	}
	data := map[string]json.RawMessage{
		"id": jsonOf(id), "volume_id": jsonOf(nullStr(volumeID)), "project_id": jsonOf(nullStr(projectID)), "user_id": jsonOf(nullStr(userID)),
		"display_name": jsonOf(nullStr(name)), "status": jsonOf(nullStr(status)), "volume_size": jsonOf(volSize.Int64),
		"created_at": objectTime(created), "deleted": jsonOf(false), "metadata": jsonOf(map[string]string{}),
	}
	if volumeID.Valid {
		if vol, err := m.volumeObject(ctx, volumeID.String); err == nil {
			b, _ := json.Marshal(vol)
			data["volume"] = b
		}
	}
	return objectPrimitive{Name: "Snapshot", Version: "1.6", Data: data}, nil
}
