package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Volumes on servers, as nova-compute with the VMware driver does them
// (nova/compute/manager.py, nova/virt/block_device.py and
// nova/virt/vmwareapi/volumeops.py): cinder's VMDK driver hands out a
// "vmdk" connection whose data names the volume's backing, a shadow VM
// owning the volume's disk file; the file is attached to the instance's
// VM as one more disk, and extraConfig volume-<volume id> keeps the disk's
// UUID to find it again at detach.

// VolumeAPI is cinder as nova's nova.volume.cinder.API uses it
// (*cloud.Cinder has it).
type VolumeAPI interface {
	Volume(ctx context.Context, cc cloud.CinderContext, id string) (cloud.Volume, error)
	AttachmentUpdate(ctx context.Context, cc cloud.CinderContext, id string, connector map[string]any, mountpoint string) (map[string]any, error)
	AttachmentComplete(ctx context.Context, cc cloud.CinderContext, id string) error
	AttachmentDelete(ctx context.Context, cc cloud.CinderContext, id string) error
	RollDetaching(ctx context.Context, cc cloud.CinderContext, id string) error
	TerminateConnection(ctx context.Context, cc cloud.CinderContext, id string, connector map[string]any) error
	Detach(ctx context.Context, cc cloud.CinderContext, id, attachmentID string) error
	MigrateVolumeCompletion(ctx context.Context, cc cloud.CinderContext, oldID, newID string, failed bool) (string, error)
	DeleteVolume(ctx context.Context, cc cloud.CinderContext, id string) error
	AttachmentCreate(ctx context.Context, cc cloud.CinderContext, volumeID, instanceUUID string, connector map[string]any, mountpoint string) (string, map[string]any, error)
	Attachment(ctx context.Context, cc cloud.CinderContext, id string) (map[string]any, error)
	CreateVolume(ctx context.Context, cc cloud.CinderContext, spec cloud.VolumeCreate) (cloud.Volume, error)
	Snapshot(ctx context.Context, cc cloud.CinderContext, id string) (cloud.Snapshot, error)
}

// volumeHypervisor is what volumes need of vCenter (*vcenter.Session has
// it).
type volumeHypervisor interface {
	VolumeBackingDisk(ctx context.Context, backing vcenter.Ref) (vcenter.VolumeDisk, error)
	AttachVolumeDisk(ctx context.Context, vm vcenter.Ref, d vcenter.VolumeDisk) (vcenter.VolumeDisk, error)
	FindVolumeDisk(ctx context.Context, vm vcenter.Ref, uuid string) (vcenter.VolumeDisk, error)
	DetachDisk(ctx context.Context, vm vcenter.Ref, diskKey int32, destroy bool) error
	SetExtraConfig(ctx context.Context, vm vcenter.Ref, values map[string]string) error
}

// volumes serves the volume methods of compute RPC 6.x.
type volumes struct {
	*lifecycle
	// api is cinder; nil: every volume operation fails as cinder
	// unreachable.
	api VolumeAPI
	// connectorIP is the VMware driver's CONF.vmware.host_ip, the "ip" and
	// "host" of its volume connector.
	connectorIP string
	// allocate is how long builds wait for the volumes they create
	// (volumes_create.go); nil: nova's defaults.
	allocate *allocatePolicy
}

// volumeOptionPrefix is the extraConfig key prefix of an attached
// volume's disk UUID (volumeops._update_volume_details).
const volumeOptionPrefix = "volume-"

// cinderContext is the request context as nova's cinder client uses it:
// the user's token, the values endpoint_template is filled with, the
// service catalog and the global request id.
func cinderContext(rc rpc.Context) cloud.CinderContext {
	vals := make(map[string]any, len(rc))
	for k, raw := range rc {
		var v any
		if json.Unmarshal(raw, &v) == nil {
			vals[k] = v
		}
	}
	cat, _ := vals["service_catalog"].([]any)
	gid := rc.String("global_request_id")
	if gid == "" {
		gid = rc.String("request_id")
	}
	return cloud.CinderContext{Token: rc.String("auth_token"), Values: vals, ServiceCatalog: cat, GlobalRequestID: gid}
}

// cinderError is nova's translate_volume_exception /
// translate_attachment_exception: a 404 is VolumeNotFound or
// VolumeAttachmentNotFound, a 400 InvalidInput, a 403 Forbidden; other
// failures keep cinderclient's class.
func cinderError(err error, kind, id string) error {
	if err == nil {
		return nil
	}
	var re *rpc.RemoteError
	if errors.As(err, &re) {
		return err
	}
	var h *cloud.HTTPError
	if !errors.As(err, &h) {
		if errors.Is(err, cloud.ErrAuthConfig) {
			return novaError("CinderConnectionFailed", "Connection to cinder host failed: "+err.Error(), 500, map[string]any{"reason": err.Error()})
		}
		return &rpc.RemoteError{Class: "ConnectionError", Module: "keystoneauth1.exceptions.connection", Message: err.Error(), Kwargs: map[string]any{}}
	}
	switch {
	case h.Status == 404 && kind == "snapshot":
		return novaError("SnapshotNotFound", fmt.Sprintf("Snapshot %s could not be found.", id), 404, map[string]any{"snapshot_id": id})
	case h.Status == 404 && kind == "attachment":
		return novaError("VolumeAttachmentNotFound", fmt.Sprintf("Volume attachment %s could not be found.", id), 404, map[string]any{"attachment_id": id})
	case h.Status == 404:
		return novaError("VolumeNotFound", fmt.Sprintf("Volume %s could not be found.", id), 404, map[string]any{"volume_id": id})
	case h.Status == 400:
		return novaError("InvalidInput", "Invalid input received: "+h.Message, 400, map[string]any{"reason": h.Message})
	case h.Status == 403:
		return novaError("Forbidden", h.Message, 403, nil)
	}
	class := "ClientException"
	switch h.Status {
	case 409:
		class = "Conflict"
	case 413:
		class = "OverLimit"
	case 501:
		class = "HTTPNotImplemented"
	}
	return &rpc.RemoteError{Class: class, Module: "cinderclient.exceptions", Message: fmt.Sprintf("%s (HTTP %d)", h.Message, h.Status), Kwargs: map[string]any{"code": h.Status}}
}

func (v *volumes) cinderAPI() (VolumeAPI, error) {
	if v.api == nil {
		return nil, novaError("CinderConnectionFailed", "Connection to cinder host failed: no cinder endpoint configured (VCAGENT_AUTH_URL or VCAGENT_AUTH_TOKEN)", 500,
			map[string]any{"reason": "cinder is not configured"})
	}
	return v.api, nil
}

// volumeHV returns the hypervisor's volume operations.
func (v *volumes) volumeHV() (volumeHypervisor, error) {
	hv, ok := v.hv.(volumeHypervisor)
	if !ok {
		return nil, rpc.BuiltinError("NotImplementedError", "")
	}
	return hv, nil
}

// connector is volumeops.get_volume_connector: the vCenter address as ip
// and host, the host's iSCSI initiator (none: the agent attaches no iSCSI
// volumes) and, when the VM exists, its moref value as "instance", which
// cinder's VMDK driver places the volume's backing by.
func (v *volumes) connector(ctx context.Context, inst *ovo.Object) map[string]any {
	c := map[string]any{"ip": v.connectorIP, "initiator": nil, "host": v.connectorIP}
	if vm, err := v.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid")); err == nil {
		c["instance"] = vm.Ref.Value
	}
	return c
}

