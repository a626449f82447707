package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
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
	// Forget makes the next Ensure check the datastore again.
	Forget(dc, ds, imageID string)
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
	tasks  rpc.Client // conductor's compute_task API (reschedules)
	notify *notifier  // nil: notifications off
	builds *buildLimit
	vms    vmIndex    // instance uuid -> VM, from the VM watcher
	known  spawnCache // what builds reuse: extension, folders, inventory
	// events are the network-vif-plugged events builds wait for, when
	// vifTimeout is set (nova's VMware driver waits for none).
	events     instanceEvents
	vifTimeout time.Duration
	vifFatal   bool

	consoles      *ConsoleConfig // nil: nova's defaults
	snapshots     chan struct{}  // max_concurrent_snapshots, made on first use
	snapshotsOnce sync.Once
	host          string
	ds            *regexp.Regexp
	log           zerolog.Logger

	locks keyedLocks

	// net is neutron (network.go); nil: no networks can be allocated.
	net *networkAPI
	// vols are the volume operations (volumes.go); nil: builds ignore
	// volume BDMs.
	vols *volumes
}

// buildLimit is nova's max_concurrent_builds: a semaphore the builds
// queue on. A nil *buildLimit does not limit (nova's 0).
type buildLimit struct {
	slots   chan struct{}
	waiting atomic.Int64
}

func newBuildLimit(n int) *buildLimit {
	if n <= 0 {
		return nil
	}
	return &buildLimit{slots: make(chan struct{}, n)}
}

// acquire waits for a build slot; the returned func gives it back.
func (b *buildLimit) acquire(ctx context.Context) (func(), error) {
	if b == nil {
		return func() {}, nil
	}
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	select {
	case b.slots <- struct{}{}:
		return func() { <-b.slots }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a build slot: %w", ctx.Err())
	}
}

// queued returns how many builds wait for a slot (the build queue depth).
func (b *buildLimit) queued() int64 {
	if b == nil {
		return 0
	}
	return b.waiting.Load()
}

// running returns how many builds hold a slot.
func (b *buildLimit) running() int {
	if b == nil {
		return 0
	}
	return len(b.slots)
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

// opSpec names an instance operation the way nova's decorators see it.
type opSpec struct {
	// event is the InstanceActionEvent name (wrap_instance_event),
	// e.g. "compute_stop_instance".
	event string
	// method is the manager method, whose name wrap_exception gives the
	// legacy error notification; empty sends no exception notification.
	method string
	// action, if set, is notified as <action>.start before body and
	// <action>.end after it succeeded (legacy compute.instance.<action>.*
	// and versioned instance.<action>.*).
	action string
	// revertsTaskState resets task_state after a failure
	// (@reverts_task_state).
	revertsTaskState bool
}

// operation runs body as nova's decorated manager methods do: the
// instance lock, event_start before and event_finish(_with_failure) after
// (with the caller's context, whose request_id names the action), the
// action's notifications, and on failure the instance fault, the task
// state reverted and the exception notifications, in nova's order.
func (l *lifecycle) operation(ctx context.Context, req *rpc.Request, op opSpec, body func(ctx context.Context, inst *ovo.Object) error) (any, error) {
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
	if err := l.eventStart(ctx, rc, uuid, op.event); err != nil {
		return nil, err
	}
	l.loadFlavor(ctx, rc, inst)
	if op.action != "" {
		l.notify.instanceAction(ctx, rc, inst, op.action, op.action, "start", nil, nil)
	}
	berr := body(ctx, inst)
	if berr != nil {
		log.Error().Err(berr).Str("event", op.event).Msg("instance operation failed")
		l.recordFault(ctx, rc, inst, berr)
	} else if op.action != "" {
		l.notify.instanceAction(ctx, rc, inst, op.action, op.action, "end", nil, nil)
	}
	l.eventFinish(ctx, rc, uuid, op.event, berr)
	if berr != nil {
		if op.revertsTaskState {
			l.revertTask(ctx, rc, inst)
		}
		if op.method != "" {
			l.notify.exception(ctx, rc, op.method, l.exceptionArgs(req, inst), berr)
		}
	}
	return nil, berr
}

// loadFlavor lazy-loads the instance's flavor, as nova's Instance does
// on first use (Instance.get_by_uuid with expected_attrs=["flavor"]): the
// API rarely sends it, and the notifications need it. Without
// notifications the agent needs no flavor outside builds and saves the call.
func (l *lifecycle) loadFlavor(ctx context.Context, rc rpc.Context, inst *ovo.Object) {
	if !l.notify.enabled() || inst.Has("flavor") {
		return
	}
	res, err := l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{inst.StringOrEmpty("uuid")},
		map[string]any{"expected_attrs": []any{"flavor"}})
	fresh, ok := res.(*ovo.Object)
	if err != nil || !ok {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("loading the instance's flavor failed")
		return
	}
	if f, ok := fresh.Get("flavor"); ok {
		inst.Fields["flavor"] = f // a load, not a change: the next save must not send it
	}
}

