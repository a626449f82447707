package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// nova's power_state values.
const (
	powerNoState  = 0
	powerRunning  = 1
	powerShutdown = 4
)

// Hypervisor is what the lifecycle needs of vCenter.
type Hypervisor interface {
	VCenter
	EnsureFolderPath(ctx context.Context, datacenter string, path ...string) (vcenter.Ref, error)
	EnsureExtension(ctx context.Context, key, label, company string) error
	CreateVM(ctx context.Context, spec vcenter.VMSpec) (vcenter.VM, error)
	FindVMByInstanceUUID(ctx context.Context, uuid string) (vcenter.VM, error)
	PowerOn(ctx context.Context, vm vcenter.Ref) error
	PowerOff(ctx context.Context, vm vcenter.Ref) error
	Reset(ctx context.Context, vm vcenter.Ref) error
	RebootGuest(ctx context.Context, vm vcenter.Ref) error
	Rename(ctx context.Context, vm vcenter.Ref, name string) error
	AttachDisk(ctx context.Context, vm vcenter.Ref, datastorePath string, capacityKB int64, controllerKey int32) (vcenter.Disk, error)
	Destroy(ctx context.Context, vm vcenter.Ref) error
	CopyToInstance(ctx context.Context, dc string, cached, instanceDir vcenter.DatastorePath, rootGB int64) (vcenter.DatastorePath, error)
	DeleteDatastoreFile(ctx context.Context, dc string, p vcenter.DatastorePath) error
}

// Images reads glance images.
type Images interface {
	Image(ctx context.Context, token, id string) (cloud.Image, error)
	Download(ctx context.Context, token, id string) (io.ReadCloser, int64, error)
}

// ImageCache keeps images on the datastores.
type ImageCache interface {
	Ensure(ctx context.Context, dc, ds, imageID string, fetch vcenter.FetchFunc, kind vcenter.DiskKind) (vcenter.DatastorePath, error)
}

// extensionKey is the managedBy extension of the VMs the agent creates, as
// nova's VMware driver registers it.
const extensionKey = "org.openstack.compute"

// lifecycle carries out nova's instance operations on vCenter.
type lifecycle struct {
	cond   *Conductor
	hv     Hypervisor
	images Images
	cache  ImageCache
	pl     Placement
	sched  rpc.Client // scheduler fanout (instance info updates)
	host   string
	ds     *regexp.Regexp
	log    zerolog.Logger

	locks keyedLocks
}