// ---- device names (nova/compute/utils.py, nova/block_device.py)

var (
	matchDeviceRE = regexp.MustCompile(`^(/dev/x?[a-z]?d?)([a-z]+)[0-9]*$`)
	devPrefixRE   = regexp.MustCompile(`^((x?v|s|h)d)`)
	digitsRE      = regexp.MustCompile(`\d+`)
)

func stripDev(name string) string { return strings.TrimPrefix(name, "/dev/") }

// deviceLetter is block_device.get_device_letter.
func deviceLetter(name string) string {
	return digitsRE.ReplaceAllString(devPrefixRE.ReplaceAllString(stripDev(name), ""), "")
}

// deviceLetterAt is block_device.generate_device_letter.
func deviceLetterAt(i int) string {
	s := ""
	for i >= 0 {
		s = string(rune('a'+i%26)) + s
		i = i/26 - 1
	}
	return s
}

// blockMapping is block_device.instance_block_mapping's device names: the
// root device and the names in use (values of the mapping).
func blockMapping(inst *ovo.Object, bdms []*ovo.Object) (root string, used []string) {
	rootName, _ := inst.Get("root_device_name")
	rs, _ := rootName.(string)
	if rs == "" {
		return "/dev/sda1", []string{"sda1", "sda2", "/dev/sda1", "sda3"}
	}
	used = []string{stripDev(rs), rs}
	for _, k := range []string{"default_ephemeral_device", "default_swap_device"} {
		if s := inst.StringOrEmpty(k); s != "" {
			used = append(used, s)
		}
	}
	var blanks []*ovo.Object
	for _, b := range bdms {
		if b.StringOrEmpty("destination_type") == "volume" {
			used = append(used, b.StringOrEmpty("device_name"))
			continue
		}
		if b.StringOrEmpty("source_type") == "blank" {
			blanks = append(blanks, b)
		}
	}
	for _, b := range blanks {
		used = append(used, b.StringOrEmpty("device_name"))
	}
	return rs, used
}

// nextDeviceName is compute_utils.get_next_device_name (with nova's
// default max_disk_devices_to_attach, no limit).
func nextDeviceName(used []string, root, device string) (string, error) {
	var reqLetter string
	if device != "" {
		m := matchDeviceRE.FindStringSubmatch(device)
		if m == nil {
			return "", novaError("InvalidDevicePath", fmt.Sprintf("The supplied device path (%s) is invalid.", device), 400, map[string]any{"path": device})
		}
		reqLetter = m[2]
	}
	m := matchDeviceRE.FindStringSubmatch("/dev/" + stripDev(root))
	if m == nil {
		return "", novaError("InvalidDevicePath", fmt.Sprintf("The supplied device path (%s) is invalid.", root), 400, map[string]any{"path": root})
	}
	prefix := m[1]
	letters := map[string]bool{}
	for _, u := range used {
		if u != "" {
			letters[deviceLetter(u)] = true
		}
	}
	if reqLetter == "" {
		for i := 0; ; i++ {
			if l := deviceLetterAt(i); !letters[l] {
				reqLetter = l
				break
			}
		}
	}
	if letters[reqLetter] {
		return "", novaError("DevicePathInUse", fmt.Sprintf("The supplied device path (%s) is in use.", device), 409, map[string]any{"path": device})
	}
	return prefix + reqLetter, nil
}

// ---- reserve_block_device_name

