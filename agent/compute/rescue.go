package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// rescueSuffix ends the name of a rescue disk, as nova's VMware driver
// names it (<image id>-rescue.vmdk, found by vm_util.find_rescue_device).
const rescueSuffix = "-rescue.vmdk"

// rescuer is what rescue and unrescue need of vCenter beyond the
// Hypervisor.
type rescuer interface {
	CopyVirtualDisk(ctx context.Context, dc string, src, dst vcenter.DatastorePath, thin bool) error
	DeleteVirtualDisk(ctx context.Context, dc string, p vcenter.DatastorePath) error
	SetBootDisk(ctx context.Context, vm vcenter.Ref, diskKey int32) error
	DetachDisk(ctx context.Context, vm vcenter.Ref, diskKey int32, destroy bool) error
}

// rescueHV returns the hypervisor's rescue operations, or an error saying
// it has none.
func (l *lifecycle) rescueHV() (rescuer, error) {
	r, ok := l.hv.(rescuer)
	if !ok {
		return nil, fmt.Errorf("rescue: the hypervisor (%T) cannot copy, boot from or detach disks", l.hv)
	}
	return r, nil
}

// rescueArgs are rescue_instance's arguments.
type rescueArgs struct {
	RescuePassword *string `json:"rescue_password"`
	RescueImageRef *string `json:"rescue_image_ref"`
	CleanShutdown  *bool   `json:"clean_shutdown"`
}

// RescueInstance is rescue_instance, as nova-compute runs it with the
// VMware driver (vmops.rescue): the VM is powered off, the rescue image
// (rescue_image_ref, else the instance's base image, else its image) is
// put in the image cache of the root disk's datastore and copied next to
// the root disk as <image id>-rescue.vmdk, attached, made the boot disk,
// and the VM powered on; the instance becomes RESCUED. A driver failure
// leaves the instance in ERROR with InstanceNotRescuable, as in nova.
func (l *lifecycle) RescueInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a rescueArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, opSpec{event: "compute_rescue_instance", method: "rescue_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			var rescueRef any
			imageID := ""
			if a.RescueImageRef != nil && *a.RescueImageRef != "" {
				imageID, rescueRef = *a.RescueImageRef, *a.RescueImageRef
			}
			if imageID == "" {
				if sm := stringDict(inst, "system_metadata"); sm["image_base_image_ref"] != nil {
					imageID, _ = sm["image_base_image_ref"].(string)
				}
			}
			if imageID == "" {
				zerolog.Ctx(ctx).Warn().Msg("unable to find a different image to use for the rescue VM, using the instance's current image")
				imageID = inst.StringOrEmpty("image_ref")
			}
			if l.images == nil || l.cache == nil {
				return fmt.Errorf("cannot rescue: glance is not configured")
			}
			token := rc.String("auth_token")
			meta, err := l.images.Image(ctx, token, imageID)
			if err != nil {
				return fmt.Errorf("rescue image %s: %w", imageID, err)
			}
			extra := map[string]any{"rescue_image_name": meta.Name}
			l.notify.rescueAction(ctx, rc, inst, "start", rescueRef, extra)

			if err := l.rescueVM(ctx, rc, inst, imageID, meta.Properties); err != nil {
				zerolog.Ctx(ctx).Error().Err(err).Msg("error trying to rescue the instance")
				l.errorOut(ctx, rc, inst)
				uuid := inst.StringOrEmpty("uuid")
				reason := "Driver Error: " + err.Error()
				return &rpc.RemoteError{Class: "InstanceNotRescuable", Module: "nova.exception",
					Message: fmt.Sprintf("Instance %s cannot be rescued: %s", uuid, reason),
					Kwargs:  map[string]any{"instance_id": uuid, "reason": reason, "code": 400}}
			}

			// rescueVM powered the VM on last: nova's _get_power_state
			// would read RUNNING (a round trip the agent saves).
			setStates(inst, "rescued", nil, powerRunning)
			inst.SetDateTime("launched_at", time.Now().UTC())
			if err := l.save(ctx, rc, inst, "rescuing"); err != nil {
				return err
			}
			l.notify.rescueAction(ctx, rc, inst, "end", rescueRef, extra)
			return nil
		})
}

// novaPowerState maps a vSphere power state to nova's (the VMware
// driver's get_info).
func novaPowerState(s string) int64 {
	switch s {
	case vcenter.PowerStateOn:
		return powerRunning
	case vcenter.PowerStateOff:
		return powerShutdown
	case vcenter.PowerStateSuspended:
		return powerSuspended
	}
	return powerNoState
}

// rescueVM is the VMware driver's rescue.
func (l *lifecycle) rescueVM(ctx context.Context, rc rpc.Context, inst *ovo.Object, imageID string, props map[string]any) error {
	hv, err := l.rescueHV()
	if err != nil {
		return err
	}
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return err
	}
	root, ok := rootDisk(vm)
	if !ok {
		return fmt.Errorf("VM %s has no root disk", vm.Ref.Value)
	}
	rootPath, err := vcenter.ParseDatastorePath(root.FileName)
	if err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	dc, err := l.vmDatacenter(ctx, inst, vm, rootPath.Datastore)
	if err != nil {
		return err
	}
	if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
		return fmt.Errorf("powering off: %w", err)
	}
	kind := vcenter.DiskKindPreallocated
	if t, _ := props["vmware_disktype"].(string); t != "" {
		kind = vcenter.DiskKind(t)
	}
	token := rc.String("auth_token")
	cached, err := l.cache.Ensure(ctx, dc, rootPath.Datastore, imageID, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return l.images.Download(ctx, token, imageID)
	}, kind)
	if err != nil {
		return fmt.Errorf("image %s: %w", imageID, err)
	}
	rescuePath := rootPath.Dir().Join(imageID + rescueSuffix)
	err = hv.CopyVirtualDisk(ctx, dc, cached, rescuePath, false)
	if errors.Is(err, vcenter.ErrFileExists) {
		// Left by an earlier rescue that failed: replace it.
		if err = hv.DeleteVirtualDisk(ctx, dc, rescuePath); err == nil {
			err = hv.CopyVirtualDisk(ctx, dc, cached, rescuePath, false)
		}
	}
	if err != nil {
		return fmt.Errorf("copying the rescue disk: %w", err)
	}
	disk, err := l.hv.AttachDisk(ctx, vm.Ref, rescuePath.String(), 0, root.ControllerKey)
	if err != nil {
		return fmt.Errorf("attaching the rescue disk: %w", err)
	}
	if err := hv.SetBootDisk(ctx, vm.Ref, disk.Key); err != nil {
		return fmt.Errorf("booting from the rescue disk: %w", err)
	}
	if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
		return fmt.Errorf("powering on: %w", err)
	}
	return nil
}

