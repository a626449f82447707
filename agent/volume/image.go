package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// ImageService is what the volume role uses of glance (*cloud.Glance).
type ImageService interface {
	Image(ctx context.Context, token, id string) (cloud.Image, error)
	UpdateImage(ctx context.Context, token, id string, u cloud.ImageUpdate) error
	UploadImage(ctx context.Context, token, id string, data io.Reader) error
	DeleteImage(ctx context.Context, token, id string) error
	Download(ctx context.Context, token, id string) (io.ReadCloser, int64, error)
}

// imageDisks puts images on datastores (*vcenter.Session with a
// vcenter.ImageCache).
type imageDisks interface {
	Ensure(ctx context.Context, dc, ds, imageID string, fetch vcenter.FetchFunc, kind vcenter.DiskKind) (vcenter.DatastorePath, error)
}

// diskCopier copies a cached image into a backing's directory, grown to
// the volume's size (*vcenter.Session).
type diskCopier interface {
	CopyToInstance(ctx context.Context, dc string, cached, dir vcenter.DatastorePath, sizeGB int64) (vcenter.DatastorePath, error)
	DeleteDatastoreFile(ctx context.Context, dc string, p vcenter.DatastorePath) error
}

// exporter streams a backing's disk as a streamOptimized VMDK
// (*vcenter.Session).
type exporter interface {
	ExportRootDisk(ctx context.Context, vm vcenter.Ref, snapshotName string, fn func(vcenter.ExportInfo, io.Reader) error) error
}

// copyVolumeToImage is cinder's copy_volume_to_image with the VMDK
// driver: refused for an attached volume or a disk format other than
// vmdk; the backing (created now if the volume has none) exported as a
// streamOptimized VMDK into the queued glance image, whose metadata
// becomes disk_format vmdk, vmware_disktype streamOptimized,
// vmware_image_version 1, owner_id the volume's project (oslo.vmware's
// upload_image). Whatever happens, the volume's status goes back to
// available or in-use; on failure the user is told and a queued or saving
// image deleted.
func (m *Manager) copyVolumeToImage(ctx context.Context, req *rpc.Request) (any, error) {
	var args struct {
		VolumeID  string         `json:"volume_id"`
		ImageMeta map[string]any `json:"image_meta"`
	}
	if err := req.DecodeArgs(&args); err != nil {
		return nil, err
	}
	imageID, _ := args.ImageMeta["id"].(string)
	log := m.log.With().Str("volume_id", args.VolumeID).Str("image_id", imageID).Logger()
	token := req.Context.String("auth_token")
	err := m.uploadVolume(ctx, req, args.VolumeID, args.ImageMeta)
	if err != nil {
		log.Error().Err(err).Msg("upload volume to image encountered an error")
		m.userMessage(ctx, req.Context, "VOLUME", args.VolumeID, "003", "004")
		if m.cfg.Images != nil && imageID != "" {
			if img, ierr := m.cfg.Images.Image(context.WithoutCancel(ctx), token, imageID); ierr == nil && (img.Status == "queued" || img.Status == "saving") {
				if derr := m.cfg.Images.DeleteImage(context.WithoutCancel(ctx), token, imageID); derr != nil {
					log.Warn().Err(derr).Msg("image delete encountered an error")
				}
			}
		}
	}
	if uerr := m.statusFromAttachments(ctx, args.VolumeID); uerr != nil {
		log.Error().Err(uerr).Msg("cannot set the volume's status back")
	}
	if err != nil {
		return nil, err
	}
	log.Info().Msg("copy volume to image completed successfully")
	return nil, nil
}