// keyedLocks serialises work per instance, as nova's
// @utils.synchronized(instance.uuid) does; entries are freed after use.
type keyedLocks struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// instanceArgs decodes the "instance" argument.
func (l *lifecycle) instanceArg(req *rpc.Request) (*ovo.Object, error) {
	var a struct {
		Instance any `json:"instance"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	inst, err := ovo.NovaCodec().Decode(a.Instance)
	if err != nil {
		return nil, rpc.BuiltinError("ValueError", "instance argument: "+err.Error())
	}
	return inst, nil
}

// operation runs body as nova's decorated manager methods do: the
// instance lock, event_start before and event_finish(_with_failure) after
// (with the caller's context, whose request_id names the action), and on
// failure vm_state/task_state handling by onError.
func (l *lifecycle) operation(ctx context.Context, req *rpc.Request, event string, body func(ctx context.Context, inst *ovo.Object) error) (any, error) {
	inst, err := l.instanceArg(req)
	if err != nil {
		return nil, err
	}
	uuid := inst.StringOrEmpty("uuid")
	unlock := l.locks.lock(uuid)
	defer unlock()
	log := zerolog.Ctx(ctx).With().Str("instance_uuid", uuid).Logger()
	ctx = log.WithContext(ctx)
	rc := req.Context
	if err := l.eventStart(ctx, rc, uuid, event); err != nil {
		return nil, err
	}
	berr := body(ctx, inst)
	if berr != nil {
		log.Error().Err(berr).Str("event", event).Msg("instance operation failed")
		l.recordFault(ctx, rc, inst, berr)
	}
	l.eventFinish(ctx, rc, uuid, event, berr)
	return nil, berr
}

// eventStart records the start of the compute's part of an instance action
// (InstanceActionEvent.event_start); nova aborts the operation when it fails.
func (l *lifecycle) eventStart(ctx context.Context, rc rpc.Context, uuid, event string) error {
	if _, err := l.cond.ClassAction(ctx, rc, "InstanceActionEvent", "event_start", []any{uuid, event},
		map[string]any{"want_result": false, "host": l.host}); err != nil {
		return fmt.Errorf("event_start %s: %w", event, err)
	}
	return nil
}

// eventFinish records its end, with the failure if there was one.
func (l *lifecycle) eventFinish(ctx context.Context, rc rpc.Context, uuid, event string, cause error) {
	var excVal, excTB any
	if cause != nil {
		excVal = cause.Error()
		excTB = "Traceback (most recent call last):\n  (raised by vcagent)\n" + cause.Error() + "\n"
	}
	if _, err := l.cond.ClassAction(ctx, rc, "InstanceActionEvent", "event_finish_with_failure", []any{uuid, event},
		map[string]any{"exc_val": excVal, "exc_tb": excTB, "want_result": false}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("event", event).Msg("event_finish failed")
	}
}

// recordFault is wrap_instance_fault: InstanceFault.create.
func (l *lifecycle) recordFault(ctx context.Context, rc rpc.Context, inst *ovo.Object, cause error) {
	f := ovo.New("InstanceFault", l.cond.version("InstanceFault"))
	f.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	f.SetInt("code", 500)
	f.SetString("message", truncate(cause.Error(), 255))
	f.SetString("details", cause.Error())
	f.SetString("host", l.host)
	if _, err := l.cond.ObjectAction(ctx, rc, f, "create", nil, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("recording the instance fault failed")
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// save is Instance.save with nova's expected_task_state.
func (l *lifecycle) save(ctx context.Context, rc rpc.Context, inst *ovo.Object, expected any) error {
	var kwargs map[string]any
	if expected != nil {
		kwargs = map[string]any{"expected_task_state": expected}
	}
	_, err := l.cond.ObjectAction(ctx, rc, inst, "save", nil, kwargs)
	return err
}

func setStates(inst *ovo.Object, vmState string, taskState *string, power int64) {
	if vmState != "" {
		inst.SetString("vm_state", vmState)
	}
	if taskState == nil {
		inst.SetNull("task_state")
	} else {
		inst.SetString("task_state", *taskState)
	}
	if power >= 0 {
		inst.SetInt("power_state", power)
	}
}

func str(s string) *string { return &s }

// BuildAndRunInstance is build_and_run_instance (a cast): the VM is
// created in the cluster of the node nova chose, from the image, powered
// on, and the instance goes through nova's task states to ACTIVE.
func (l *lifecycle) BuildAndRunInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		Node  string         `json:"node"`
		Image map[string]any `json:"image"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operation(ctx, req, "compute__do_build_and_run_instance", func(ctx context.Context, inst *ovo.Object) error {
		rc := req.Context
		setStates(inst, "building", nil, -1)
		if err := l.save(ctx, rc, inst, []any{"scheduling", nil}); err != nil {
			return err
		}
		err := l.build(ctx, rc, inst, a.Node, a.Image)
		if err != nil {
			// Nothing is left behind in vCenter, and the server ends in ERROR.
			if vm, ferr := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid")); ferr == nil {
				_ = l.hv.Destroy(context.WithoutCancel(ctx), vm.Ref)
			}
			setStates(inst, "error", nil, -1)
			if serr := l.save(ctx, rc, inst, nil); serr != nil {
				zerolog.Ctx(ctx).Error().Err(serr).Msg("setting the instance to ERROR failed")
			}
		}
		return err
	})
}

func (l *lifecycle) build(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, image map[string]any) error {
	// The resource claim: the instance is on this host and node.
	inst.SetString("host", l.host)
	inst.SetString("node", node)
	inst.SetString("launched_on", l.host)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	inst.SetString("task_state", "networking")
	if err := l.save(ctx, rc, inst, []any{nil}); err != nil {
		return err
	}
	if cache, err := inst.Object("info_cache"); err == nil && cache != nil {
		cache.SetString("network_info", "[]")
		if _, err := l.cond.ObjectAction(ctx, rc, cache, "save", nil, nil); err != nil {
			return err
		}
		cache.ResetChanges()
	}
	inst.SetString("task_state", "block_device_mapping")
	if err := l.save(ctx, rc, inst, "networking"); err != nil {
		return err
	}
	inst.SetString("task_state", "spawning")
	if err := l.save(ctx, rc, inst, "block_device_mapping"); err != nil {
		return err
	}
	if err := l.spawn(ctx, rc, inst, node, image); err != nil {
		return err
	}
	setStates(inst, "active", nil, powerRunning)
	inst.SetDateTime("launched_at", time.Now().UTC())
	if err := l.save(ctx, rc, inst, "spawning"); err != nil {
		return err
	}
	l.updateSchedulerInstanceInfo(ctx, rc, inst)
	return nil
}