// exceptionArgs are wrap_exception's call arguments for the legacy error
// notification: the request's arguments, the instance as its fields.
func (l *lifecycle) exceptionArgs(req *rpc.Request, inst *ovo.Object) map[string]any {
	var args map[string]any
	_ = req.DecodeArgs(&args)
	if args == nil {
		args = map[string]any{}
	}
	if enc, err := ovo.NovaCodec().Encode(inst); err == nil {
		args["instance"] = enc["nova_object.data"]
	}
	return args
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
		// nova's serialize_args: a nova exception's message, else only
		// the exception's class name (what the event's details show).
		_, excVal = faultCodeAndMessage(cause)
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
	code, msg := faultCodeAndMessage(cause)
	f.SetInt("code", code)
	f.SetString("message", msg)
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

// buildArgs are build_and_run_instance's arguments. Those the agent only
// passes on to conductor when it reschedules stay raw.
type buildArgs struct {
	Node               string          `json:"node"`
	Image              map[string]any  `json:"image"`
	FilterProperties   map[string]any  `json:"filter_properties"`
	RequestSpec        json.RawMessage `json:"request_spec"`
	AdminPassword      json.RawMessage `json:"admin_password"`
	InjectedFiles      json.RawMessage `json:"injected_files"`
	RequestedNetworks  json.RawMessage `json:"requested_networks"`
	SecurityGroups     json.RawMessage `json:"security_groups"`
	BlockDeviceMapping json.RawMessage `json:"block_device_mapping"`
	HostList           json.RawMessage `json:"host_list"`
}

// BuildAndRunInstance is build_and_run_instance (a cast): the VM is
// created in the cluster of the node nova chose, from the image, powered
// on, and the instance goes through nova's task states to ACTIVE. At most
// max_concurrent_builds builds run at once; the others wait their turn.
//
// A build that fails is cleaned up (nothing stays in vCenter) and, as in
// nova's _do_build_and_run_instance, either rescheduled through conductor's
// build_instances to the alternates in host_list (when the request carries
// retry information) or ends in ERROR with the instance fault; either way
// the action event itself finishes without an exception and the failure is
// told by create.error notifications.
func (l *lifecycle) BuildAndRunInstance(ctx context.Context, req *rpc.Request) (any, error) {
	var a buildArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	release, err := l.builds.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return l.operation(ctx, req, opSpec{event: "compute__do_build_and_run_instance"}, func(ctx context.Context, inst *ovo.Object) error {
		rc := req.Context
		setStates(inst, "building", nil, -1)
		if err := l.save(ctx, rc, inst, []any{"scheduling", nil}); err != nil {
			// Deleted or changed meanwhile: nova drops the build quietly.
			zerolog.Ctx(ctx).Info().Err(err).Msg("instance gone or changed before the build; not building")
			return nil
		}
		imageName, _ := a.Image["name"].(string)
		l.notify.instanceAction(ctx, rc, inst, "create", "create", "start", nil, map[string]any{"image_name": imageName})
		reqNets, perr := parseRequestedNetworks(a.RequestedNetworks)
		if perr != nil {
			zerolog.Ctx(ctx).Warn().Err(perr).Msg("requested_networks not understood; allocating as for none requested")
		}
		berr := l.buildVolumes(ctx, rc, inst, a.Node, a.Image, reqNets, parseSecurityGroups(a.SecurityGroups), a.BlockDeviceMapping)
		if berr == nil {
			l.notify.instanceAction(ctx, rc, inst, "create", "create", "end", nil, map[string]any{"image_name": imageName, "message": "Success", "fixed_ips": legacyFixedIPs(inst)})
			return nil
		}
		zerolog.Ctx(ctx).Error().Err(berr).Msg("build failed")
		l.notify.instanceAction(ctx, rc, inst, "create", "create", "error", berr, map[string]any{"image_name": imageName})
		l.cleanupFailedBuild(ctx, inst)
		l.cleanupAllocatedNetworks(ctx, rc, inst, reqNets)
		l.forgetSpawnCache()
		if instanceGone(berr) {
			// Deleted while building: the delete owns the instance now.
			return nil
		}
		retry, _ := a.FilterProperties["retry"].(map[string]any)
		if retry != nil && !isBuildAbort(berr) {
			err := l.reschedule(ctx, rc, inst, a, retry, berr)
			if err == nil {
				return nil
			}
			zerolog.Ctx(ctx).Error().Err(err).Msg("rescheduling the build failed")
		}
		l.failBuild(ctx, rc, inst, berr)
		return nil
	})
}

// isBuildAbort tells failures that no other host would fix (nova's
// BuildAbortException: a bad image, a flavor too small) from those worth a
// reschedule (RescheduledException: anything else the hypervisor raised).
func isBuildAbort(err error) bool {
	return errors.Is(err, vcenter.ErrUnsupportedDiskKind) || errors.Is(err, vcenter.ErrInvalidImage) ||
		isNovaError(err, "BuildAbortException")
}

// instanceGone reports conductor's answer for an instance deleted under a
// build (InstanceNotFound, UnexpectedDeletingTaskStateError): nova then
// only cleans up, neither rescheduling nor setting ERROR.
func instanceGone(err error) bool {
	var re *rpc.RemoteError
	return errors.As(err, &re) && (re.Class == "InstanceNotFound" || re.Class == "UnexpectedDeletingTaskStateError")
}

// cleanupFailedBuild removes what the build left in vCenter: the VM and
// its folder on the datastore.
func (l *lifecycle) cleanupFailedBuild(ctx context.Context, inst *ovo.Object) {
	ctx = context.WithoutCancel(ctx) // the clean-up must not be cut short by a drain
	vm, err := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid"))
	if errors.Is(err, vcenter.ErrNotFound) {
		return
	}
	if err == nil {
		err = l.hv.Destroy(ctx, vm.Ref)
	}
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("cleaning up the failed build's VM failed")
	}
}