func (m *Manager) uploadVolume(ctx context.Context, req *rpc.Request, volumeID string, meta map[string]any) error {
	if err := m.needDriver(); err != nil {
		return err
	}
	ex, ok := m.drv.vc.(exporter)
	if !ok || m.cfg.Images == nil {
		return rpc.BuiltinError("NotImplementedError", "vcagent's cinder-volume has no glance client (VCAGENT_GLANCE_ENDPOINT, VCAGENT_AUTH_*)")
	}
	var (
		size                int64
		project, typeID, st sql.NullString
		attached            int
	)
	if err := m.db.QueryRowContext(ctx, "SELECT COALESCE(size, 0), project_id, volume_type_id, status FROM volumes WHERE id = ?", volumeID).Scan(&size, &project, &typeID, &st); err != nil {
		return fmt.Errorf("read volume %s: %w", volumeID, err)
	}
	if err := m.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM volume_attachment WHERE volume_id = ? AND deleted = 0 AND attach_status <> 'detached'", volumeID).Scan(&attached); err != nil {
		return err
	}
	if attached > 0 {
		return cinderError("InvalidVolume", "Invalid volume: Upload to glance of attached volume is not supported.")
	}
	if f, _ := meta["disk_format"].(string); f != "vmdk" {
		return cinderError("ImageUnacceptable", fmt.Sprintf("Image %v is unacceptable: Disk format %s is not supported.", meta["id"], f))
	}
	spec, err := m.volumeSpecOf(ctx, primitiveOf(map[string]any{"id": volumeID, "size": size, "project_id": project.String, "volume_type_id": typeID.String}))
	if err != nil {
		return err
	}
	b, found, err := m.drv.findBacking(ctx, volumeID)
	if err != nil {
		return err
	}
	ref := b.Ref
	if !found {
		m.log.Info().Str("volume_id", volumeID).Msg("backing not found, creating one for the upload")
		if ref, err = m.drv.createBacking(ctx, spec, vcenter.Ref{}); err != nil {
			return err
		}
	}
	imageID, _ := meta["id"].(string)
	name, _ := meta["name"].(string)
	token := req.Context.String("auth_token")
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ImageTransferTimeout) // vmware_image_transfer_timeout_secs
	defer cancel()
	err = ex.ExportRootDisk(ctx, ref, "volume-"+volumeID+"-upload", func(info vcenter.ExportInfo, r io.Reader) error {
		if err := m.cfg.Images.UpdateImage(ctx, token, imageID, cloud.ImageUpdate{
			Name: name, DiskFormat: "vmdk",
			Properties: map[string]any{"vmware_image_version": "1", "vmware_disktype": "streamOptimized", "owner_id": project.String},
		}); err != nil {
			return err
		}
		return m.cfg.Images.UploadImage(ctx, token, imageID, r)
	})
	if errors.Is(err, vcenter.ErrNoRootDisk) {
		return cinderError("VolumeBackendAPIException", "the volume's backing has no disk")
	}
	return err
}

// statusFromAttachments is volume_update_status_based_on_attachment:
// available without attachments, in-use with.
func (m *Manager) statusFromAttachments(ctx context.Context, volumeID string) error {
	ctx = context.WithoutCancel(ctx)
	var n int
	if err := m.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM volume_attachment WHERE volume_id = ? AND deleted = 0", volumeID).Scan(&n); err != nil {
		return err
	}
	status := "available"
	if n > 0 {
		status = "in-use"
	}
	_, err := m.db.ExecContext(ctx, "UPDATE volumes SET status = ?, updated_at = ? WHERE id = ?", status, utcNow(), volumeID)
	return err
}

// primitiveOf makes an object primitive's data from plain values.
func primitiveOf(values map[string]any) objectPrimitive {
	o := objectPrimitive{Data: map[string]json.RawMessage{}}
	for k, v := range values {
		o.Data[k], _ = json.Marshal(v)
	}
	return o
}