// ReserveBlockDeviceName is reserve_block_device_name (a call from
// nova-api's attach): under the instance lock, the volume must not have a
// BDM on the instance yet; a new volume BDM gets the next free device name
// (or the one asked for) and is created through conductor, and is the
// reply. The VMware driver supports neither tagged nor multiattach
// attachments.
func (v *volumes) ReserveBlockDeviceName(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Device      *string `json:"device"`
		VolumeID    string  `json:"volume_id"`
		DiskBus     *string `json:"disk_bus"`
		DeviceType  *string `json:"device_type"`
		Tag         *string `json:"tag"`
		Multiattach bool    `json:"multiattach"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	inst, err := v.instanceArg(req)
	if err != nil {
		return nil, err
	}
	rc := req.Context
	uuid := inst.StringOrEmpty("uuid")
	ctx = zerolog.Ctx(ctx).With().Str("instance_uuid", uuid).Logger().WithContext(ctx)
	res, err := func() (any, error) {
		if a.Tag != nil && *a.Tag != "" {
			return nil, novaError("VolumeTaggedAttachNotSupported", "Tagged volume attachment is not supported for this server instance.", 400, nil)
		}
		if a.Multiattach {
			return nil, novaError("MultiattachNotSupportedByVirtDriver",
				fmt.Sprintf("Volume %s has 'multiattach' set, which is not supported for this instance.", a.VolumeID), 409, map[string]any{"volume_id": a.VolumeID})
		}
		unlock := v.locks.lock(uuid)
		defer unlock()
		bdms, err := v.instanceBDMs(ctx, rc, uuid)
		if err != nil {
			return nil, err
		}
		for _, b := range bdms {
			if b.StringOrEmpty("volume_id") == a.VolumeID {
				reason := fmt.Sprintf("volume %s already attached", a.VolumeID)
				return nil, novaError("InvalidVolume", "Invalid volume: "+reason, 400, map[string]any{"reason": reason})
			}
		}
		bdm := ovo.New("BlockDeviceMapping", v.cond.version("BlockDeviceMapping"))
		bdm.SetString("source_type", "volume")
		bdm.SetString("destination_type", "volume")
		bdm.SetString("instance_uuid", uuid)
		bdm.SetNull("boot_index")
		bdm.SetString("volume_id", a.VolumeID)
		setOptString(bdm, "device_name", a.Device)
		bdm.SetNull("guest_format")
		setOptString(bdm, "disk_bus", a.DiskBus)
		setOptString(bdm, "device_type", a.DeviceType)
		setOptString(bdm, "tag", a.Tag)
		root, used := blockMapping(inst, bdms)
		device := ""
		if a.Device != nil {
			device = *a.Device
		}
		name, err := nextDeviceName(used, root, device)
		if err != nil {
			return nil, err
		}
		bdm.SetString("device_name", name)
		if _, err := v.cond.ObjectAction(ctx, rc, bdm, "create", nil, nil); err != nil {
			return nil, err
		}
		zerolog.Ctx(ctx).Info().Str("volume_id", a.VolumeID).Str("device", name).Msg("reserved block device name")
		return ovo.NovaCodec().EncodeEntity(bdm)
	}()
	if err != nil {
		if !isRemote(err, "InstanceNotFound") {
			v.recordCodedFault(ctx, rc, inst, err)
		}
		if t, ok := inst.Get("task_state"); ok && t != nil {
			v.revertTask(ctx, rc, inst)
		}
		v.notify.exception(ctx, rc, "reserve_block_device_name", v.exceptionArgs(req, inst), err)
		return nil, err
	}
	return res, nil
}

func setOptString(o *ovo.Object, name string, s *string) {
	if s == nil {
		o.SetNull(name)
		return
	}
	o.SetString(name, *s)
}

// instanceBDMs is BlockDeviceMappingList.get_by_instance_uuid.
func (v *volumes) instanceBDMs(ctx context.Context, rc rpc.Context, uuid string) ([]*ovo.Object, error) {
	res, err := v.cond.ClassAction(ctx, rc, "BlockDeviceMappingList", "get_by_instance_uuid", []any{uuid}, nil)
	if err != nil {
		return nil, err
	}
	list, _ := res.(*ovo.Object)
	if list == nil {
		return nil, nil
	}
	return list.Items()
}

// volumeBDM is BlockDeviceMapping.get_by_volume_and_instance.
func (v *volumes) volumeBDM(ctx context.Context, rc rpc.Context, volumeID, uuid string) (*ovo.Object, error) {
	res, err := v.cond.ClassAction(ctx, rc, "BlockDeviceMapping", "get_by_volume_and_instance", []any{volumeID, uuid}, nil)
	if err != nil {
		var re *rpc.RemoteError
		if errors.As(err, &re) {
			return nil, re // the conductor's VolumeBDMNotFound, as nova raises it
		}
		return nil, err
	}
	bdm, _ := res.(*ovo.Object)
	if bdm == nil {
		return nil, novaError("VolumeBDMNotFound", fmt.Sprintf("No volume Block Device Mapping with id %s.", volumeID), 404, map[string]any{"volume_id": volumeID})
	}
	return bdm, nil
}

// ---- notifications

// volumeNotification is notify_about_volume_attach_detach (versioned
// instance.volume_attach.* / volume_detach.*, InstanceActionVolumePayload).
func (v *volumes) volumeNotification(ctx context.Context, rc rpc.Context, inst *ovo.Object, action, phase, volumeID string, cause error) {
	n := v.notify
	if n == nil || n.versioned == nil {
		return
	}
	p := n.instancePayload(rc, inst)
	p["volume_id"] = volumeID
	p["fault"] = nil
	priority := rpc.PriorityInfo
	if cause != nil {
		p["fault"] = exceptionPayload(cause, action)
		priority = rpc.PriorityError
	}
	n.send(ctx, n.versioned, rc, priority, "instance."+action+"."+phase, versionedObject("InstanceActionVolumePayload", "1.6", p))
}

// swapNotification is notify_about_volume_swap.
func (v *volumes) swapNotification(ctx context.Context, rc rpc.Context, inst *ovo.Object, phase, oldID, newID string, cause error) {
	n := v.notify
	if n == nil || n.versioned == nil {
		return
	}
	p := n.instancePayload(rc, inst)
	p["old_volume_id"], p["new_volume_id"], p["fault"] = oldID, newID, nil
	priority := rpc.PriorityInfo
	if cause != nil {
		p["fault"] = exceptionPayload(cause, "volume_swap")
		priority = rpc.PriorityError
	}
	n.send(ctx, n.versioned, rc, priority, "instance.volume_swap."+phase, versionedObject("InstanceActionVolumeSwapPayload", "1.8", p))
}

// legacyVolumeNotification is _notify_about_instance_usage(context,
// instance, "volume.attach"|"volume.detach", {"volume_id": id}).
func (v *volumes) legacyVolumeNotification(ctx context.Context, rc rpc.Context, inst *ovo.Object, event, volumeID string) {
	n := v.notify
	if n == nil || n.legacy == nil {
		return
	}
	n.send(ctx, n.legacy, rc, rpc.PriorityInfo, "compute.instance."+event, n.legacyPayload(inst, map[string]any{"volume_id": volumeID}))
}

// ---- attach_volume

// AttachVolume is attach_volume (a cast from nova-api after
// reserve_block_device_name and cinder's attachment_create): the
// attachment updated with the VMware connector (cinder's VMDK driver
// creates or moves the volume's backing and answers its moref), the
// backing's disk attached to the VM with extraConfig volume-<id> = the
// disk's UUID, the connection info saved in the BDM, the attachment
// completed (the volume is in-use), between the volume_attach
// notifications. On failure the attachment is deleted (the volume is
// available again) and the BDM destroyed, as nova does.
func (v *volumes) AttachVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		BDM any `json:"bdm"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	bdm, err := ovo.NovaCodec().Decode(a.BDM)
	if err != nil {
		return nil, rpc.BuiltinError("ValueError", "bdm argument: "+err.Error())
	}
	return v.operation(ctx, req, opSpec{event: "compute_attach_volume", method: "attach_volume"},
		func(ctx context.Context, inst *ovo.Object) error {
			err := v.attachVolume(ctx, req.Context, inst, bdm)
			if err != nil {
				if _, derr := v.cond.ObjectAction(ctx, req.Context, bdm, "destroy", nil, nil); derr != nil {
					zerolog.Ctx(ctx).Warn().Err(derr).Msg("destroying the BDM of the failed attachment failed")
				}
			}
			return err
		})
}

// attachVolume is _attach_volume.
func (v *volumes) attachVolume(ctx context.Context, rc rpc.Context, inst *ovo.Object, bdm *ovo.Object) error {
	volumeID, mount := bdm.StringOrEmpty("volume_id"), bdm.StringOrEmpty("device_name")
	attachmentID := bdm.StringOrEmpty("attachment_id")
	log := zerolog.Ctx(ctx)
	log.Info().Str("volume_id", volumeID).Str("mountpoint", mount).Msg("Attaching volume")
	v.volumeNotification(ctx, rc, inst, "volume_attach", "start", volumeID, nil)
	err := v.bdmAttach(ctx, rc, inst, bdm)
	if err != nil {
		log.Error().Err(err).Str("volume_id", volumeID).Str("mountpoint", mount).Msg("Failed to attach volume")
		if api, aerr := v.cinderAPI(); aerr == nil && attachmentID != "" {
			if derr := cinderError(api.AttachmentDelete(ctx, cinderContext(rc), attachmentID), "attachment", attachmentID); derr != nil {
				if isRemote(derr, "VolumeAttachmentNotFound") {
					log.Debug().Err(derr).Msg("Ignoring VolumeAttachmentNotFound")
				} else {
					log.Warn().Err(derr).Msg("deleting the attachment failed")
				}
			}
		}
		v.volumeNotification(ctx, rc, inst, "volume_attach", "error", volumeID, err)
		return err
	}
	v.legacyVolumeNotification(ctx, rc, inst, "volume.attach", volumeID)
	v.volumeNotification(ctx, rc, inst, "volume_attach", "end", volumeID, nil)
	return nil
}

// bdmAttach is DriverVolumeBlockDevice.attach with do_driver_attach (the
// new-style flow, _volume_attach).
func (v *volumes) bdmAttach(ctx context.Context, rc rpc.Context, inst *ovo.Object, bdm *ovo.Object) error {
	return v.bdmAttachDriver(ctx, rc, inst, bdm, true)
}