// reschedule is nova's reschedule of a failed build: the instance leaves
// this host, its allocations are released so an alternate can claim them,
// and conductor's build_instances is cast with the remaining host list.
func (l *lifecycle) reschedule(ctx context.Context, rc rpc.Context, inst *ovo.Object, a buildArgs, retry map[string]any, cause error) error {
	retry["exc"] = []any{"Traceback (most recent call last):\n", "  (raised by vcagent)\n", cause.Error() + "\n"}
	retry["exc_reason"] = cause.Error()
	if errors.As(cause, new(*rpc.RemoteError)) {
		retry["exc_reason"] = remoteMessage(cause) // str(e) of nova's exception
	}
	inst.SetNull("host")
	inst.SetNull("node")
	inst.SetNull("launched_on")
	inst.SetString("task_state", "scheduling")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		return err
	}
	if l.pl != nil {
		if _, err := l.pl.DeleteAllocations(ctx, inst.StringOrEmpty("uuid")); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("releasing the failed build's allocations failed")
		}
	}
	enc, err := ovo.NovaCodec().EncodeEntity(inst)
	if err != nil {
		return err
	}
	hostLists := []any{json.RawMessage("null")}
	if len(a.HostList) > 0 {
		hostLists = []any{a.HostList}
	}
	return l.tasks.Cast(ctx, rc, "build_instances", map[string]any{
		"instances":            []any{enc},
		"image":                a.Image,
		"filter_properties":    a.FilterProperties,
		"admin_password":       rawOrNull(a.AdminPassword),
		"injected_files":       rawOrNull(a.InjectedFiles),
		"requested_networks":   rawOrNull(a.RequestedNetworks),
		"security_groups":      rawOrNull(a.SecurityGroups),
		"block_device_mapping": rawOrNull(a.BlockDeviceMapping),
		"request_spec":         rawOrNull(a.RequestSpec),
		"host_lists":           hostLists,
	})
}

func rawOrNull(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return json.RawMessage("null")
	}
	return m
}

