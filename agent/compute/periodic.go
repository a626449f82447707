package compute

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// nova-compute's periodic tasks that a user can see, at nova's intervals:
//
//   - _run_image_cache_manager_pass with the VMware driver's imagecache.py:
//     the cached images no instance of this host uses get a timestamp
//     folder, and are removed once unused for long enough;
//   - _reclaim_queued_deletes: soft-deleted instances are deleted after
//     reclaim_instance_interval;
//   - _cleanup_running_deleted_instances: VMs of instances nova has
//     deleted are reaped (or logged, or powered off);
//   - _poll_unconfirmed_resizes: resizes left unconfirmed for
//     resize_confirm_window are confirmed as the compute API does;
//   - _instance_usage_audit: task_log rows and compute.instance.exists
//     notifications for the last audit period.
//
// nova runs them in one thread; here each has its own loop, owned by the
// Manager's Run like the other loops. oslo.service gives a task without an
// interval of its own (or with 0) its DEFAULT_INTERVAL, 60 s
// (PeriodicConfig.Interval), and skips one whose interval is negative.

// The running_deleted_instance_action values.
const (
	RunningDeletedReap     = "reap"
	RunningDeletedLog      = "log"
	RunningDeletedShutdown = "shutdown"
	RunningDeletedNoop     = "noop"
)

// PeriodicConfig holds nova.conf's settings of the periodic tasks. The
// zero value runs none of the tasks that nova runs only when configured
// (reclaim, resize confirmation, usage audit) and no image ageing; see
// DefaultPeriodicConfig for nova's defaults.
type PeriodicConfig struct {
	// Interval is oslo.service's DEFAULT_INTERVAL: the period of the tasks
	// without one of their own, and of those configured with 0 (default 60 s).
	Interval time.Duration
	// ImageCacheManagerInterval is [image_cache] manager_interval: 0 means
	// Interval, negative turns the ageing off.
	ImageCacheManagerInterval time.Duration
	// RemoveUnusedBaseImages is [image_cache] remove_unused_base_images.
	RemoveUnusedBaseImages bool
	// RemoveUnusedOriginalMinimumAge is [image_cache]
	// remove_unused_original_minimum_age_seconds.
	RemoveUnusedOriginalMinimumAge time.Duration
	// ReclaimInstanceInterval is reclaim_instance_interval; <= 0 is off.
	ReclaimInstanceInterval time.Duration
	// RunningDeletedInstanceAction is running_deleted_instance_action:
	// reap, log, shutdown or noop ("" is noop).
	RunningDeletedInstanceAction string
	// RunningDeletedInstancePollInterval is
	// running_deleted_instance_poll_interval: 0 means Interval, negative
	// turns the task off.
	RunningDeletedInstancePollInterval time.Duration
	// RunningDeletedInstanceTimeout is running_deleted_instance_timeout.
	RunningDeletedInstanceTimeout time.Duration
	// ResizeConfirmWindow is resize_confirm_window; 0 is off.
	ResizeConfirmWindow time.Duration
	// InstanceUsageAudit is instance_usage_audit.
	InstanceUsageAudit bool
	// InstanceUsageAuditPeriod is instance_usage_audit_period ("" is month).
	InstanceUsageAuditPeriod string
}

// DefaultPeriodicConfig returns nova Zed's defaults.
func DefaultPeriodicConfig() PeriodicConfig {
	return PeriodicConfig{
		Interval:                           60 * time.Second,
		ImageCacheManagerInterval:          2400 * time.Second,
		RemoveUnusedBaseImages:             true,
		RemoveUnusedOriginalMinimumAge:     86400 * time.Second,
		RunningDeletedInstanceAction:       RunningDeletedReap,
		RunningDeletedInstancePollInterval: 1800 * time.Second,
		InstanceUsageAuditPeriod:           "month",
	}
}

// spacing is oslo.service's: 0 means the default interval, negative off
// (returned as 0).
func (c PeriodicConfig) spacing(d time.Duration) time.Duration {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return c.interval()
	}
	return d
}

func (c PeriodicConfig) interval() time.Duration {
	if c.Interval <= 0 {
		return 60 * time.Second
	}
	return c.Interval
}