// bdmAttachDriver is DriverVolumeBlockDevice.attach; without
// doDriverAttach (the build's _prep_block_device) only cinder is told,
// spawn attaches the disks.
func (v *volumes) bdmAttachDriver(ctx context.Context, rc rpc.Context, inst *ovo.Object, bdm *ovo.Object, doDriverAttach bool) error {
	api, err := v.cinderAPI()
	if err != nil {
		return err
	}
	cc := cinderContext(rc)
	volumeID, mount := bdm.StringOrEmpty("volume_id"), bdm.StringOrEmpty("device_name")
	attachmentID := bdm.StringOrEmpty("attachment_id")
	vol, err := api.Volume(ctx, cc, volumeID)
	if err != nil {
		return cinderError(err, "volume", volumeID)
	}
	if attachmentID == "" {
		// The pre-3.44 flow (initialize_connection, os-attach): nova-api of
		// Zed always creates an attachment before attach_volume.
		return novaError("InvalidVolume", "Invalid volume: the BDM has no attachment id (cinder's attachment API 3.44 is required)", 400,
			map[string]any{"reason": "the BDM has no attachment id"})
	}
	if bdm.IsNull("volume_size") || !bdm.Has("volume_size") {
		bdm.SetInt("volume_size", vol.Size)
	}
	if vol.Multiattach {
		return novaError("MultiattachNotSupportedByVirtDriver",
			fmt.Sprintf("Volume %s has 'multiattach' set, which is not supported for this instance.", volumeID), 409, map[string]any{"volume_id": volumeID})
	}
	connector := v.connector(ctx, inst)
	ci, err := api.AttachmentUpdate(ctx, cc, attachmentID, connector, mount)
	if err != nil {
		return cinderError(err, "attachment", attachmentID)
	}
	if _, ok := ci["serial"]; !ok {
		ci["serial"] = volumeID
	}
	if doDriverAttach {
		if err := v.driverAttach(ctx, inst, ci, ""); err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Str("volume_id", volumeID).Str("mountpoint", mount).Msg("Driver failed to attach volume")
			if derr := cinderError(api.AttachmentDelete(ctx, cc, attachmentID), "attachment", attachmentID); derr != nil {
				zerolog.Ctx(ctx).Warn().Err(derr).Msg("deleting the attachment failed")
			}
			return err
		}
	}
	raw, err := json.Marshal(ci)
	if err != nil {
		return err
	}
	bdm.SetString("connection_info", string(raw))
	if _, err := v.cond.ObjectAction(ctx, rc, bdm, "save", nil, nil); err != nil {
		return err
	}
	if err := api.AttachmentComplete(ctx, cc, attachmentID); err != nil {
		cerr := cinderError(err, "attachment", attachmentID)
		if doDriverAttach {
			if derr := v.driverDetach(ctx, inst, ci); derr != nil {
				zerolog.Ctx(ctx).Warn().Err(derr).Str("volume_id", volumeID).Msg("Driver failed to detach volume")
			}
		}
		if derr := cinderError(api.AttachmentDelete(ctx, cc, attachmentID), "attachment", attachmentID); derr != nil {
			zerolog.Ctx(ctx).Warn().Err(derr).Msg("deleting the attachment failed")
		}
		return cerr
	}
	return nil
}

// connectionData returns the connection info's driver type and data.
func connectionData(ci map[string]any) (string, map[string]any) {
	t, _ := ci["driver_volume_type"].(string)
	data, _ := ci["data"].(map[string]any)
	if data == nil {
		data = map[string]any{}
	}
	return t, data
}

func volumeDriverNotFound(t string) error {
	return novaError("VolumeDriverNotFound", fmt.Sprintf("Could not find a handler for %s volume.", t), 404, map[string]any{"driver_type": t})
}

// backingDisk reads the disk of the connection's backing, as the
// VolumeMoRefProxy does: by the moref in data["volume"], and when that is
// stale, by the backing's instance UUID (the volume id, else its name).
func (v *volumes) backingDisk(ctx context.Context, hv volumeHypervisor, data map[string]any) (vcenter.VolumeDisk, vcenter.Ref, error) {
	ref := vcenter.Ref{Type: "VirtualMachine"}
	ref.Value, _ = data["volume"].(string)
	if ref.Value != "" {
		d, err := hv.VolumeBackingDisk(ctx, ref)
		if err == nil || !errors.Is(err, vcenter.ErrNotFound) {
			return d, ref, err
		}
	}
	id, _ := data["volume_id"].(string)
	if id == "" {
		id, _ = data["name"].(string)
	}
	vm, err := v.hv.FindVMByInstanceUUID(ctx, id)
	if err != nil {
		return vcenter.VolumeDisk{}, ref, fmt.Errorf("the volume's backing %q: %w", ref.Value, err)
	}
	d, err := hv.VolumeBackingDisk(ctx, vm.Ref)
	return d, vm.Ref, err
}

// driverAttach is the VMware driver's attach_volume
// (volumeops._attach_volume_vmdk): only "vmdk" volumes (iSCSI and FCD
// connections are the driver's other kinds; cinder's VMDK driver hands
// out none). adapterType, if set, overrides the backing disk's (spawn's
// disk_bus).
func (v *volumes) driverAttach(ctx context.Context, inst *ovo.Object, ci map[string]any, adapterType string) error {
	t, data := connectionData(ci)
	zerolog.Ctx(ctx).Debug().Str("driver_volume_type", t).Msg("Volume attach")
	if t != "vmdk" {
		return volumeDriverNotFound(t)
	}
	hv, err := v.volumeHV()
	if err != nil {
		return err
	}
	vm, err := v.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	disk, _, err := v.backingDisk(ctx, hv, data)
	if err != nil {
		return vimFault(err)
	}
	if adapterType != "" {
		disk.AdapterType = adapterType
	}
	if disk.AdapterType == vcenter.BackingAdapterIDE && vm.PowerState != vcenter.PowerStateOff {
		return novaError("Invalid", "ide does not support disk hotplug.", 400, nil)
	}
	attached, err := hv.AttachVolumeDisk(ctx, vm.Ref, disk)
	if err != nil {
		return vimFault(err)
	}
	uuid := attached.UUID
	if uuid == "" {
		uuid = disk.UUID
	}
	volumeID, _ := data["volume_id"].(string)
	if err := hv.SetExtraConfig(ctx, vm.Ref, map[string]string{volumeOptionPrefix + volumeID: uuid}); err != nil {
		return vimFault(err)
	}
	zerolog.Ctx(ctx).Debug().Str("volume_id", volumeID).Str("path", attached.Path).Str("disk_uuid", uuid).Msg("Attached VMDK")
	return nil
}

// driverDetach is the VMware driver's detach_volume
// (volumeops._detach_volume_vmdk): the disk whose UUID extraConfig
// volume-<id> names is removed from the VM, its file kept, and the key
// cleared. A disk that is not there is DiskNotFound.
func (v *volumes) driverDetach(ctx context.Context, inst *ovo.Object, ci map[string]any) error {
	t, data := connectionData(ci)
	zerolog.Ctx(ctx).Debug().Str("driver_volume_type", t).Msg("Volume detach")
	if t != "vmdk" {
		return volumeDriverNotFound(t)
	}
	hv, err := v.volumeHV()
	if err != nil {
		return err
	}
	vm, err := v.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	volumeID, _ := data["volume_id"].(string)
	disk, err := hv.FindVolumeDisk(ctx, vm.Ref, vm.ExtraConfig[volumeOptionPrefix+volumeID])
	if errors.Is(err, vcenter.ErrNotFound) {
		return novaError("DiskNotFound", "Unable to find volume", 404, nil)
	}
	if err != nil {
		return vimFault(err)
	}
	if disk.AdapterType == vcenter.BackingAdapterIDE && vm.PowerState != vcenter.PowerStateOff {
		return novaError("Invalid", "ide does not support disk hotplug.", 400, nil)
	}
	if err := v.consolidate(ctx, hv, vm, data, disk); err != nil {
		return err
	}
	if err := hv.DetachDisk(ctx, vm.Ref, disk.Key, false); err != nil {
		return vimFault(err)
	}
	if err := hv.SetExtraConfig(ctx, vm.Ref, map[string]string{volumeOptionPrefix + volumeID: ""}); err != nil {
		return vimFault(err)
	}
	zerolog.Ctx(ctx).Debug().Str("volume_id", volumeID).Str("path", disk.Path).Msg("Detached VMDK")
	return nil
}