// failBuild ends a build that is not rescheduled: the fault, the instance
// off this host in ERROR, its allocations released.
func (l *lifecycle) failBuild(ctx context.Context, rc rpc.Context, inst *ovo.Object, cause error) {
	l.recordFault(ctx, rc, inst, cause)
	inst.SetNull("host")
	inst.SetNull("node")
	inst.SetNull("launched_on")
	setStates(inst, "error", nil, -1)
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("setting the instance to ERROR failed")
	}
	if l.pl != nil {
		if _, err := l.pl.DeleteAllocations(ctx, inst.StringOrEmpty("uuid")); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("releasing the failed build's allocations failed")
		}
	}
}

// build claims the instance for this host and node, goes through nova's
// task states and spawns the VM.
func (l *lifecycle) build(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, image map[string]any, reqNets netRequests, secGroups []string) error {
	return l.buildVolumes(ctx, rc, inst, node, image, reqNets, secGroups, nil)
}

// buildVolumes is build with the build's block_device_mapping (volumes.go).
func (l *lifecycle) buildVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, image map[string]any, reqNets netRequests, secGroups []string, bdms json.RawMessage) error {
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
	// The network allocation (nova's is asynchronous: its failure surfaces
	// when spawn reads the network info, after the task states below).
	nerr := l.allocateBuildNetworks(ctx, rc, inst, reqNets, secGroups)
	if instanceGone(nerr) {
		return nerr
	}
	inst.SetString("task_state", "block_device_mapping")
	if err := l.save(ctx, rc, inst, "networking"); err != nil {
		return err
	}
	bvols, err := l.vols.prepBuildVolumes(ctx, rc, inst, bdms) // _prep_block_device (volumes.go)
	if err != nil {
		return err
	}
	inst.SetString("task_state", "spawning")
	if err := l.save(ctx, rc, inst, "block_device_mapping"); err != nil {
		return err
	}
	if nerr != nil {
		return networkBuildError(inst.StringOrEmpty("uuid"), nerr)
	}
	if err := l.spawnVolumes(ctx, rc, inst, node, image, bvols); err != nil {
		l.vols.releaseBuildVolumes(ctx, rc, bvols)
		if isNovaError(err, "InvalidInput") { // e.g. a VIF type the driver cannot plug
			return networkBuildError(inst.StringOrEmpty("uuid"), err)
		}
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
	return l.spawnVolumes(ctx, rc, inst, node, image, nil)
}

// spawnVolumes is spawn with the build's volumes (volumes.go): attached
// before the VM is powered on, or the VM booted from its root volume.
func (l *lifecycle) spawnVolumes(ctx context.Context, rc rpc.Context, inst *ovo.Object, node string, image map[string]any, bvols []buildVolume) (err error) {
	if len(bvols) > 0 {
		// A failed spawn's VM is destroyed next, with every disk attached
		// to it: the volumes' disks leave it first (volumes_move.go).
		defer func() {
			if err != nil {
				l.vols.detachBuildVolumes(ctx, inst, bvols)
			}
		}()
	}
	uuid := inst.StringOrEmpty("uuid")
	moref, _, _ := strings.Cut(node, ".")
	clusters, err := l.clusters(ctx)
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
	if bootsFromVolume(inst, bvols) {
		return l.vols.spawnFromVolume(ctx, inst, *cluster, ds, image, bvols)
	}
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
	// vif.get_vif_info: a card per VIF of the instance's network info.
	nics, err := nicsForVIFs(vifModel(meta.Properties), vifMaps(networkInfo(inst)))
	if err != nil {
		return err
	}
	if err := l.ensureExtension(ctx); err != nil {
		return err
	}
	folder, err := l.instancesFolder(ctx, cluster.Datacenter, inst.StringOrEmpty("project_id"))
	if err != nil {
		return err
	}
	cached, err := l.cache.Ensure(ctx, cluster.Datacenter, ds.Name, imageID, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return l.images.Download(ctx, token, imageID)
	}, kind)
	if err != nil {
		return fmt.Errorf("image %s: %w", imageID, err)
	}
	// The root disk is copied first and attached by CreateVM itself, and the
	// VM gets its final name at once: nova's driver creates the VM, then
	// attaches the disk (ReconfigVM) and renames it, 4 round trips more.
	dir := vcenter.DatastorePath{Datastore: ds.Name, Path: uuid}
	root, err := l.hv.CopyToInstance(ctx, cluster.Datacenter, cached, dir, rootGB)
	if err != nil {
		if errors.Is(err, vcenter.ErrNotFound) {
			l.cache.Forget(cluster.Datacenter, ds.Name, imageID) // removed behind the cache's back
		}
		l.removeOrphanDir(ctx, cluster.Datacenter, dir, uuid)
		return err
	}
	extra := map[string]string{"nvp.vm-uuid": uuid}
	// [vnc] enabled: the VM gets its VNC port at creation, as nova's spawn
	// gives it (with a reconfigure afterwards).
	if cfg := l.consoleConfig(); cfg.VNCEnabled {
		if r, ok := l.hv.(vncReserver); ok {
			vnc, release, err := r.ReserveVNCPort(ctx, cfg.VNCPort, cfg.VNCPortTotal, cfg.VNCKeymap)
			if err != nil {
				l.removeOrphanDir(ctx, cluster.Datacenter, dir, uuid)
				return err
			}
			defer release()
			maps.Copy(extra, vnc)
		}
	}
	vm, err := l.hv.CreateVM(ctx, vcenter.VMSpec{
		Name: fmt.Sprintf("%s (%s)", inst.StringOrEmpty("display_name"), uuid), InstanceUUID: uuid,
		NumCPUs: int32(vcpus), MemoryMB: mem, GuestID: "otherGuest",
		Annotation:   fmt.Sprintf("name:%s\nuserid:%s\nprojectid:%s\nflavor:name:%s\nimageid:%s", inst.StringOrEmpty("display_name"), inst.StringOrEmpty("user_id"), inst.StringOrEmpty("project_id"), flavor.StringOrEmpty("name"), imageID),
		ExtraConfig:  extra,
		ManagedByKey: extensionKey, ManagedByType: "instance",
		Folder: folder, ResourcePool: cluster.ResourcePool, Datastore: ds.Ref,
		// The .vmx named in full: given only the directory, which the copy
		// has made already, vCenter would put the VM in a new one beside it.
		DatastorePath: dir.Join(uuid + ".vmx").String(), SCSIController: vcenter.SCSILsiLogic,
		Disks: []string{root.String()},
		NICs:  nics,
	})
	if err != nil {
		l.removeOrphanDir(ctx, cluster.Datacenter, dir, uuid)
		return err
	}
	if err := l.vols.attachBuildVolumes(ctx, inst, ds.Ref, bvols); err != nil { // volumes.go
		return err
	}
	if l.vifTimeout <= 0 {
		return l.hv.PowerOn(ctx, vm.Ref)
	}
	wait := l.events.prepare(uuid, vifPluggedEvents(networkInfo(inst)))
	if err := l.hv.PowerOn(ctx, vm.Ref); err != nil {
		_, _ = wait(ctx, 0)
		return err
	}
	return l.waitVIFsPlugged(ctx, uuid, wait)
}