// periodic runs the tasks of one Manager.
type periodic struct {
	cfg  PeriodicConfig
	l    *lifecycle
	rt   *resourceTracker
	host string
	log  zerolog.Logger
	now  func() time.Time // UTC; time.Now in the agent
}

// firstReapDelay is when the check for VMs of deleted instances first
// runs (nova runs it at once, run_immediately): the VM watcher has
// reported the VMs by then.
const firstReapDelay = 10 * time.Second

// startPeriodicTasks starts the enabled tasks' loops through goLoop, which
// owns them (Run waits for them).
func (m *Manager) startPeriodicTasks(ctx context.Context, goLoop func(func())) {
	p := &periodic{cfg: m.cfg.Periodic, l: m.life, rt: m.rt, host: m.cfg.Host,
		log: m.log.With().Str("component", "periodic").Logger(), now: func() time.Time { return time.Now().UTC() }}
	c := p.cfg
	if d := c.spacing(c.ImageCacheManagerInterval); d > 0 && c.RemoveUnusedBaseImages {
		goLoop(func() { every(ctx, d, false, func() { p.run(ctx, "_run_image_cache_manager_pass", p.imageCachePass) }) })
	}
	// The tasks nova runs at its default interval and which return at
	// once when not configured are started only when configured.
	if c.ReclaimInstanceInterval > 0 {
		goLoop(func() {
			every(ctx, c.interval(), false, func() { p.run(ctx, "_reclaim_queued_deletes", p.reclaimQueuedDeletes) })
		})
	}
	if d := c.spacing(c.RunningDeletedInstancePollInterval); d > 0 && c.RunningDeletedInstanceAction != "" && c.RunningDeletedInstanceAction != RunningDeletedNoop {
		goLoop(func() {
			sleep(ctx, min(firstReapDelay, d))
			if ctx.Err() != nil {
				return
			}
			every(ctx, d, true, func() { p.run(ctx, "_cleanup_running_deleted_instances", p.cleanupRunningDeletedInstances) })
		})
	}
	if c.ResizeConfirmWindow > 0 {
		goLoop(func() {
			every(ctx, c.interval(), false, func() { p.run(ctx, "_poll_unconfirmed_resizes", p.pollUnconfirmedResizes) })
		})
	}
	if c.InstanceUsageAudit {
		goLoop(func() {
			every(ctx, c.interval(), false, func() { p.run(ctx, "_instance_usage_audit", p.instanceUsageAudit) })
		})
	}
}

// run runs one pass of a task with a fresh admin context, as oslo's
// run_periodic_tasks does: a failure is logged and the next pass comes.
func (p *periodic) run(ctx context.Context, name string, task func(ctx context.Context, rc rpc.Context) error) {
	log := p.log.With().Str("task", name).Logger()
	ctx = log.WithContext(ctx)
	log.Debug().Msg("Running periodic task")
	if err := task(ctx, AdminContext()); err != nil && ctx.Err() == nil {
		log.Error().Err(err).Msg("Error during periodic task")
	}
}

// instances returns the items of an InstanceList (or of any list) a
// class action answered.
func listItems(v any) []*ovo.Object {
	list, ok := v.(*ovo.Object)
	if !ok || list == nil {
		return nil
	}
	items, _ := list.Items()
	return items
}

// deletedOldEnough is nova's _deleted_old_enough: no deleted_at, or one
// older than timeout.
func (p *periodic) deletedOldEnough(inst *ovo.Object, timeout time.Duration) bool {
	t, err := inst.DateTime("deleted_at")
	if err != nil {
		return true
	}
	return p.now().Sub(t) > timeout
}

// ---- _run_image_cache_manager_pass ----------------------------------------

// tsPrefix and tsFormat are the VMware driver's TIMESTAMP_PREFIX and
// TIMESTAMP_FORMAT (%Y-%m-%d-%H-%M-%S).
const (
	tsPrefix = "ts-"
	tsFormat = "2006-01-02-15-04-05"
)

// cacheFolderOf is what the ageing needs of the image cache: its folder
// name on every datastore (*vcenter.ImageCache has it).
type cacheFolderOf interface {
	Folder() string
}