// consolidate is volumeops._consolidate_vmdk_volume: when Storage DRS
// moved the attached disk away from the backing's own copy, the backing is
// relocated to the VM's host and the disk's datastore, its stale disk
// removed (with its file) and the current file attached to it instead, so
// the backing owns the volume's data again after the detach. nova retries
// the relocation without the stale disk when vCenter cannot find its file;
// so does the agent, for any relocation failure.
func (v *volumes) consolidate(ctx context.Context, hv volumeHypervisor, vm vcenter.VM, data map[string]any, disk vcenter.VolumeDisk) error {
	orig, ref, err := v.backingDisk(ctx, hv, data)
	if err != nil {
		return vimFault(err)
	}
	log := zerolog.Ctx(ctx)
	if orig.Path == disk.Path {
		log.Debug().Str("path", disk.Path).Msg("The volume has not been displaced from its original location. No consolidation needed.")
		return nil
	}
	log.Info().Str("path", disk.Path).Msg("The volume's backing has been relocated. Need to consolidate backing disk file.")
	rel, ok := v.hv.(backingRelocator)
	if !ok {
		return rpc.BuiltinError("NotImplementedError", "")
	}
	spec := vcenter.RelocateSpec{ResourcePool: vm.ResourcePool, Datastore: disk.Datastore, Host: vm.Host}
	detached := false
	if _, err := rel.RelocateVM(ctx, ref, spec); err != nil {
		log.Warn().Err(err).Str("path", orig.Path).Msg("Relocating the volume's backing failed; removing its disk device and retrying")
		if err := hv.DetachDisk(ctx, ref, orig.Key, false); err != nil {
			return vimFault(err)
		}
		detached = true
		if _, err := rel.RelocateVM(ctx, ref, spec); err != nil {
			return vimFault(err)
		}
	}
	if !detached {
		if err := hv.DetachDisk(ctx, ref, orig.Key, true); err != nil && !errors.Is(err, vcenter.ErrNotFound) {
			return vimFault(err)
		}
	}
	if _, err := hv.AttachVolumeDisk(ctx, ref, vcenter.VolumeDisk{Path: disk.Path, AdapterType: disk.AdapterType, DiskType: disk.DiskType}); err != nil {
		return vimFault(err)
	}
	return nil
}

// ---- detach_volume

// DetachVolume is detach_volume (a cast from nova-api, cinder's volume
// "detaching"): the VMware driver detaches the disk (its file stays with
// the backing), the attachment is deleted (the volume is available again)
// and the BDM destroyed, between the volume_detach notifications.
func (v *volumes) DetachVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		VolumeID     string  `json:"volume_id"`
		AttachmentID *string `json:"attachment_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return v.operation(ctx, req, opSpec{event: "compute_detach_volume", method: "detach_volume"},
		func(ctx context.Context, inst *ovo.Object) error {
			bdm, err := v.volumeBDM(ctx, req.Context, a.VolumeID, inst.StringOrEmpty("uuid"))
			if err != nil {
				return err
			}
			attachmentID := ""
			if a.AttachmentID != nil {
				attachmentID = *a.AttachmentID
			}
			return v.detachVolume(ctx, req.Context, bdm, inst, attachmentID, true)
		})
}

// detachVolume is _detach_volume.
func (v *volumes) detachVolume(ctx context.Context, rc rpc.Context, bdm, inst *ovo.Object, attachmentID string, destroyBDM bool) error {
	volumeID := bdm.StringOrEmpty("volume_id")
	v.volumeNotification(ctx, rc, inst, "volume_detach", "start", volumeID, nil)
	zerolog.Ctx(ctx).Info().Str("volume_id", volumeID).Msg("Detaching volume")
	if err := v.bdmDetach(ctx, rc, bdm, inst, attachmentID, destroyBDM); err != nil {
		return err
	}
	v.legacyVolumeNotification(ctx, rc, inst, "volume.detach", volumeID)
	v.volumeNotification(ctx, rc, inst, "volume_detach", "end", volumeID, nil)
	if destroyBDM {
		if _, err := v.cond.ObjectAction(ctx, rc, bdm, "destroy", nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// bdmConnectionInfo is the BDM's connection_info ({} when unset).
func bdmConnectionInfo(bdm *ovo.Object) map[string]any {
	ci := map[string]any{}
	if s := bdm.StringOrEmpty("connection_info"); s != "" {
		_ = json.Unmarshal([]byte(s), &ci)
	}
	return ci
}

// bdmDetach is DriverVolumeBlockDevice.detach (_do_detach).
func (v *volumes) bdmDetach(ctx context.Context, rc rpc.Context, bdm, inst *ovo.Object, attachmentID string, destroyBDM bool) error {
	api, err := v.cinderAPI()
	if err != nil {
		return err
	}
	cc := cinderContext(rc)
	volumeID := bdm.StringOrEmpty("volume_id")
	if _, err := api.Volume(ctx, cc, volumeID); err != nil {
		return cinderError(err, "volume", volumeID)
	}
	switch host := inst.StringOrEmpty("host"); {
	case host == v.host:
		if err := v.bdmDriverDetach(ctx, rc, bdm, inst); err != nil {
			return err
		}
	case !destroyBDM:
		zerolog.Ctx(ctx).Debug().Msg("Skipping driver_detach during remote rebuild.")
	default:
		zerolog.Ctx(ctx).Error().Str("volume_id", volumeID).Str("inst_host", host).
			Msg("Unable to call for a driver detach of the volume due to the instance being registered to the remote host")
	}
	bdmAttachment := bdm.StringOrEmpty("attachment_id")
	if bdmAttachment == "" {
		connector := v.connector(ctx, inst)
		if err := api.TerminateConnection(ctx, cc, volumeID, connector); err != nil {
			return cinderError(err, "volume", volumeID)
		}
		return cinderError(api.Detach(ctx, cc, volumeID, attachmentID), "volume", volumeID)
	}
	err = cinderError(api.AttachmentDelete(ctx, cc, bdmAttachment), "attachment", bdmAttachment)
	if isRemote(err, "VolumeAttachmentNotFound") {
		zerolog.Ctx(ctx).Info().Str("volume_id", volumeID).Str("attachment_id", bdmAttachment).
			Msg("Ignoring a volume attachment deletion failure as the volume or the volume attachment disappeared during the request.")
		return nil
	}
	return err
}

// bdmDriverDetach is DriverVolumeBlockDevice.driver_detach: the driver's
// detach; a missing disk is only a warning, any other failure rolls the
// volume's "detaching" back.
func (v *volumes) bdmDriverDetach(ctx context.Context, rc rpc.Context, bdm, inst *ovo.Object) error {
	volumeID, mp := bdm.StringOrEmpty("volume_id"), bdm.StringOrEmpty("device_name")
	log := zerolog.Ctx(ctx)
	log.Info().Str("volume_id", volumeID).Str("mountpoint", mp).Msg("Attempting to driver detach volume")
	if _, err := v.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid")); errors.Is(err, vcenter.ErrNotFound) {
		log.Warn().Msg("Detaching volume from unknown instance")
	}
	err := v.driverDetach(ctx, inst, bdmConnectionInfo(bdm))
	switch {
	case err == nil:
		return nil
	case isRemote(err, "DiskNotFound"):
		log.Warn().Err(err).Str("volume_id", volumeID).Str("mountpoint", mp).Msg("Ignoring DiskNotFound exception while detaching volume")
		return nil
	}
	log.Error().Err(err).Str("volume_id", volumeID).Str("mountpoint", mp).Msg("Failed to detach volume")
	if api, aerr := v.cinderAPI(); aerr == nil {
		if rerr := api.RollDetaching(ctx, cinderContext(rc), volumeID); rerr != nil {
			log.Warn().Err(rerr).Msg("rolling back the volume's detaching failed")
		}
	}
	return err
}

// ---- swap_volume

// SwapVolume is swap_volume (nova-api's volume update, or cinder's volume
// migration): the new volume's attachment gets the connector, then the
// VMware driver, which has no swap_volume, raises NotImplementedError; as
// in nova the old volume's detaching is rolled back, the new attachment
// deleted (or the new volume unreserved) and, for a migration cinder runs,
// the migration completed with an error.
func (v *volumes) SwapVolume(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		OldVolumeID     string  `json:"old_volume_id"`
		NewVolumeID     string  `json:"new_volume_id"`
		NewAttachmentID *string `json:"new_attachment_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return v.operation(ctx, req, opSpec{event: "compute_swap_volume", method: "swap_volume"},
		func(ctx context.Context, inst *ovo.Object) error {
			newAttachment := ""
			if a.NewAttachmentID != nil {
				newAttachment = *a.NewAttachmentID
			}
			return v.swapVolume(ctx, req.Context, inst, a.OldVolumeID, a.NewVolumeID, newAttachment)
		})
}