// vncReserver gives VMs being created their VNC port (*vcenter.Session).
type vncReserver interface {
	ReserveVNCPort(ctx context.Context, minPort, total int, keymap string) (map[string]string, func(), error)
}

// removeOrphanDir deletes the instance's directory after a build failed
// before its VM existed (the copied disk), unless a VM of the instance
// exists: its files are then its own, and the build's clean-up destroys
// the VM with them.
func (l *lifecycle) removeOrphanDir(ctx context.Context, dc string, dir vcenter.DatastorePath, uuid string) {
	ctx = context.WithoutCancel(ctx)
	if _, err := l.hv.FindVMByInstanceUUID(ctx, uuid); !errors.Is(err, vcenter.ErrNotFound) {
		return
	}
	if err := l.hv.DeleteDatastoreFile(ctx, dc, dir); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("path", dir.String()).Msg("removing the failed build's files failed")
	}
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
	return l.operation(ctx, req, opSpec{event: "compute_stop_instance", method: "stop_instance", action: "power_off", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			if err := l.withVM(ctx, inst, func(vm vcenter.Ref) error { return l.hv.PowerOff(ctx, vm) }); err != nil {
				return err
			}
			setStates(inst, "stopped", nil, powerShutdown)
			return l.save(ctx, req.Context, inst, "powering-off")
		})
}

// StartInstance is start_instance: power on, then ACTIVE.
func (l *lifecycle) StartInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_start_instance", method: "start_instance", action: "power_on", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			if err := l.withVM(ctx, inst, func(vm vcenter.Ref) error { return l.hv.PowerOn(ctx, vm) }); err != nil {
				return err
			}
			setStates(inst, "active", nil, powerRunning)
			return l.save(ctx, req.Context, inst, "powering-on")
		})
}

