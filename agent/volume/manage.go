package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// manageExisting is cinder's manage_existing flow (volume side) with the
// VMDK driver: volume.manage_existing.start; the driver's size of the
// disk (a failure leaves the volume error_managing); the quota reserved
// and committed (gigabytes +size, per type too: their net change; the
// API counted the volume itself); the driver's manage_existing (a failure: error_managing, the
// quota back); then the volume available with its size and launched_at,
// and volume.manage_existing.end.
func (m *Manager) manageExisting(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume objectPrimitive `json:"volume"`
		Ref    map[string]any  `json:"ref"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	vol := args.Volume
	id := vol.str("id")
	log := m.log.With().Str("volume_id", id).Any("ref", args.Ref).Logger()
	m.notify(ctx, req.Context, "volume.manage_existing.start", vol, nil)
	errorManaging := func(cause error) (any, error) {
		log.Error().Err(cause).Msg("manage existing volume failed")
		if _, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = 'error_managing', updated_at = ? WHERE id = ?", utcNow(), id); err != nil {
			log.Error().Err(err).Msg("cannot set the volume's status to error_managing")
		}
		return nil, cause
	}
	if err := m.needDriver(); err != nil {
		return errorManaging(cinderError("DriverNotInitialized", "Volume driver not ready."))
	}
	size, err := m.drv.manageExistingGetSize(ctx, args.Ref)
	if err != nil {
		return errorManaging(err)
	}
	spec, err := m.volumeSpecOf(ctx, vol)
	if err == nil {
		spec.SizeGB = size
		err = m.drv.manageExisting(ctx, spec, args.Ref)
	}
	if err != nil {
		return errorManaging(err)
	}
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()
	var projectID, typeID sql.NullString
	if err := tx.QueryRowContext(ctx, "SELECT project_id, volume_type_id FROM volumes WHERE id = ? FOR UPDATE", id).Scan(&projectID, &typeID); err != nil {
		return nil, err
	}
	if projectID.Valid {
		// the API counted the volume; the flow's QuotaReserveTask
		// (update_size) reserves only its gigabytes
		if err := releaseQuota(ctx, tx, projectID.String, typeID, map[string]int64{"gigabytes": size}); err != nil {
			return nil, err
		}
	}
	now := utcNow()
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET size = ?, status = 'available', launched_at = ?, updated_at = ? WHERE id = ?", size, now, now, id); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	vol.Data["status"] = json.RawMessage(`"available"`)
	vol.Data["size"] = jsonOf(size)
	vol.Data["launched_at"] = jsonOf(now.Format(time.RFC3339Nano))
	m.notify(ctx, req.Context, "volume.manage_existing.end", vol, nil)
	m.triggerReport()
	log.Info().Int64("size_gb", size).Msg("manage existing volume completed successfully")
	return id, nil
}