// swapVolume is _do_swap_volume and _swap_volume with the driver's
// NotImplementedError.
func (v *volumes) swapVolume(ctx context.Context, rc rpc.Context, inst *ovo.Object, oldID, newID, newAttachment string) error {
	v.swapNotification(ctx, rc, inst, "start", oldID, newID, nil)
	bdm, err := v.volumeBDM(ctx, rc, oldID, inst.StringOrEmpty("uuid"))
	if err != nil {
		return err
	}
	api, err := v.cinderAPI()
	if err != nil {
		return err
	}
	cc := cinderContext(rc)
	connector := v.connector(ctx, inst)
	oldVol, err := api.Volume(ctx, cc, oldID)
	if err != nil {
		return cinderError(err, "volume", oldID)
	}
	migration := oldVol.MigrationStatus != nil && *oldVol.MigrationStatus == "migrating"
	newVol, err := api.Volume(ctx, cc, newID)
	if err != nil {
		return cinderError(err, "volume", newID)
	}
	log := zerolog.Ctx(ctx)
	log.Info().Str("old_volume", oldID).Str("new_volume", newID).Msg("Swapping volume")
	haveNewInfo := false
	swapErr := func() error {
		if newAttachment == "" {
			return novaError("InvalidVolume", "Invalid volume: no new attachment id (cinder's attachment API 3.44 is required)", 400,
				map[string]any{"reason": "no new attachment id"})
		}
		if newVol.Multiattach {
			return novaError("MultiattachNotSupportedByVirtDriver",
				fmt.Sprintf("Volume %s has 'multiattach' set, which is not supported for this instance.", newID), 409, map[string]any{"volume_id": newID})
		}
		if _, err := api.AttachmentUpdate(ctx, cc, newAttachment, connector, bdm.StringOrEmpty("device_name")); err != nil {
			return cinderError(err, "attachment", newAttachment)
		}
		haveNewInfo = true
		// The VMware driver has no swap_volume: ComputeDriver's raises.
		return rpc.BuiltinError("NotImplementedError", "")
	}()
	// swapErr is never nil: the driver cannot swap.
	v.swapNotification(ctx, rc, inst, "error", oldID, newID, swapErr)
	if haveNewInfo {
		log.Error().Err(swapErr).Str("old_volume_id", oldID).Str("new_volume_id", newID).Msg("Failed to swap volume")
	} else {
		log.Error().Err(swapErr).Str("volume_id", newID).Str("mountpoint", bdm.StringOrEmpty("device_name")).Msg("Failed to connect to volume")
	}
	if err := api.RollDetaching(ctx, cc, oldID); err != nil {
		return cinderError(err, "volume", oldID)
	}
	if newAttachment != "" {
		if err := api.AttachmentDelete(ctx, cc, newAttachment); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return cinderError(err, "attachment", newAttachment)
		}
	}
	if haveNewInfo && bdm.StringOrEmpty("attachment_id") == "" {
		if err := api.TerminateConnection(ctx, cc, newID, connector); err != nil {
			log.Warn().Err(err).Msg("terminating the new volume's connection failed")
		}
	}
	if bdm.StringOrEmpty("attachment_id") == "" || migration {
		if _, err := api.MigrateVolumeCompletion(ctx, cc, oldID, newID, true); err != nil {
			log.Warn().Err(err).Msg("os-migrate_volume_completion failed")
		}
	}
	return swapErr
}

// ---- remove_volume_connection

