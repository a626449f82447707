package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// rootDiskExporter is what a snapshot needs of vCenter beyond the
// Hypervisor (vcenter.Session.ExportRootDisk).
type rootDiskExporter interface {
	ExportRootDisk(ctx context.Context, vm vcenter.Ref, snapshotName string, fn func(vcenter.ExportInfo, io.Reader) error) error
}

// imageWriter is what a snapshot needs of glance beyond Images
// (cloud.Glance's UpdateImage, UploadImage and DeleteImage).
type imageWriter interface {
	UpdateImage(ctx context.Context, token, id string, u cloud.ImageUpdate) error
	UploadImage(ctx context.Context, token, id string, data io.Reader) error
	DeleteImage(ctx context.Context, token, id string) error
}

// snapshotDeps returns the exporter and the glance writer, or an error
// naming what is missing.
func (l *lifecycle) snapshotDeps() (rootDiskExporter, imageWriter, error) {
	ex, ok := l.hv.(rootDiskExporter)
	if !ok {
		return nil, nil, fmt.Errorf("snapshot: the hypervisor (%T) cannot export disks", l.hv)
	}
	iw, ok := l.images.(imageWriter)
	if !ok || l.images == nil {
		return nil, nil, fmt.Errorf("snapshot: glance is not configured for uploads (VCAGENT_AUTH_URL or VCAGENT_AUTH_TOKEN with VCAGENT_GLANCE_ENDPOINT)")
	}
	return ex, iw, nil
}

// maxConcurrentSnapshots is nova's [DEFAULT] max_concurrent_snapshots:
// how many snapshot_instance run at once, the others wait.
const maxConcurrentSnapshots = 5

// snapshotSlots is the role's semaphore of maxConcurrentSnapshots.
func (l *lifecycle) snapshotSlots() chan struct{} {
	l.snapshotsOnce.Do(func() { l.snapshots = make(chan struct{}, maxConcurrentSnapshots) })
	return l.snapshots
}

// taskStateUpdate is nova's update_task_state callback of driver.snapshot:
// it saves task_state with the expected one; the shelve maps the states to
// its own.
type taskStateUpdate func(ctx context.Context, state, expected string) error