// usedImages is _list_running_instances' used_images: the images
// (image_ref, kernel_id, ramdisk_id) of this host's instances that are
// not deleted, soft-deleted ones included.
func (p *periodic) usedImages(ctx context.Context, rc rpc.Context) (map[string]bool, error) {
	v, err := p.l.cond.ClassAction(ctx, rc, "InstanceList", "get_by_filters",
		[]any{map[string]any{"deleted": false, "soft_deleted": true, "host": []string{p.host}}},
		map[string]any{"expected_attrs": []string{}, "use_slave": true})
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, inst := range listItems(v) {
		for _, k := range []string{"image_ref", "kernel_id", "ramdisk_id"} {
			if id := inst.StringOrEmpty(k); id != "" {
				used[id] = true
			}
		}
	}
	return used, nil
}

// imageCachePass is _run_image_cache_manager_pass with the VMware driver's
// manage_image_cache: on every usable datastore of the served clusters,
// each image in the cache folder that no instance of this host uses gets a
// ts-<time> folder; one whose timestamp is older than
// remove_unused_original_minimum_age_seconds is removed; an image in use
// loses its timestamp. The image cache forgets what it removes.
func (p *periodic) imageCachePass(ctx context.Context, rc rpc.Context) error {
	log := zerolog.Ctx(ctx)
	if !p.cfg.RemoveUnusedBaseImages {
		log.Debug().Msg("Image aging disabled. Aging will not be done.")
		return nil
	}
	cf, ok := p.l.cache.(cacheFolderOf)
	store := cacheStoreOf(p.l.hv)
	if p.l.cache == nil || !ok || store == nil {
		log.Debug().Msg("no image cache on the datastores: nothing to age")
		return nil
	}
	used, err := p.usedImages(ctx, rc)
	if err != nil {
		return err
	}
	clusters, err := p.servedClusters(ctx)
	if err != nil {
		return err
	}
	a := &cacheAger{p: p, rc: rc, store: store, cache: p.l.cache, folder: cf.Folder(), used: used}
	seen := map[string]bool{}
	var errs []error
	for _, c := range clusters {
		for _, ds := range c.UsableDatastores(p.rt.dsRegex) {
			key := c.Datacenter + "\x00" + ds.Name
			if seen[key] {
				continue
			}
			seen[key] = true
			if err := a.ageDatastore(ctx, c.Datacenter, ds); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cacheAger is one ageing pass.
type cacheAger struct {
	p      *periodic
	rc     rpc.Context
	store  cacheStore
	cache  ImageCache
	folder string
	used   map[string]bool
	// rechecked: the used images were read again before the first
	// removal of this pass.
	rechecked bool
}

// ageDatastore is imagecache.update for one datastore: _age_cached_images.
func (a *cacheAger) ageDatastore(ctx context.Context, dc string, ds vcenter.Datastore) error {
	log := zerolog.Ctx(ctx).With().Str("datastore", ds.Name).Logger()
	base := vcenter.DatastorePath{Datastore: ds.Name, Path: a.folder}
	originals, err := a.store.SubFolders(ctx, ds, base)
	if err != nil {
		return err
	}
	var errs []error
	for _, image := range originals {
		path := base.Join(image)
		ts, err := a.timestamp(ctx, ds, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if a.used[image] {
			// Image is used - no longer need timestamp folder.
			if ts != "" {
				log.Debug().Str("path", path.Join(ts).String()).Msg("Timestamp path exists. Deleting!")
				a.folderDelete(ctx, dc, path.Join(ts))
			}
			continue
		}
		if ts == "" {
			tsPath := path.Join(tsPrefix + a.p.now().Format(tsFormat))
			if err := a.store.MakeDirectory(ctx, dc, tsPath); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info().Str("image", image).Msgf("Image %s is no longer used by this node. Pending deletion!", image)
			continue
		}
		at, err := time.Parse(tsFormat, strings.TrimPrefix(ts, tsPrefix))
		if err != nil {
			log.Warn().Str("path", path.Join(ts).String()).Msg("timestamp folder with a malformed time; leaving the image")
			continue
		}
		if a.p.now().Sub(at) <= a.p.cfg.RemoveUnusedOriginalMinimumAge {
			continue
		}
		if a.nowUsed(ctx, image) {
			continue
		}
		log.Info().Str("image", image).Msgf("Image %s is no longer used. Deleting!", path)
		// Forgotten before and after: a build between the two finds the
		// image gone and fetches it again instead of copying a vanishing
		// file.
		a.cache.Forget(dc, ds.Name, image)
		a.folderDelete(ctx, dc, path)
		a.cache.Forget(dc, ds.Name, image)
	}
	return errors.Join(errs...)
}

// nowUsed reads the used images once more before the pass removes its
// first image, so that an instance built since the pass began keeps its
// image (nova holds a lock across spawn's enlist_image instead).
func (a *cacheAger) nowUsed(ctx context.Context, image string) bool {
	if !a.rechecked {
		a.rechecked = true
		used, err := a.p.usedImages(ctx, a.rc)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("reading the images in use again failed; removing nothing this pass")
			a.used = nil
			return true
		}
		a.used = used
	}
	return a.used == nil || a.used[image]
}

// timestamp is _get_timestamp: the ts- folder of an image, if any.
func (a *cacheAger) timestamp(ctx context.Context, ds vcenter.Datastore, path vcenter.DatastorePath) (string, error) {
	files, err := a.store.SubFolders(ctx, ds, path)
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if strings.HasPrefix(f, tsPrefix) {
			return f, nil
		}
	}
	return "", nil
}

// folderDelete is _folder_delete: failures are logged, not raised.
func (a *cacheAger) folderDelete(ctx context.Context, dc string, p vcenter.DatastorePath) {
	if err := a.store.DeleteDatastoreFile(ctx, dc, p); err != nil && !errors.Is(err, vcenter.ErrNotFound) {
		zerolog.Ctx(ctx).Warn().Err(err).Msgf("Unable to delete %s.", p)
	}
}

// ---- _reclaim_queued_deletes ----------------------------------------------

// instanceDefaultFields is nova's INSTANCE_DEFAULT_FIELDS.
var instanceDefaultFields = []string{"metadata", "system_metadata", "info_cache", "security_groups"} //nolint:gochecknoglobals // a table

// reclaimQueuedDeletes is _reclaim_queued_deletes: this host's
// SOFT_DELETED instances deleted longer than reclaim_instance_interval
// ago are deleted as nova's _delete_instance does.
func (p *periodic) reclaimQueuedDeletes(ctx context.Context, rc rpc.Context) error {
	interval := p.cfg.ReclaimInstanceInterval
	if interval <= 0 {
		return nil
	}
	v, err := p.l.cond.ClassAction(ctx, rc, "InstanceList", "get_by_filters",
		[]any{map[string]any{"vm_state": "soft-delete", "task_state": nil, "host": p.host}},
		map[string]any{"expected_attrs": instanceDefaultFields, "use_slave": true})
	if err != nil {
		return err
	}
	for _, inst := range listItems(v) {
		if !p.deletedOldEnough(inst, interval) {
			continue
		}
		log := zerolog.Ctx(ctx).With().Str("instance_uuid", inst.StringOrEmpty("uuid")).Logger()
		log.Info().Msg("Reclaiming deleted instance")
		if err := p.l.reclaimInstance(log.WithContext(ctx), rc, inst); err != nil {
			log.Warn().Err(err).Msgf("Periodic reclaim failed to delete instance: %v", err)
		}
	}
	return nil
}

// reclaimInstance is nova's _delete_instance for a reclaim, the body of
// TerminateInstance (keep the two alike): the delete and shutdown
// notifications, the VM destroyed, the network deallocated, the instance
// DELETED and destroyed, its allocations and the scheduler's record of it
// dropped. Unlike terminate_instance it records no instance action event
// (nova's periodic task calls _delete_instance directly).
func (l *lifecycle) reclaimInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object) error {
	unlock := l.locks.lock(inst.StringOrEmpty("uuid"))
	defer unlock()
	l.loadFlavor(ctx, rc, inst)
	return l.deleteInstance(ctx, rc, inst)
}

// ---- _cleanup_running_deleted_instances -----------------------------------

// servedClusters returns the served clusters as the resource tracker
// read them last (at most update_resources_interval ago), or reads them
// when it has not yet.
func (p *periodic) servedClusters(ctx context.Context) ([]vcenter.Cluster, error) {
	p.rt.servedMu.Lock()
	served := p.rt.served
	p.rt.servedMu.Unlock()
	if len(served) > 0 {
		return served, nil
	}
	return p.rt.vc.Clusters(ctx, p.rt.clusters...)
}

// driverInstanceUUIDs is the VMware driver's list_instance_uuids: the
// agent's VMs on the hosts of the served clusters, from the VM watcher's
// index.
func (p *periodic) driverInstanceUUIDs(ctx context.Context) ([]string, error) {
	x := &p.l.vms
	x.mu.Lock()
	n := len(x.vms)
	x.mu.Unlock()
	if n == 0 {
		return nil, nil
	}
	clusters, err := p.servedClusters(ctx)
	if err != nil {
		return nil, err
	}
	hosts := map[vcenter.Ref]bool{}
	for _, c := range clusters {
		for _, h := range c.Hosts {
			hosts[h.Ref] = true
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	var uuids []string
	for uuid, st := range x.vms {
		if hosts[st.Host] {
			uuids = append(uuids, uuid)
		}
	}
	slices.Sort(uuids)
	return uuids, nil
}

// cleanupRunningDeletedInstances is _cleanup_running_deleted_instances:
// the instances of the VMs on this host's clusters that nova has deleted
// (not soft-deleted) longer than running_deleted_instance_timeout ago are
// logged, powered off (shutdown) or destroyed (reap).
func (p *periodic) cleanupRunningDeletedInstances(ctx context.Context, rc rpc.Context) error {
	action := p.cfg.RunningDeletedInstanceAction
	if action == "" || action == RunningDeletedNoop {
		return nil
	}
	uuids, err := p.driverInstanceUUIDs(ctx)
	if err != nil || len(uuids) == 0 {
		return err
	}
	rc = rc.Clone()
	if err := rc.Set("read_deleted", "yes"); err != nil {
		return err
	}
	v, err := p.l.cond.ClassAction(ctx, rc, "InstanceList", "get_by_filters",
		[]any{map[string]any{"deleted": true, "soft_deleted": false, "uuid": uuids}},
		map[string]any{"use_slave": true})
	if err != nil {
		return err
	}
	for _, inst := range listItems(v) {
		if !p.deletedOldEnough(inst, p.cfg.RunningDeletedInstanceTimeout) {
			continue
		}
		uuid := inst.StringOrEmpty("uuid")
		log := zerolog.Ctx(ctx).With().Str("instance_uuid", uuid).Logger()
		name := fmt.Sprint(instanceName(inst))
		switch action {
		case RunningDeletedLog:
			log.Warn().Msgf("Detected instance with name label '%s' which is marked as DELETED but still present on host.", name)
		case RunningDeletedShutdown:
			log.Info().Msgf("Powering off instance with name label '%s' which is marked as DELETED but still present on host.", name)
			if err := p.l.withVM(ctx, inst, func(vm vcenter.Ref) error { return p.l.hv.PowerOff(ctx, vm) }); err != nil {
				log.Warn().Err(err).Msg("Failed to power off instance")
			}
		case RunningDeletedReap:
			log.Info().Msgf("Destroying instance with name label '%s' which is marked as DELETED but still present on host.", name)
			if err := p.reap(ctx, rc, inst); err != nil {
				log.Warn().Err(err).Msgf("Periodic cleanup failed to delete instance: %v", err)
			}
		}
	}
	return nil
}

// reap is _shutdown_instance(notify=False) for a deleted instance: the
// VMware driver's destroy (power off, unregister, delete the files), then
// the network deallocated (a failure is only logged: the instance is
// deleted already, there is no ERROR to set).
func (p *periodic) reap(ctx context.Context, rc rpc.Context, inst *ovo.Object) error {
	unlock := p.l.locks.lock(inst.StringOrEmpty("uuid"))
	defer unlock()
	err := p.l.withVM(ctx, inst, func(vm vcenter.Ref) error { return p.l.hv.Destroy(ctx, vm) })
	if err != nil && !isRemote(err, "InstanceNotFound") {
		return err
	}
	if err := p.l.deallocateForInstance(ctx, rc, inst, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to deallocate network for instance.")
	}
	return nil
}

// ---- _poll_unconfirmed_resizes --------------------------------------------

// serviceDownTime is nova's service_down_time default: a service whose
// last heartbeat is older is down.
const serviceDownTime = 60 * time.Second

// pollUnconfirmedResizes is _poll_unconfirmed_resizes: the migrations to
// this host finished longer than resize_confirm_window ago are confirmed
// through the compute API's confirm_resize, or set to error when their
// instance cannot be confirmed.
func (p *periodic) pollUnconfirmedResizes(ctx context.Context, rc rpc.Context) error {
	window := p.cfg.ResizeConfirmWindow
	if window <= 0 {
		return nil
	}
	v, err := p.l.cond.ClassAction(ctx, rc, "MigrationList", "get_unconfirmed_by_dest_compute",
		[]any{int64(window / time.Second), p.host}, map[string]any{"use_slave": true})
	if err != nil {
		return err
	}
	migs := listItems(v)
	log := zerolog.Ctx(ctx)
	if len(migs) > 0 {
		log.Info().Msgf("Found %d unconfirmed migrations older than %d seconds", len(migs), int64(window/time.Second))
	}
	setError := func(mig *ovo.Object, reason string) {
		log.Warn().Msgf("Setting migration %d to error: %s", intOr(mig, "id", 0), reason)
		if err := p.l.setMigrationStatus(ctx, rc, mig, "error"); err != nil {
			log.Warn().Err(err).Msg("saving the migration failed")
		}
	}
	for _, mig := range migs {
		uuid := mig.StringOrEmpty("instance_uuid")
		log.Info().Msgf("Automatically confirming migration %d for instance %s", intOr(mig, "id", 0), uuid)
		res, err := p.l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{uuid},
			map[string]any{"expected_attrs": []string{"metadata", "system_metadata"}, "use_slave": true})
		if isRemote(err, "InstanceNotFound") {
			setError(mig, fmt.Sprintf("Instance %s not found", uuid))
			continue
		}
		inst, ok := res.(*ovo.Object)
		if err != nil || !ok {
			log.Warn().Err(err).Str("instance_uuid", uuid).Msg("reading the instance failed")
			continue
		}
		vmState, task := inst.StringOrEmpty("vm_state"), inst.StringOrEmpty("task_state")
		switch {
		case vmState == "error":
			setError(mig, "In ERROR state")
			continue
		case task == "deleting" || task == "soft-deleting":
			log.Debug().Str("instance_uuid", uuid).Msg("Instance being deleted or soft deleted during resize confirmation. Skipping.")
			continue
		case task == "resize_finish":
			log.Debug().Str("instance_uuid", uuid).Msg("Instance still resizing during resize confirmation. Skipping.")
			continue
		case vmState != "resized" || !inst.IsNull("task_state"):
			taskName := "None"
			if !inst.IsNull("task_state") {
				taskName = task
			}
			setError(mig, fmt.Sprintf("In states %s/%s, not RESIZED/None", vmState, taskName))
			continue
		}
		if err := p.confirmResize(ctx, rc, inst, mig); err != nil {
			log.Info().Str("instance_uuid", uuid).Msgf("Error auto-confirming resize: %v. Will retry later.", err)
		}
	}
	return nil
}

// confirmResize is the compute API's confirm_resize with the migration
// given (the periodic task's call): the source compute service must be up;
// the migration becomes "confirming", the confirmResize action is
// recorded, and confirm_resize is cast to the source host.
func (p *periodic) confirmResize(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object) error {
	// check_instance_lock lets the periodic task's admin context through,
	// and pollUnconfirmedResizes has checked check_instance_state's
	// RESIZED/None.
	if boolOr(mig, "cross_cell_move", false) {
		return errors.New("cross-cell resizes are not supported by vcagent")
	}
	source := mig.StringOrEmpty("source_compute")
	v, err := p.l.cond.ClassAction(ctx, rc, "Service", "get_by_compute_host", []any{source}, nil)
	if err != nil {
		return err
	}
	svc, _ := v.(*ovo.Object)
	if svc == nil || !p.serviceIsUp(svc) {
		return novaError("ServiceUnavailable", "Service is unavailable at this time.", 500, nil)
	}
	if err := p.l.setMigrationStatus(ctx, rc, mig, "confirming"); err != nil {
		return err
	}
	if _, err := p.l.cond.ClassAction(ctx, rc, "InstanceAction", "action_start", []any{inst.StringOrEmpty("uuid"), "confirmResize"},
		map[string]any{"want_result": false}); err != nil {
		return err
	}
	return p.l.computeAt(source).Cast(ctx, rc, "confirm_resize", map[string]any{"instance": encode(inst), "migration": encode(mig)})
}

// serviceIsUp is the servicegroup DB driver's is_up: not forced down, and
// a heartbeat (last_seen_up, else created_at) within service_down_time.
func (p *periodic) serviceIsUp(svc *ovo.Object) bool {
	if boolOr(svc, "forced_down", false) {
		return false
	}
	last, err := svc.DateTime("last_seen_up")
	if err != nil {
		if last, err = svc.DateTime("created_at"); err != nil {
			return false
		}
	}
	d := p.now().Sub(last)
	return d <= serviceDownTime && d >= -serviceDownTime
}

// ---- _instance_usage_audit ------------------------------------------------

var auditPeriodRe = regexp.MustCompile(`^(hour|month|day|year)(@([0-9]+))?$`)

// ParseAuditPeriod checks an instance_usage_audit_period (nova's regex)
// and returns its unit and offset.
func ParseAuditPeriod(s string) (unit string, offset int, err error) {
	if s == "" {
		s = "month"
	}
	m := auditPeriodRe.FindStringSubmatch(s)
	if m == nil {
		return "", 0, fmt.Errorf("%q is not hour, day, month or year, optionally followed by @offset", s)
	}
	if m[3] != "" {
		if offset, err = strconv.Atoi(m[3]); err != nil {
			return "", 0, fmt.Errorf("%q: bad offset: %w", s, err)
		}
	}
	return m[1], offset, nil
}

// lastCompletedAuditPeriod is nova's utils.last_completed_audit_period:
// the most recently completed period before now (UTC, naive).
func lastCompletedAuditPeriod(period string, now time.Time) (begin, end time.Time, err error) {
	unit, offset, err := ParseAuditPeriod(period)
	if err != nil {
		return begin, end, err
	}
	now = now.UTC()
	date := func(y int, m time.Month, d, h int) time.Time { return time.Date(y, m, d, h, 0, 0, 0, time.UTC) }
	switch unit {
	case "month":
		if offset == 0 {
			offset = 1
		}
		// Python's datetime raises for a day the month lacks; time.Date
		// normalises. Offsets beyond 28 are unusual either way.
		end = date(now.Year(), now.Month(), offset, 0)
		if !end.Before(now) {
			end = date(now.Year(), now.Month()-1, offset, 0)
		}
		begin = date(end.Year(), end.Month()-1, offset, 0)
	case "year":
		if offset == 0 {
			offset = 1
		}
		end = date(now.Year(), time.Month(offset), 1, 0)
		if !end.Before(now) {
			end = date(now.Year()-1, time.Month(offset), 1, 0)
			begin = date(now.Year()-2, time.Month(offset), 1, 0)
		} else {
			begin = date(now.Year()-1, time.Month(offset), 1, 0)
		}
	case "day":
		end = date(now.Year(), now.Month(), now.Day(), offset)
		if !end.Before(now) {
			end = end.AddDate(0, 0, -1)
		}
		begin = end.AddDate(0, 0, -1)
	default: // hour
		end = time.Date(now.Year(), now.Month(), now.Day(), now.Hour(), offset, 0, 0, time.UTC)
		if !end.Before(now) {
			end = end.Add(-time.Hour)
		}
		begin = end.Add(-time.Hour)
	}
	return begin, end, nil
}

// strtime is nova's utils.strtime (serialize_args' datetime form).
func strtime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000") }

// isotime is nova's utils.isotime of a naive UTC datetime.
func isotime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// pyStr is str() of a naive datetime: "2006-01-02 15:04:05".
func pyStr(t time.Time) string {
	if t.Nanosecond() != 0 {
		return t.UTC().Format("2006-01-02 15:04:05.000000")
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

const usageAuditTask = "instance_usage_audit"

// instanceUsageAudit is _instance_usage_audit: once per audit period and
// host (a task_log row tells it was done), an exists notification for
// every instance active on this host during the last completed period,
// between the task_log row's begin_task and end_task.
func (p *periodic) instanceUsageAudit(ctx context.Context, rc rpc.Context) error {
	if !p.cfg.InstanceUsageAudit {
		return nil
	}
	begin, end, err := lastCompletedAuditPeriod(p.cfg.InstanceUsageAuditPeriod, p.now())
	if err != nil {
		return err
	}
	done, err := p.l.cond.ClassAction(ctx, rc, "TaskLog", "get", []any{usageAuditTask, strtime(begin), strtime(end), p.host}, nil)
	if err != nil {
		return err
	}
	if o, ok := done.(*ovo.Object); ok && o != nil {
		return nil
	}
	v, err := p.l.cond.ClassAction(ctx, rc, "InstanceList", "_get_active_by_window_joined",
		[]any{isotime(begin), isotime(end), nil, p.host, []string{"system_metadata", "info_cache", "metadata", "flavor"}},
		map[string]any{"use_slave": true, "limit": nil, "marker": nil})
	if err != nil {
		return err
	}
	instances := listItems(v)
	zerolog.Ctx(ctx).Info().Msgf("Running instance usage audit for host %s from %s to %s. %d instances.", p.host, pyStr(begin), pyStr(end), len(instances))
	start := time.Now()
	tl := ovo.New("TaskLog", p.l.cond.version("TaskLog"))
	tl.SetString("task_name", usageAuditTask)
	tl.SetDateTime("period_beginning", begin)
	tl.SetDateTime("period_ending", end)
	tl.SetString("host", p.host)
	tl.SetInt("task_items", int64(len(instances)))
	tl.SetString("message", "Instance usage audit started...")
	if _, err := p.l.cond.ObjectAction(ctx, rc, tl, "begin_task", nil, nil); err != nil {
		return err
	}
	for _, inst := range instances {
		p.l.notify.usageExists(ctx, rc, inst, begin, end)
	}
	tl.SetInt("errors", 0)
	tl.SetString("message", fmt.Sprintf("Instance usage audit ran for host %s, %d instances in %g seconds.", p.host, len(instances), time.Since(start).Seconds()))
	_, err = p.l.cond.ObjectAction(ctx, rc, tl, "end_task", nil, nil)
	return err
}

// usageExists is compute_utils.notify_usage_exists for the previous audit
// period: the legacy compute.instance.exists (info_from_instance with the
// audit period) and the versioned instance.exists (InstanceExistsPayload).
func (n *notifier) usageExists(ctx context.Context, rc rpc.Context, inst *ovo.Object, begin, end time.Time) {
	if n == nil {
		return
	}
	if n.legacy != nil {
		p := n.legacyPayload(inst, map[string]any{
			"audit_period_beginning": pyStr(begin), "audit_period_ending": pyStr(end),
			"image_meta": imageMetaFromSystemMetadata(inst),
		})
		n.send(ctx, n.legacy, rc, rpc.PriorityInfo, "compute.instance.exists", p)
	}
	if n.versioned != nil {
		p := n.instancePayload(rc, inst)
		p["audit_period"] = versionedObject("AuditPeriodPayload", "1.0", map[string]any{
			"audit_period_beginning": begin.UTC().Format("2006-01-02T15:04:05Z"),
			"audit_period_ending":    end.UTC().Format("2006-01-02T15:04:05Z"),
		})
		n.send(ctx, n.versioned, rc, rpc.PriorityInfo, "instance.exists", versionedObject("InstanceExistsPayload", "2.0", p))
	}
}