// rootDisk is the VM's first disk that is not a rescue disk.
func rootDisk(vm vcenter.VM) (vcenter.Disk, bool) {
	for _, d := range vm.Disks {
		if !strings.HasSuffix(d.FileName, rescueSuffix) {
			return d, true
		}
	}
	return vcenter.Disk{}, false
}

// rescueDisk is nova's vm_util.find_rescue_device.
func rescueDisk(vm vcenter.VM) (vcenter.Disk, bool) {
	for _, d := range vm.Disks {
		if strings.HasSuffix(d.FileName, rescueSuffix) {
			return d, true
		}
	}
	return vcenter.Disk{}, false
}

// vmDatacenter names the datacenter of the VM's disk on datastore ds: the
// VM's own, read with it; else (a VM read without it) datacenterOf's.
func (l *lifecycle) vmDatacenter(ctx context.Context, inst *ovo.Object, vm vcenter.VM, ds string) (string, error) {
	if vm.DatacenterName != "" {
		return vm.DatacenterName, nil
	}
	return l.datacenterOf(ctx, inst, ds)
}

// datacenterOf names the datacenter of the instance's node (its cluster),
// or else of the cluster that has datastore ds.
func (l *lifecycle) datacenterOf(ctx context.Context, inst *ovo.Object, ds string) (string, error) {
	clusters, err := l.hv.Clusters(ctx)
	if err != nil {
		return "", err
	}
	moref, _, _ := strings.Cut(inst.StringOrEmpty("node"), ".")
	for _, c := range clusters {
		if c.Ref.Value == moref {
			return c.Datacenter, nil
		}
	}
	for _, c := range clusters {
		for _, d := range c.Datastores {
			if d.Name == ds {
				return c.Datacenter, nil
			}
		}
	}
	return "", fmt.Errorf("no cluster for node %q or datastore %q", inst.StringOrEmpty("node"), ds)
}

// UnrescueInstance is unrescue_instance, as the VMware driver does it
// (vmops.unrescue): the VM is powered off, the rescue disk detached and
// deleted (which gives the boot order back to the root disk), and the VM
// powered on; the instance becomes ACTIVE. A failure leaves the instance
// in ERROR, as nova's _error_out_instance_on_exception does.
func (l *lifecycle) UnrescueInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_unrescue_instance", method: "unrescue_instance", action: "unrescue", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			if err := l.unrescueVM(ctx, inst); err != nil {
				l.errorOut(ctx, rc, inst)
				return err
			}
			// unrescueVM powered the VM on last: RUNNING, as nova's
			// _get_power_state would read it.
			setStates(inst, "active", nil, powerRunning)
			return l.save(ctx, rc, inst, "unrescuing")
		})
}

// unrescueVM is the VMware driver's unrescue.
func (l *lifecycle) unrescueVM(ctx context.Context, inst *ovo.Object) error {
	hv, err := l.rescueHV()
	if err != nil {
		return err
	}
	vm, err := l.vmRead(ctx, inst)
	if err != nil {
		return err
	}
	disk, ok := rescueDisk(vm)
	if !ok {
		uuid := inst.StringOrEmpty("uuid")
		return &rpc.RemoteError{Class: "NotFound", Module: "nova.exception",
			Message: "Rescue device does not exist for instance " + uuid, Kwargs: map[string]any{"code": 404}}
	}
	if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
		return fmt.Errorf("powering off: %w", err)
	}
	if err := hv.DetachDisk(ctx, vm.Ref, disk.Key, true); err != nil {
		return fmt.Errorf("detaching the rescue disk: %w", err)
	}
	if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
		return fmt.Errorf("powering on: %w", err)
	}
	return nil
}

// rescueAction sends rescue.<phase>: legacy compute.instance.rescue.* with
// extra (rescue_image_name) and versioned instance.rescue.* with nova's
// InstanceActionRescuePayload 1.3 (rescue_image_ref as the request gave
// it, None when it named none).
func (n *notifier) rescueAction(ctx context.Context, rc rpc.Context, inst *ovo.Object, phase string, rescueImageRef any, extra map[string]any) {
	if n == nil {
		return
	}
	if n.legacy != nil {
		n.send(ctx, n.legacy, rc, rpc.PriorityInfo, "compute.instance.rescue."+phase, n.legacyPayload(inst, extra))
	}
	if n.versioned != nil {
		p := n.instancePayload(rc, inst)
		p["fault"] = nil
		p["rescue_image_ref"] = rescueImageRef
		n.send(ctx, n.versioned, rc, rpc.PriorityInfo, "instance.rescue."+phase, versionedObject("InstanceActionRescuePayload", "1.3", p))
	}
}