// createFromImage is the driver's copy_image_to_volume: a vmdk image
// (preallocated, sparse or streamOptimized, as vmware_disktype says) put
// on the chosen datastore (through the role's image cache), copied into
// the backing's directory volume-<id>/ and grown to the volume's size,
// and the backing created with that disk. It returns the image's metadata
// for the volume's glance metadata.
func (m *Manager) createFromImage(ctx context.Context, rc rpc.Context, spec volumeSpec, imageID string) (cloud.Image, error) {
	if err := m.needDriver(); err != nil {
		return cloud.Image{}, err
	}
	cp, ok := m.drv.vc.(diskCopier)
	if !ok || m.cfg.Images == nil || m.images == nil {
		return cloud.Image{}, rpc.BuiltinError("NotImplementedError", "vcagent's cinder-volume has no glance client (VCAGENT_GLANCE_ENDPOINT, VCAGENT_AUTH_*)")
	}
	token := rc.String("auth_token")
	meta, err := m.cfg.Images.Image(ctx, token, imageID)
	if err != nil {
		return cloud.Image{}, err
	}
	if meta.DiskFormat != "vmdk" {
		return meta, cinderError("ImageUnacceptable", fmt.Sprintf("Image %s is unacceptable: Disk format %s is not supported.", imageID, meta.DiskFormat))
	}
	kind := vcenter.DiskKindPreallocated
	if t, _ := meta.Properties["vmware_disktype"].(string); t != "" {
		kind = vcenter.DiskKind(t)
	}
	pl, err := m.drv.selectPlacement(ctx, placementRequest{SizeGB: spec.SizeGB, Profile: spec.StorageProfile})
	if err != nil {
		return meta, err
	}
	profileID, err := m.drv.profileID(ctx, spec)
	if err != nil {
		return meta, err
	}
	folder, err := m.drv.volumeFolder(ctx, pl.Datacenter, spec.ProjectID, false)
	if err != nil {
		return meta, err
	}
	tctx, cancel := context.WithTimeout(ctx, m.cfg.ImageTransferTimeout) // vmware_image_transfer_timeout_secs
	defer cancel()
	cached, err := m.images.Ensure(tctx, pl.Datacenter, pl.Datastore.Name, imageID, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return m.cfg.Images.Download(ctx, token, imageID)
	}, kind)
	if err != nil {
		return meta, fmt.Errorf("image %s: %w", imageID, err)
	}
	dir := vcenter.DatastorePath{Datastore: pl.Datastore.Name, Path: spec.name()}
	disk, err := cp.CopyToInstance(ctx, pl.Datacenter, cached, dir, spec.SizeGB)
	if err != nil {
		return meta, err
	}
	m.drv.ensureExtension(ctx)
	if _, err := m.drv.vc.CreateBacking(ctx, vcenter.BackingSpec{
		Name: spec.name(), VolumeID: spec.ID, SizeGB: spec.SizeGB, DiskType: spec.DiskType, AdapterType: spec.AdapterType,
		Folder: folder, ResourcePool: pl.ResourcePool, Datastore: pl.Datastore.Name, DiskPath: disk.String(), ProfileID: profileID,
	}); err != nil {
		if derr := cp.DeleteDatastoreFile(context.WithoutCancel(ctx), pl.Datacenter, dir); derr != nil {
			m.log.Warn().Err(derr).Str("dir", dir.String()).Msg("cannot delete the copied image of a failed backing")
		}
		return meta, err
	}
	return meta, nil
}

// imageMetadata is the volume's glance metadata of an image, as
// volume_utils.get_volume_image_metadata makes it.
func imageMetadata(meta cloud.Image) map[string]string {
	md := map[string]string{"image_id": meta.ID, "image_name": meta.Name, "container_format": meta.ContainerFormat,
		"disk_format": meta.DiskFormat, "size": fmt.Sprint(meta.Size)}
	for k, v := range meta.Properties {
		switch k {
		case "direct_url", "locations", "os_glance_import_task", "stores":
			continue
		}
		if s, ok := v.(string); ok {
			md[k] = s
		} else if v != nil {
			b, _ := json.Marshal(v)
			md[k] = string(b)
		}
	}
	return md
}

// bootableFromImage marks the volume bootable and records its glance
// metadata, in one transaction.
func (m *Manager) bootableFromImage(ctx context.Context, volumeID string, meta cloud.Image) error {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	now := utcNow()
	if _, err := tx.ExecContext(ctx, "UPDATE volumes SET bootable = 1, updated_at = ? WHERE id = ?", now, volumeID); err != nil {
		return err
	}
	for k, v := range imageMetadata(meta) {
		if _, err := tx.ExecContext(ctx, "INSERT INTO volume_glance_metadata (created_at, deleted, volume_id, `key`, value) VALUES (?, 0, ?, ?, ?)", now, volumeID, k, v); err != nil {
			return err
		}
	}
	return tx.Commit()
}