// updateSchedulerInstanceInfo tells the schedulers about a new or changed
// instance (nova's _update_scheduler_instance_info): an InstanceList with it.
func (l *lifecycle) updateSchedulerInstanceInfo(ctx context.Context, rc rpc.Context, inst *ovo.Object) {
	list, err := ovo.NovaCodec().EncodeEntity(ovo.NewList("InstanceList", l.cond.version("InstanceList"), inst))
	if err == nil {
		err = l.sched.Cast(ctx, rc, "update_instance_info", map[string]any{"host_name": l.host, "instance_info": list})
	}
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("update_instance_info to the scheduler failed")
	}
}

// spawn creates the VM as nova's vmops.spawn does.
func (l *lifecycle) spawn(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, image map[string]any) error {
	uuid := inst.StringOrEmpty("uuid")
	moref, _, _ := strings.Cut(node, ".")
	clusters, err := l.hv.Clusters(ctx)
	if err != nil {
		return err
	}
	var cluster *vcenter.Cluster
	for i := range clusters {
		if clusters[i].Ref.Value == moref {
			cluster = &clusters[i]
		}
	}
	if cluster == nil {
		return fmt.Errorf("node %s: no such cluster in vCenter", node)
	}
	ds, ok := cluster.BestDatastore(l.ds)
	if !ok {
		return fmt.Errorf("cluster %s has no usable datastore", cluster.Name)
	}
	flavor, err := inst.Object("flavor")
	if err != nil || flavor == nil {
		return fmt.Errorf("instance has no flavor")
	}
	vcpus, _ := flavor.Int("vcpus")
	mem, _ := flavor.Int("memory_mb")
	rootGB, _ := flavor.Int("root_gb")
	if l.images == nil || l.cache == nil {
		return fmt.Errorf("cannot spawn: glance is not configured (VCAGENT_AUTH_URL or VCAGENT_AUTH_TOKEN with VCAGENT_GLANCE_ENDPOINT)")
	}
	imageID, _ := image["id"].(string)
	token := rc.String("auth_token")
	meta, err := l.images.Image(ctx, token, imageID)
	if err != nil {
		return err
	}
	kind := vcenter.DiskKindPreallocated
	if t, _ := meta.Properties["vmware_disktype"].(string); t != "" {
		kind = vcenter.DiskKind(t)
	}
	if err := l.hv.EnsureExtension(ctx, extensionKey, "OpenStack Compute", "OpenStack"); err != nil {
		return err
	}
	folder, err := l.hv.EnsureFolderPath(ctx, cluster.Datacenter, "OpenStack", "Project ("+inst.StringOrEmpty("project_id")+")", "Instances")
	if err != nil {
		return err
	}
	cached, err := l.cache.Ensure(ctx, cluster.Datacenter, ds.Name, imageID, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return l.images.Download(ctx, token, imageID)
	}, kind)
	if err != nil {
		return fmt.Errorf("image %s: %w", imageID, err)
	}
	vm, err := l.hv.CreateVM(ctx, vcenter.VMSpec{
		Name: uuid, InstanceUUID: uuid, NumCPUs: int32(vcpus), MemoryMB: mem, GuestID: "otherGuest",
		Annotation:   fmt.Sprintf("name:%s\nuserid:%s\nprojectid:%s\nflavor:name:%s\nimageid:%s", inst.StringOrEmpty("display_name"), inst.StringOrEmpty("user_id"), inst.StringOrEmpty("project_id"), flavor.StringOrEmpty("name"), imageID),
		ExtraConfig:  map[string]string{"nvp.vm-uuid": uuid},
		ManagedByKey: extensionKey, ManagedByType: "instance",
		Folder: folder, ResourcePool: cluster.ResourcePool, Datastore: ds.Ref,
		DatastorePath: vcenter.DatastorePath{Datastore: ds.Name, Path: uuid + "/"}.String(), SCSIController: vcenter.SCSILsiLogic,
	})
	if err != nil {
		return err
	}
	root, err := l.hv.CopyToInstance(ctx, cluster.Datacenter, cached, vcenter.DatastorePath{Datastore: ds.Name, Path: uuid}, rootGB)
	if err != nil {
		return err
	}
	if _, err := l.hv.AttachDisk(ctx, vm.Ref, root.String(), 0, 0); err != nil {
		return err
	}
	if err := l.hv.Rename(ctx, vm.Ref, fmt.Sprintf("%s (%s)", inst.StringOrEmpty("display_name"), uuid)); err != nil {
		return err
	}
	return l.hv.PowerOn(ctx, vm.Ref)
}