// RemoveVolumeConnection is remove_volume_connection (a call, from the
// rollback of a live migration): the driver detach of the volume on this
// host, and for a BDM without an attachment id the connection terminated;
// anything not found is no error.
func (v *volumes) RemoveVolumeConnection(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		VolumeID string `json:"volume_id"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	inst, err := v.instanceArg(req)
	if err != nil {
		return nil, err
	}
	rc := req.Context
	ctx = zerolog.Ctx(ctx).With().Str("instance_uuid", inst.StringOrEmpty("uuid")).Logger().WithContext(ctx)
	err = func() error {
		bdm, err := v.volumeBDM(ctx, rc, a.VolumeID, inst.StringOrEmpty("uuid"))
		if err != nil {
			return err
		}
		if err := v.bdmDriverDetach(ctx, rc, bdm, inst); err != nil {
			return err
		}
		if bdm.StringOrEmpty("attachment_id") == "" {
			api, err := v.cinderAPI()
			if err != nil {
				return err
			}
			return cinderError(api.TerminateConnection(ctx, cinderContext(rc), a.VolumeID, v.connector(ctx, inst)), "volume", a.VolumeID)
		}
		return nil
	}()
	var re *rpc.RemoteError
	if err != nil && errors.As(err, &re) && re.Module == "nova.exception" && strings.HasSuffix(re.Class, "NotFound") {
		return nil, nil // nova's "except exception.NotFound: pass"
	}
	if err != nil {
		v.notify.exception(ctx, rc, "remove_volume_connection", v.exceptionArgs(req, inst), err)
		return nil, err
	}
	return nil, nil
}

// ---- terminate_instance

// TerminateInstance is terminate_instance with the volume steps of nova's
// _shutdown_instance and _delete_instance around the lifecycle's delete:
// the VMware driver's destroy first powers the VM off and detaches the
// volumes' disks (their files belong to the backings), then the VM goes;
// after it, each volume's attachment is deleted (the volume is available
// again) and the volumes marked delete_on_termination are deleted. Failures
// of these steps are logged, as nova logs them.
func (v *volumes) TerminateInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := v.instanceArg(req)
	if err != nil {
		return nil, err
	}
	rc := req.Context
	uuid := inst.StringOrEmpty("uuid")
	ctx = zerolog.Ctx(ctx).With().Str("instance_uuid", uuid).Logger().WithContext(ctx)
	// The BDMs are read even without cinder: the volumes' disks must leave
	// the VM before it is destroyed with every file attached to it.
	vols, err := v.volumeBDMs(ctx, rc, inst)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("reading the instance's block device mappings failed")
	}
	if len(vols) > 0 && inst.StringOrEmpty("node") != "" {
		v.detachForDestroy(ctx, inst, vols)
	}
	res, err := v.lifecycle.TerminateInstance(ctx, req)
	if err != nil || len(vols) == 0 || v.api == nil {
		return res, err
	}
	v.releaseVolumes(ctx, rc, inst, vols)
	return res, nil
}

// releaseVolumes is the end of the volumes' part of a delete: each
// attachment deleted (the pre-3.44 flow: the connection terminated and the
// volume detached), then the delete_on_termination volumes deleted.
func (v *volumes) releaseVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object, vols []*ovo.Object) {
	cc := cinderContext(rc)
	log := zerolog.Ctx(ctx)
	for _, b := range vols {
		volumeID := b.StringOrEmpty("volume_id")
		var derr error
		if att := b.StringOrEmpty("attachment_id"); att != "" {
			derr = cinderError(v.api.AttachmentDelete(ctx, cc, att), "attachment", att)
		} else {
			derr = cinderError(v.api.TerminateConnection(ctx, cc, volumeID, v.connector(ctx, inst)), "volume", volumeID)
			if derr == nil {
				derr = cinderError(v.api.Detach(ctx, cc, volumeID, ""), "volume", volumeID)
			}
		}
		var re *rpc.RemoteError
		switch {
		case derr == nil:
		case errors.As(derr, &re) && (re.Class == "VolumeAttachmentNotFound" || re.Class == "VolumeNotFound"):
			log.Debug().Err(derr).Str("volume_id", volumeID).Msg("Ignoring a volume that is gone")
		default:
			log.Warn().Err(derr).Str("volume_id", volumeID).Msg("Ignoring unknown exception for volume")
		}
	}
	for _, b := range vols {
		if del, _ := b.Bool("delete_on_termination"); del {
			volumeID := b.StringOrEmpty("volume_id")
			if err := v.api.DeleteVolume(ctx, cc, volumeID); err != nil {
				log.Warn().Err(err).Str("volume_id", volumeID).Msg("Failed to delete volume during the instance's deletion")
			}
		}
	}
}

// detachForDestroy is the volume part of the VMware driver's destroy: the
// VM powered off (IDE disks cannot be unplugged from a running VM) and
// every volume's disk detached; a missing disk or VM is only logged.
func (v *volumes) detachForDestroy(ctx context.Context, inst *ovo.Object, vols []*ovo.Object) {
	unlock := v.locks.lock(inst.StringOrEmpty("uuid"))
	defer unlock()
	v.detachVolumeDisks(ctx, inst, vols)
}

// ---- volumes at build (boot from volume)

// buildVolume is a volume BDM of a build, attached in cinder.
type buildVolume struct {
	bdm *ovo.Object
	ci  map[string]any
}

// buildBDMs decodes build_and_run_instance's block_device_mapping (a
// BlockDeviceMappingList; null or absent: none).
func buildBDMs(raw json.RawMessage) ([]*ovo.Object, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var prim any
	if err := json.Unmarshal(raw, &prim); err != nil {
		return nil, err
	}
	list, err := ovo.NovaCodec().Decode(prim)
	if err != nil {
		return nil, err
	}
	return list.Items()
}

// validDiskBus is vmops._is_bdm_valid's list.
func validDiskBus(bus string) bool {
	switch bus {
	case "", vcenter.BackingAdapterLsiLogic, vcenter.BackingAdapterBusLogic, vcenter.BackingAdapterIDE,
		vcenter.BackingAdapterLsiLogicSAS, vcenter.BackingAdapterParaVirtual:
		return true
	}
	return false
}

// prepBuildVolumes is the volume part of _build_resources: the root
// device name and the missing device names given
// (_default_block_device_names), then _prep_block_device: the volumes
// nova-compute must create first (sources image, blank, snapshot) created
// (volumes_create.go), and each volume BDM attached in cinder
// (attachment_update with the connector, which names no VM yet; the BDM
// saved with the connection info; attachment_complete). Failures abort
// the build (BuildAbortException, as nova's InvalidBDM): the attachments
// are deleted and the delete_on_termination volumes with them
// (_cleanup_volumes).
func (v *volumes) prepBuildVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object, raw json.RawMessage) ([]buildVolume, error) {
	if v == nil {
		return nil, nil
	}
	uuid := inst.StringOrEmpty("uuid")
	bdms, err := buildBDMs(raw)
	if err != nil {
		return nil, buildAbort(uuid, "block_device_mapping: "+err.Error())
	}
	var vols []*ovo.Object
	for _, b := range bdms {
		if b.StringOrEmpty("destination_type") != "volume" {
			continue
		}
		if src := b.StringOrEmpty("source_type"); src != "volume" && !createdSources[src] {
			return nil, buildAbort(uuid, fmt.Sprintf("Block Device Mapping is Invalid: volumes from source %q are not supported", src))
		}
		if bus := b.StringOrEmpty("disk_bus"); !validDiskBus(bus) {
			return nil, novaError("UnsupportedHardware", fmt.Sprintf("Requested hardware '%s' is not supported by the 'vmware' virt driver", bus), 400,
				map[string]any{"model": bus, "virt": "vmware"})
		}
		vols = append(vols, b)
	}
	if len(vols) == 0 {
		return nil, nil
	}
	if v.api == nil {
		return nil, buildAbort(uuid, "cinder is not configured: volumes cannot be attached")
	}
	// _default_block_device_names: the root device is the boot_index 0
	// BDM's name, else the instance's, else /dev/sda.
	root := inst.StringOrEmpty("root_device_name")
	var rootBDM *ovo.Object
	for _, b := range bdms {
		if i, err := b.Int("boot_index"); err == nil && i == 0 {
			rootBDM = b
		}
	}
	if rootBDM != nil && rootBDM.StringOrEmpty("device_name") != "" {
		root = rootBDM.StringOrEmpty("device_name")
	}
	if root == "" {
		root = "/dev/sda"
	}
	if inst.StringOrEmpty("root_device_name") != root {
		inst.SetString("root_device_name", root) // saved with the next instance save
	}
	if rootBDM != nil && rootBDM.StringOrEmpty("device_name") == "" {
		rootBDM.SetString("device_name", root)
		if _, err := v.cond.ObjectAction(ctx, rc, rootBDM, "save", nil, nil); err != nil {
			return nil, err
		}
	}
	var used []string
	used = append(used, root)
	for _, b := range bdms {
		if n := b.StringOrEmpty("device_name"); n != "" {
			used = append(used, n)
		}
	}
	for _, b := range vols {
		if b.StringOrEmpty("device_name") != "" {
			continue
		}
		name, err := nextDeviceName(used, root, "")
		if err != nil {
			return nil, buildAbort(uuid, err.Error())
		}
		used = append(used, name)
		b.SetString("device_name", name)
		if _, err := v.cond.ObjectAction(ctx, rc, b, "save", nil, nil); err != nil {
			return nil, err
		}
	}
	out, err := v.prepVolumes(ctx, rc, inst, vols)
	if err != nil {
		v.cleanupBuildVolumes(ctx, rc, vols)
		if isRemote(err, "InstanceNotFound") || isRemote(err, "UnexpectedDeletingTaskStateError") {
			return nil, err
		}
		return nil, buildAbort(uuid, "Failure prepping block device.: "+remoteMessage(err))
	}
	return out, nil
}

// prepVolumes is _prep_block_device's attach_block_devices for the volume
// BDMs: each volume created first if nova-compute must create it, then
// attached in cinder without the driver's attach (spawn attaches the
// disks). On failure the caller releases the attachments: a build deletes
// them, an unshelve hands them back to reserved ones.
func (v *volumes) prepVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object, vols []*ovo.Object) ([]buildVolume, error) {
	var out []buildVolume
	for _, b := range vols {
		err := func() error {
			if needsVolumeCreate(b) {
				if err := v.createBDMVolume(ctx, rc, inst, b); err != nil {
					return err
				}
			}
			return v.bdmAttachDriver(ctx, rc, inst, b, false)
		}()
		if err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Msg("Instance failed block device setup")
			return nil, err
		}
		out = append(out, buildVolume{bdm: b, ci: bdmConnectionInfo(b)})
	}
	return out, nil
}

// backingRelocator moves a volume's backing (*vcenter.Session has it).
type backingRelocator interface {
	RelocateVM(ctx context.Context, vm vcenter.Ref, spec vcenter.RelocateSpec) (vcenter.VM, error)
}

// attachBuildVolumes is the block device part of vmops.spawn: the root
// volume (boot_index 0) has its backing moved to the VM's resource pool
// and datastore first (volumeops.attach_root_volume), then every volume's
// disk is attached to the VM, on the BDM's disk_bus if it names one.
func (v *volumes) attachBuildVolumes(ctx context.Context, inst *ovo.Object, datastore vcenter.Ref, vols []buildVolume) error {
	for _, bv := range vols {
		bus := bv.bdm.StringOrEmpty("disk_bus")
		if i, err := bv.bdm.Int("boot_index"); err == nil && i == 0 {
			if err := v.relocateRootBacking(ctx, inst, datastore, bv.ci); err != nil {
				return err
			}
		}
		if err := v.driverAttach(ctx, inst, bv.ci, bus); err != nil {
			return err
		}
	}
	return nil
}

// relocateRootBacking is attach_root_volume's relocation of the backing.
func (v *volumes) relocateRootBacking(ctx context.Context, inst *ovo.Object, datastore vcenter.Ref, ci map[string]any) error {
	t, data := connectionData(ci)
	if t != "vmdk" {
		return nil
	}
	hv, err := v.volumeHV()
	if err != nil {
		return err
	}
	rel, ok := v.hv.(backingRelocator)
	if !ok {
		return rpc.BuiltinError("NotImplementedError", "")
	}
	vm, err := v.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	_, ref, err := v.backingDisk(ctx, hv, data)
	if err != nil {
		return vimFault(err)
	}
	// nova names only the pool and the datastore; the VM's host too keeps
	// the move valid in a cluster without DRS, and the backing next to it.
	if _, err := rel.RelocateVM(ctx, ref, vcenter.RelocateSpec{ResourcePool: vm.ResourcePool, Datastore: datastore, Host: vm.Host}); err != nil {
		return vimFault(err)
	}
	return nil
}

// releaseBuildVolumes is _shutdown_instance's attachment deletes for a
// failed build: the volumes are no longer in use by it.
func (v *volumes) releaseBuildVolumes(ctx context.Context, rc rpc.Context, vols []buildVolume) {
	if len(vols) == 0 || v == nil || v.api == nil {
		return
	}
	cc := cinderContext(rc)
	for _, bv := range vols {
		if att := bv.bdm.StringOrEmpty("attachment_id"); att != "" {
			if err := v.api.AttachmentDelete(ctx, cc, att); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				zerolog.Ctx(ctx).Warn().Err(err).Str("volume_id", bv.bdm.StringOrEmpty("volume_id")).Msg("Ignoring unknown exception for volume")
			}
		}
	}
}

// bootsFromVolume reports a build whose root disk is a volume: the
// instance has no image (nova-api leaves image_ref empty) and a volume
// BDM is its boot device.
func bootsFromVolume(inst *ovo.Object, vols []buildVolume) bool {
	if inst.StringOrEmpty("image_ref") != "" {
		return false
	}
	for _, bv := range vols {
		if i, err := bv.bdm.Int("boot_index"); err == nil && i == 0 {
			return true
		}
	}
	return false
}

// spawnFromVolume is vmops.spawn for an instance booted from a volume:
// no image is fetched, the VM is made without a disk of its own (with its
// SCSI controller and network cards), the volumes' disks are attached
// (the root volume's backing moved to the VM's pool and datastore first,
// attach_root_volume) and the VM is powered on. image is the build's
// image argument (the volume's image metadata): its properties choose the
// network card model.
func (v *volumes) spawnFromVolume(ctx context.Context, inst *ovo.Object, cluster vcenter.Cluster, ds vcenter.Datastore, image map[string]any, vols []buildVolume) error {
	uuid := inst.StringOrEmpty("uuid")
	flavor, err := inst.Object("flavor")
	if err != nil || flavor == nil {
		return fmt.Errorf("instance has no flavor")
	}
	vcpus, _ := flavor.Int("vcpus")
	mem, _ := flavor.Int("memory_mb")
	props, _ := image["properties"].(map[string]any)
	nics, err := nicsForVIFs(vifModel(props), vifMaps(networkInfo(inst)))
	if err != nil {
		return err
	}
	if err := v.ensureExtension(ctx); err != nil {
		return err
	}
	folder, err := v.instancesFolder(ctx, cluster.Datacenter, inst.StringOrEmpty("project_id"))
	if err != nil {
		return err
	}
	vm, err := v.hv.CreateVM(ctx, vcenter.VMSpec{
		Name: fmt.Sprintf("%s (%s)", inst.StringOrEmpty("display_name"), uuid), InstanceUUID: uuid,
		NumCPUs: int32(vcpus), MemoryMB: mem, GuestID: "otherGuest",
		Annotation: fmt.Sprintf("name:%s\nuserid:%s\nprojectid:%s\nflavor:name:%s\nimageid:%s", inst.StringOrEmpty("display_name"),
			inst.StringOrEmpty("user_id"), inst.StringOrEmpty("project_id"), flavor.StringOrEmpty("name"), ""),
		ExtraConfig:  map[string]string{"nvp.vm-uuid": uuid},
		ManagedByKey: extensionKey, ManagedByType: "instance",
		Folder: folder, ResourcePool: cluster.ResourcePool, Datastore: ds.Ref,
		DatastorePath: vcenter.DatastorePath{Datastore: ds.Name, Path: uuid}.String() + "/", SCSIController: vcenter.SCSILsiLogic,
		NICs: nics,
	})
	if err != nil {
		return err
	}
	if err := v.attachBuildVolumes(ctx, inst, ds.Ref, vols); err != nil {
		return err
	}
	return v.hv.PowerOn(ctx, vm.Ref)
}
