package volume

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// retype is cinder's VolumeManager.retype with the VMDK driver: types
// that differ in nothing are a retype without the driver; otherwise, on
// this backend and without an encryption change, the driver's retype
// (see vmdkDriver.retype). Retyped, the volume takes the new type, the
// scheduler's host and its previous status, its snapshots the new type,
// the reservations are committed and volume.retype sent. Not retyped, the
// volume gets its previous status back and the reservations are rolled
// back: with migration_policy never, VolumeMigrationFailed; on-demand
// needs a migration, which vcagent does not do (NotImplementedError).
func (m *Manager) retype(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		Volume          objectPrimitive `json:"volume"`
		NewTypeID       string          `json:"new_type_id"`
		Host            map[string]any  `json:"host"`
		MigrationPolicy string          `json:"migration_policy"`
		Reservations    []string        `json:"reservations"`
		OldReservations []string        `json:"old_reservations"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	vol := args.Volume
	id := vol.str("id")
	log := m.log.With().Str("volume_id", id).Str("new_type_id", args.NewTypeID).Logger()
	previous := vol.str("previous_status")
	if previous == "" {
		previous = vol.str("status")
	}
	retypeError := func() {
		if m.db == nil {
			return
		}
		if _, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = ?, updated_at = ? WHERE id = ?", previous, utcNow(), id); err != nil {
			log.Error().Err(err).Msg("cannot restore the volume's status")
		}
		for _, r := range [][]string{args.OldReservations, args.Reservations} {
			if err := m.settleReservations(ctx, r, false); err != nil {
				log.Error().Err(err).Msg("cannot roll the retype's reservations back")
			}
		}
	}
	if err := m.needDriver(); err != nil {
		retypeError()
		return nil, err
	}
	oldSpecs, oldEnc, oldQoS, err := m.typeTraits(ctx, vol.str("volume_type_id"))
	if err != nil {
		return nil, err
	}
	newSpecs, newEnc, newQoS, err := m.typeTraits(ctx, args.NewTypeID)
	if err != nil {
		return nil, err
	}
	retyped := maps.Equal(oldSpecs, newSpecs) && oldEnc == newEnc && oldQoS == newQoS
	hostName, _ := args.Host["host"].(string)
	if !retyped && oldEnc == newEnc && backendOf(hostName) == m.backendHost {
		spec, serr := m.volumeSpecOf(ctx, vol)
		var attachments int
		if serr == nil {
			serr = m.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM volume_attachment WHERE volume_id = ? AND deleted = 0", id).Scan(&attachments)
		}
		if serr == nil {
			retyped, serr = m.drv.retype(ctx, spec, attachments > 0, newSpecs)
		}
		if serr != nil {
			log.Error().Err(serr).Msg("volume failed to retype, falling back to the generic mechanism")
			retyped = false
		}
	}
	if !retyped {
		retypeError()
		if args.MigrationPolicy == "" || args.MigrationPolicy == "never" {
			return nil, cinderError("VolumeMigrationFailed", "Volume migration failed: Retype requires migration but is not allowed.")
		}
		var snaps int
		if err := m.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM snapshots WHERE volume_id = ? AND deleted = 0", id).Scan(&snaps); err == nil && snaps > 0 {
			return nil, cinderError("InvalidVolume", "Invalid volume: Volume must not have snapshots.")
		}
		return nil, rpc.BuiltinError("NotImplementedError", "vcagent's cinder-volume (VMDK) does not migrate volumes")
	}
	var cluster any
	if c, ok := args.Host["cluster_name"].(string); ok && c != "" {
		cluster = c
	}
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()
	now := utcNow()
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET volume_type_id = ?, host = ?, cluster_name = ?, status = ?, updated_at = ? WHERE id = ?",
		args.NewTypeID, hostName, cluster, previous, now, id); err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE snapshots SET volume_type_id = ?, updated_at = ? WHERE volume_id = ? AND deleted = 0", args.NewTypeID, now, id); err != nil {
		return nil, err
	}
	for _, r := range [][]string{args.OldReservations, args.Reservations} {
		if err := settleReservationsTx(ctx, tx, r, true); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	vol.Data["status"] = jsonOf(previous)
	vol.Data["volume_type_id"] = jsonOf(args.NewTypeID)
	vol.Data["host"] = jsonOf(hostName)
	m.notify(ctx, req.Context, "volume.retype", vol, map[string]any{"volume_type": args.NewTypeID})
	m.triggerReport()
	log.Info().Msg("retype volume completed successfully")
	return nil, nil
}

// backendOf is extract_host(host, 'backend'): host@backend without #pool.
func backendOf(host string) string {
	if i := strings.IndexByte(host, '#'); i >= 0 {
		return host[:i]
	}
	return host
}

// typeTraits reads what volume_types_diff compares of a volume type: its
// extra specs, its encryption (as one string) and its QoS specs id.
func (m *Manager) typeTraits(ctx context.Context, typeID string) (map[string]string, string, string, error) {
	specs := map[string]string{}
	if typeID == "" {
		return specs, "", "", nil
	}
	rows, err := m.db.QueryContext(ctx, "SELECT `key`, value FROM volume_type_extra_specs WHERE volume_type_id = ? AND deleted = 0", typeID)
	if err != nil {
		return nil, "", "", err
	}
	for rows.Next() {
		var k, v sql.NullString
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return nil, "", "", err
		}
		specs[k.String] = v.String
	}
	rows.Close()
	var qos sql.NullString
	if err := m.db.QueryRowContext(ctx, "SELECT qos_specs_id FROM volume_types WHERE id = ?", typeID).Scan(&qos); err != nil && err != sql.ErrNoRows {
		return nil, "", "", err
	}
	var enc []string
	erows, err := m.db.QueryContext(ctx, "SELECT COALESCE(cipher, ''), COALESCE(key_size, 0), COALESCE(provider, ''), COALESCE(control_location, '') FROM encryption WHERE volume_type_id = ? AND deleted = 0", typeID)
	if err != nil {
		return nil, "", "", err
	}
	for erows.Next() {
		var c, p, l string
		var k int
		if err := erows.Scan(&c, &k, &p, &l); err != nil {
			erows.Close()
			return nil, "", "", err
		}
		enc = append(enc, fmt.Sprint(c, k, p, l))
	}
	erows.Close()
	return specs, strings.Join(enc, ";"), qos.String, nil
}

// retype is the VMDK driver's retype: false for a volume in use (with
// attachments); true for one without a backing. Otherwise the backing
// moves when its disk type (vmware:vmdk_type) changes or its datastore is
// not compliant with the new type's storage profile
// (vmware:storage_profile): to the best datastore for its size compliant
// with the new profile (not its current one when it has VM snapshots and
// needs a disk conversion: relocation is then the only way to convert),
// relocated with the new disk type, or, staying on its datastore, cloned
// with the new disk type (the old one renamed first and deleted after, as
// the driver does); false when no datastore fits. Last, a changed profile
// is set on the backing. A new profile that does not exist is
// ProfileNotFoundException. SPBM is asked only when the new type has a
// profile.
func (d *vmdkDriver) retype(ctx context.Context, v volumeSpec, inUse bool, newSpecs map[string]string) (bool, error) {
	if inUse {
		d.log.Warn().Str("volume_id", v.ID).Msg("volume is in use, can't retype")
		return false, nil
	}
	b, ok, err := d.findBacking(ctx, v.ID)
	if err != nil {
		return false, err
	}
	if !ok {
		d.log.Debug().Str("volume_id", v.ID).Msg("backing doesn't exist; retype is NOP")
		return true, nil
	}
	newDiskType := newSpecs["vmware:vmdk_type"]
	if newDiskType == "" {
		newDiskType = vcenter.BackingDiskThin
	}
	if !vcenter.ValidBackingDiskType(newDiskType) {
		return false, fmt.Errorf("invalid disk type: %s", newDiskType)
	}
	needConversion := newDiskType != v.DiskType
	needRelocate := needConversion && b.HasSnapshots
	var current vcenter.Ref
	if len(b.Datastores) > 0 {
		current = b.Datastores[0]
	}
	newProfile := newSpecs["vmware:storage_profile"]
	needProfileChange := newProfile != v.StorageProfile
	compliant := true
	if newProfile != "" {
		id, err := d.pol.id(ctx, newProfile)
		if err != nil {
			return false, err
		}
		set, err := d.pol.datastores(ctx, id, true)
		if err != nil {
			return false, err
		}
		compliant = set[current]
	}
	if needConversion || !compliant {
		req := placementRequest{SizeGB: v.SizeGB, Profile: newProfile}
		if needRelocate {
			req.Avoid = current
		}
		pl, err := d.selectPlacement(ctx, req)
		if errors.Is(err, errNoDatastore) {
			d.log.Warn().Str("volume_id", v.ID).Err(err).Msg("there are no datastores matching new requirements; can't retype")
			return false, nil
		}
		if err != nil {
			return false, err
		}
		folder, err := d.volumeFolder(ctx, pl.Datacenter, v.ProjectID, false)
		if err != nil {
			return false, err
		}
		switch {
		case current != pl.Datastore.Ref:
			d.log.Info().Str("volume_id", v.ID).Str("datastore", pl.Datastore.Name).Msg("backing needs to be relocated for retype")
			if err := d.vc.RelocateBacking(ctx, b.Ref, pl.Datastore.Ref, pl.ResourcePool, vcenter.Ref{}, newDiskType); err != nil {
				return false, err
			}
			if b.Folder != folder {
				if err := d.vc.MoveBacking(ctx, b.Ref, folder); err != nil {
					return false, err
				}
			}
		case needConversion:
			if b.Ref, err = d.cloneForDiskType(ctx, v, b, folder, pl, current, newDiskType); err != nil {
				return false, err
			}
		}
	}
	if needProfileChange {
		profileID := ""
		if newProfile != "" {
			if profileID, err = d.pol.id(ctx, newProfile); err != nil {
				return false, err
			}
		}
		if err := d.vc.SetBackingProfile(ctx, b.Ref, profileID); err != nil {
			return false, err
		}
	}
	return true, nil
}

// cloneForDiskType converts a backing's disk on its own datastore: the
// backing renamed, cloned under the volume's name with the new disk type,
// the old one deleted and the clone given the volume's identity; the
// rename is undone when the clone fails. It returns the new backing.
func (d *vmdkDriver) cloneForDiskType(ctx context.Context, v volumeSpec, b vcenter.Backing, folder vcenter.Ref, pl placement, datastore vcenter.Ref, diskType string) (vcenter.Ref, error) {
	tmp := newUUID()
	if err := d.vc.RenameBacking(ctx, b.Ref, tmp); err != nil {
		return vcenter.Ref{}, err
	}
	clone, err := d.vc.CloneBacking(ctx, b.Ref, vcenter.CloneSpec{Name: v.name(), Folder: folder, ResourcePool: pl.ResourcePool,
		Datastore: datastore, DiskType: diskType})
	if err != nil {
		if rerr := d.vc.RenameBacking(context.WithoutCancel(ctx), b.Ref, v.name()); rerr != nil {
			d.log.Warn().Err(rerr).Str("vm", b.Ref.Value).Msg("changing the backing's name back failed")
		}
		return vcenter.Ref{}, err
	}
	if err := d.vc.DeleteBacking(ctx, b.Ref); err != nil {
		return vcenter.Ref{}, err
	}
	return clone, d.vc.SetBackingVolumeID(ctx, clone, v.ID)
}