// vmOf finds the instance's VM.
func (l *lifecycle) vmOf(ctx context.Context, inst *ovo.Object) (vcenter.VM, error) {
	vm, err := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid"))
	if errors.Is(err, vcenter.ErrNotFound) {
		return vm, &rpc.RemoteError{Class: "InstanceNotFound", Module: "nova.exception",
			Message: fmt.Sprintf("Instance %s could not be found.", inst.StringOrEmpty("uuid")),
			Kwargs:  map[string]any{"instance_id": inst.StringOrEmpty("uuid"), "code": 404}}
	}
	return vm, err
}

// StopInstance is stop_instance: power off, then STOPPED.
func (l *lifecycle) StopInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, "compute_stop_instance", func(ctx context.Context, inst *ovo.Object) error {
		vm, err := l.vmOf(ctx, inst)
		if err != nil {
			return l.revertTask(ctx, req.Context, inst, err)
		}
		if err := l.hv.PowerOff(ctx, vm.Ref); err != nil {
			return l.revertTask(ctx, req.Context, inst, err)
		}
		setStates(inst, "stopped", nil, powerShutdown)
		return l.save(ctx, req.Context, inst, "powering-off")
	})
}

// StartInstance is start_instance: power on, then ACTIVE.
func (l *lifecycle) StartInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, "compute_start_instance", func(ctx context.Context, inst *ovo.Object) error {
		vm, err := l.vmOf(ctx, inst)
		if err != nil {
			return l.revertTask(ctx, req.Context, inst, err)
		}
		if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
			return l.revertTask(ctx, req.Context, inst, err)
		}
		setStates(inst, "active", nil, powerRunning)
		return l.save(ctx, req.Context, inst, "powering-on")
	})
}

// RebootInstance is reboot_instance: SOFT asks the guest (VMware Tools)
// to reboot and falls back to a reset without them, as the VMware driver
// does; HARD resets.
func (l *lifecycle) RebootInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a struct {
		RebootType string `json:"reboot_type"`
	}
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	suffix := ""
	if a.RebootType == "HARD" {
		suffix = "_hard"
	}
	return l.operation(ctx, req, "compute_reboot_instance", func(ctx context.Context, inst *ovo.Object) error {
		rc := req.Context
		setStates(inst, "", str("reboot_pending"+suffix), powerRunning)
		if err := l.save(ctx, rc, inst, []any{"rebooting" + suffix, "reboot_pending" + suffix, "reboot_started" + suffix}); err != nil {
			return err
		}
		inst.SetString("task_state", "reboot_started"+suffix)
		if err := l.save(ctx, rc, inst, "reboot_pending"+suffix); err != nil {
			return err
		}
		vm, err := l.vmOf(ctx, inst)
		if err == nil {
			if a.RebootType == "HARD" {
				err = l.hv.Reset(ctx, vm.Ref)
			} else if err = l.hv.RebootGuest(ctx, vm.Ref); errors.Is(err, vcenter.ErrToolsNotRunning) {
				err = l.hv.Reset(ctx, vm.Ref)
			}
		}
		if err != nil {
			return l.revertTask(ctx, rc, inst, err)
		}
		setStates(inst, "active", nil, powerRunning)
		return l.save(ctx, rc, inst, nil)
	})
}

// TerminateInstance is terminate_instance: the VM and its files are
// removed, the instance is marked DELETED and destroyed through
// conductor, and its placement allocations are deleted.
func (l *lifecycle) TerminateInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, "compute_terminate_instance", func(ctx context.Context, inst *ovo.Object) error {
		rc := req.Context
		uuid := inst.StringOrEmpty("uuid")
		if vm, err := l.hv.FindVMByInstanceUUID(ctx, uuid); err == nil {
			if err := l.hv.Destroy(ctx, vm.Ref); err != nil {
				return err
			}
		} else if !errors.Is(err, vcenter.ErrNotFound) {
			return err
		}
		setStates(inst, "deleted", nil, powerNoState)
		inst.SetDateTime("terminated_at", time.Now().UTC())
		if err := l.save(ctx, rc, inst, nil); err != nil {
			return err
		}
		if _, err := l.cond.ObjectAction(ctx, rc, inst, "destroy", nil, nil); err != nil {
			return err
		}
		if l.pl != nil {
			if _, err := l.pl.DeleteAllocations(ctx, uuid); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("deleting the placement allocations failed")
			}
		}
		if err := l.sched.Cast(ctx, rc, "delete_instance_info", map[string]any{"host_name": l.host, "instance_uuid": uuid}); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("delete_instance_info to the scheduler failed")
		}
		return nil
	})
}

// revertTask is reverts_task_state: task_state back to None on failure.
func (l *lifecycle) revertTask(ctx context.Context, rc rpc.Context, inst *ovo.Object, cause error) error {
	inst.SetNull("task_state")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("reverting the task state failed")
	}
	return cause
}