// RebootInstance is reboot_instance: SOFT asks the guest (VMware Tools)
// to reboot and falls back to a reset without them, as the VMware driver
// does; HARD resets. A failed reboot of a VM that still runs leaves the
// server ACTIVE with a fault and reboot.error notifications; otherwise
// the server goes to ERROR, as in nova.
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
	return l.operation(ctx, req, opSpec{event: "compute_reboot_instance", method: "reboot_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			l.notify.instanceAction(ctx, rc, inst, "reboot", "reboot", "start", nil, nil)
			setStates(inst, "", str("reboot_pending"+suffix), powerRunning)
			if err := l.save(ctx, rc, inst, []any{"rebooting" + suffix, "reboot_pending" + suffix, "reboot_started" + suffix}); err != nil {
				return err
			}
			inst.SetString("task_state", "reboot_started"+suffix)
			if err := l.save(ctx, rc, inst, "reboot_pending"+suffix); err != nil {
				return err
			}
			err := l.withVM(ctx, inst, func(vm vcenter.Ref) error {
				if a.RebootType == "HARD" {
					return l.hv.Reset(ctx, vm)
				}
				if err := l.hv.RebootGuest(ctx, vm); !errors.Is(err, vcenter.ErrToolsNotRunning) {
					return err
				}
				return l.hv.Reset(ctx, vm)
			})
			if err != nil {
				if cur, ferr := l.hv.FindVMByInstanceUUID(ctx, inst.StringOrEmpty("uuid")); ferr == nil && cur.PowerState == vcenter.PowerStateOn {
					l.recordFault(ctx, rc, inst, err)
					l.notify.instanceAction(ctx, rc, inst, "reboot", "reboot", "error", err, nil)
					setStates(inst, "active", nil, powerRunning)
					return l.save(ctx, rc, inst, nil)
				}
				setStates(inst, "error", nil, -1)
				if serr := l.save(ctx, rc, inst, nil); serr != nil {
					zerolog.Ctx(ctx).Error().Err(serr).Msg("setting the instance to ERROR failed")
				}
				return err
			}
			setStates(inst, "active", nil, powerRunning)
			if err := l.save(ctx, rc, inst, nil); err != nil {
				return err
			}
			l.notify.instanceAction(ctx, rc, inst, "reboot", "reboot", "end", nil, nil)
			return nil
		})
}

// TerminateInstance is terminate_instance: the VM and its files are
// removed, the instance is marked DELETED and destroyed through
// conductor, and its placement allocations are deleted.
func (l *lifecycle) TerminateInstance(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_terminate_instance", method: "terminate_instance", revertsTaskState: true},
		func(ctx context.Context, inst *ovo.Object) error { return l.deleteInstance(ctx, req.Context, inst) })
}

// deleteInstance is nova's _delete_instance, for terminate_instance and
// the reclaim of soft-deleted instances: notifications, the VM destroyed,
// the network released, the instance DELETED and destroyed, its
// allocations and scheduler record dropped.
func (l *lifecycle) deleteInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object) error {
	uuid := inst.StringOrEmpty("uuid")
	l.notify.instanceAction(ctx, rc, inst, "delete", "delete", "start", nil, nil)
	l.notify.instanceAction(ctx, rc, inst, "shutdown", "shutdown", "start", nil, nil)
	err := l.withVM(ctx, inst, func(vm vcenter.Ref) error { return l.hv.Destroy(ctx, vm) })
	if err != nil && !isRemote(err, "InstanceNotFound") {
		return err
	}
	// _try_deallocate_network: the ports deleted or unbound.
	if err := l.deallocateForInstance(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to deallocate network for instance.")
		l.errorOut(ctx, rc, inst)
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "shutdown", "shutdown", "end", nil, nil)
	setStates(inst, "deleted", nil, powerNoState)
	inst.SetDateTime("terminated_at", time.Now().UTC())
	if err := l.save(ctx, rc, inst, nil); err != nil {
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
	if _, err := l.cond.ObjectAction(ctx, rc, inst, "destroy", nil, nil); err != nil {
		return err
	}
	l.notify.instanceAction(ctx, rc, inst, "delete", "delete", "end", nil, nil)
	return nil
}

// revertTask is reverts_task_state: task_state back to None after a
// failure.
func (l *lifecycle) revertTask(ctx context.Context, rc rpc.Context, inst *ovo.Object) {
	inst.SetNull("task_state")
	if err := l.save(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("reverting the task state failed")
	}
}