// SnapshotInstance is snapshot_instance, as nova-compute does it with the
// VMware driver: task_state image_snapshot (expected
// image_snapshot_pending), the VM's power state saved, snapshot.start
// (legacy and versioned InstanceActionSnapshotPayload 1.9), then the
// driver's snapshot — image_pending_upload, a VM snapshot, image_uploading,
// the root disk exported as a streamOptimized VMDK and uploaded to the
// glance image nova-api created, the VM snapshot removed — and
// task_state None (expected image_uploading) with snapshot.end. A failure
// deletes the image (delete_image_on_error) and is recorded as nova's
// decorators do; an instance deleted meanwhile ends the snapshot quietly,
// deleting the image unless it became active.
func (l *lifecycle) SnapshotInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		ImageID string `json:"image_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_snapshot_instance", method: "snapshot_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			inst.SetString("task_state", "image_snapshot")
			if err := l.save(ctx, rc, inst, "image_snapshot_pending"); err != nil {
				if instanceGone(err) {
					zerolog.Ctx(ctx).Debug().Err(err).Msg("instance gone, snapshot cannot continue")
					return nil
				}
				return l.deleteImageOnError(ctx, rc, a.ImageID, err)
			}
			select { // nova's _snapshot_semaphore
			case l.snapshotSlots() <- struct{}{}:
			case <-ctx.Done():
				return l.deleteImageOnError(ctx, rc, a.ImageID, fmt.Errorf("waiting for a snapshot slot: %w", ctx.Err()))
			}
			err := l.snapshotInstance(ctx, rc, inst, a.ImageID)
			<-l.snapshotSlots()
			if err != nil {
				return l.deleteImageOnError(ctx, rc, a.ImageID, err)
			}
			return nil
		})
}

// deleteImageOnError is nova's delete_image_on_error: the snapshot's
// image is deleted (a missing one is fine) and the error passed on.
func (l *lifecycle) deleteImageOnError(ctx context.Context, rc rpc.Context, imageID string, cause error) error {
	if iw, ok := l.images.(imageWriter); ok && l.images != nil && imageID != "" {
		zerolog.Ctx(ctx).Debug().Str("image_id", imageID).Msg("cleaning up image")
		if err := iw.DeleteImage(context.WithoutCancel(ctx), rc.String("auth_token"), imageID); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			zerolog.Ctx(ctx).Warn().Err(err).Str("image_id", imageID).Msg("deleting the snapshot image failed")
		}
	}
	return cause
}

// snapshotInstance is nova's _snapshot_instance for snapshot_instance,
// whose first task state update expects image_snapshot (backup_instance
// expects image_backup).
func (l *lifecycle) snapshotInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object, imageID string) error {
	return l.snapshotInstanceExpecting(ctx, rc, inst, imageID, "image_snapshot")
}

// driverSnapshot is the VMware driver's snapshot (vmops.snapshot):
// image_pending_upload, a VM snapshot of the root disk, image_uploading,
// the disk exported through an NFC lease as streamOptimized and uploaded
// to the image (upload_image_stream_optimized), the VM snapshot removed.
// expected is the task state the first update expects.
func (l *lifecycle) driverSnapshot(ctx context.Context, rc rpc.Context, inst *ovo.Object, imageID, expected string, update taskStateUpdate) error {
	ex, iw, err := l.snapshotDeps()
	if err != nil {
		return err
	}
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return err
	}
	if len(vm.Disks) == 0 {
		return &rpc.RemoteError{Class: "NoRootDiskDefined", Module: "nova.virt.vmwareapi.error_util",
			Message: "No root disk defined.", Kwargs: map[string]any{"code": 500}}
	}
	if err := update(ctx, "image_pending_upload", expected); err != nil {
		return err
	}
	token := rc.String("auth_token")
	uuid := inst.StringOrEmpty("uuid")
	err = ex.ExportRootDisk(ctx, vm.Ref, uuid+"-snapshot", func(info vcenter.ExportInfo, r io.Reader) error {
		if err := update(ctx, "image_uploading", "image_pending_upload"); err != nil {
			return err
		}
		return l.uploadStreamOptimized(ctx, iw, token, imageID, inst, info, r)
	})
	if errors.Is(err, vcenter.ErrNoRootDisk) {
		return &rpc.RemoteError{Class: "NoRootDiskDefined", Module: "nova.virt.vmwareapi.error_util",
			Message: "No root disk defined.", Kwargs: map[string]any{"code": 500}}
	}
	return err
}

// uploadStreamOptimized is nova's images.upload_image_stream_optimized:
// the image's metadata updated (disk_format vmdk, container_format bare,
// vmware_disktype streamOptimized, vmware_image_version 1, owner_id), then
// the data streamed to glance. Like nova's IMAGE_API.update (purge_props
// False) it keeps every other property of the image nova-api created
// (image_type, instance_uuid, the base image's vmware_adaptertype, ...)
// and adds no vmware_adaptertype or vmware_ostype of its own.
func (l *lifecycle) uploadStreamOptimized(ctx context.Context, iw imageWriter, token, imageID string, inst *ovo.Object, info vcenter.ExportInfo, r io.Reader) error {
	meta, err := l.images.Image(ctx, token, imageID)
	if err != nil {
		return err
	}
	props := map[string]any{
		"vmware_image_version": "1",
		"vmware_disktype":      string(vcenter.DiskKindStreamOptimized),
		"owner_id":             inst.StringOrEmpty("project_id"),
	}
	if err := iw.UpdateImage(ctx, token, imageID, cloud.ImageUpdate{
		Name: meta.Name, DiskFormat: "vmdk", ContainerFormat: "bare", Properties: props,
	}); err != nil {
		return err
	}
	cr := &countingReader{r: r}
	start := time.Now()
	if err := iw.UploadImage(ctx, token, imageID, cr); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("image_id", imageID).Int64("bytes", cr.n).Bool("converted", info.Converted).
		Dur("took", time.Since(start)).Msg("uploaded the snapshot to glance")
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// snapshotAction sends the versioned instance.snapshot.<phase> with nova's
// InstanceActionSnapshotPayload 1.9 (the legacy compute.instance.snapshot.*
// go through instanceAction).
func (n *notifier) snapshotAction(ctx context.Context, rc rpc.Context, inst *ovo.Object, phase, imageID string) {
	if n == nil || n.versioned == nil {
		return
	}
	p := n.instancePayload(rc, inst)
	p["fault"] = nil
	p["snapshot_image_id"] = imageID
	n.send(ctx, n.versioned, rc, rpc.PriorityInfo, "instance.snapshot."+phase, versionedObject("InstanceActionSnapshotPayload", "1.9", p))
}
