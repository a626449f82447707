package compute

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// Config configures the compute role.
type Config struct {
	// Host is nova's [DEFAULT] host: the service's host name.
	Host string
	// HostIP is [DEFAULT] my_ip, reported as the nodes' host_ip.
	HostIP string
	// VCenterHost is [vmware] host_ip, the vCenter's address: the VMware
	// driver's volume connector gives it as its ip and host.
	VCenterHost string
	// Exchange is nova's control exchange.
	Exchange string
	// Clusters limits the served clusters by name; empty serves every one.
	Clusters []string
	// DatastoreRegex selects usable datastores; nil allows every one.
	DatastoreRegex *regexp.Regexp
	// ReportInterval is [DEFAULT] report_interval (service heartbeats).
	ReportInterval time.Duration
	// ResourceInterval is update_resources_interval (0 in nova means 60 s).
	ResourceInterval time.Duration
	// SchedulerSyncInterval is scheduler_instance_sync_interval.
	SchedulerSyncInterval time.Duration
	// RPCTimeout is rpc_response_timeout for calls to conductor.
	RPCTimeout time.Duration
	// DrainTimeout bounds in-flight requests at shutdown.
	DrainTimeout time.Duration
	// Resources holds the allocation ratios and reserved amounts.
	Resources cloud.ResourceConfig
	// PowerSyncReconcile is how often the VM watcher re-reads every VM
	// (vCenter's change stream can miss events).
	PowerSyncReconcile time.Duration
	// RPCObserver, if set, is told about every compute RPC request.
	RPCObserver rpc.ServerObserver
	// MaxConcurrentBuilds is nova's max_concurrent_builds: builds beyond
	// it wait for one to finish. 0 means unlimited; negative means nova's
	// default, 10.
	MaxConcurrentBuilds int
	// HealInstanceInfoCacheInterval is [DEFAULT]
	// heal_instance_info_cache_interval: how often one instance's network
	// info cache is rebuilt from neutron; 0 or less turns it off.
	HealInstanceInfoCacheInterval time.Duration
	// VIFPluggingTimeout, when positive, makes builds wait that long for
	// neutron's network-vif-plugged events (nova's [DEFAULT]
	// vif_plugging_timeout, which the VMware driver ignores: 0 keeps its
	// behaviour); VIFPluggingIsFatal fails the build on a timeout.
	VIFPluggingTimeout time.Duration
	VIFPluggingIsFatal bool
	// Notifications selects the notifications sent, as nova.conf does.
	Notifications NotificationConfig
	// Periodic configures nova-compute's periodic tasks (periodic.go).
	Periodic PeriodicConfig
}

func (c *Config) defaults() {
	if c.Exchange == "" {
		c.Exchange = "nova"
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = 10 * time.Second
	}
	if c.ResourceInterval <= 0 {
		c.ResourceInterval = 60 * time.Second
	}
	if c.SchedulerSyncInterval <= 0 {
		c.SchedulerSyncInterval = 120 * time.Second
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 60 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 60 * time.Second
	}
	if c.MaxConcurrentBuilds < 0 {
		c.MaxConcurrentBuilds = 10
	}
	if c.PowerSyncReconcile <= 0 {
		c.PowerSyncReconcile = 60 * time.Second
	}
}

// Manager is the nova-compute role: it registers the service, keeps a
// compute node per cluster in nova and placement, heartbeats, tells the
// scheduler which instances it has, and serves compute RPC.
type Manager struct {
	cfg       Config
	tr        *rpc.Transport
	cond      *Conductor
	rt        *resourceTracker
	life      *lifecycle
	vols      *volumes
	scheduler rpc.Client
	log       zerolog.Logger
	// OnConsuming reports whether the compute RPC server consumes.
	onConsuming func(bool)
}

// Deps are the compute role's collaborators. Images and Cache may be nil:
// then builds fail with a clear error.
type Deps struct {
	Hypervisor Hypervisor
	Placement  Placement
	Images     Images
	Cache      ImageCache
	// Network is neutron; nil serves only builds without networks.
	Network Neutron
	// Volumes is cinder; nil: volume attachments fail (volumes.go).
	Volumes VolumeAPI
}

// NewManager builds the compute role.
func NewManager(cfg Config, tr *rpc.Transport, deps Deps, onConsuming func(bool), log zerolog.Logger) (*Manager, error) {
	vc, placement := deps.Hypervisor, deps.Placement
	cfg.defaults()
	if cfg.Host == "" {
		return nil, fmt.Errorf("compute: host name is empty")
	}
	if err := cfg.Notifications.Validate(); err != nil {
		return nil, fmt.Errorf("compute: %w", err)
	}
	log = log.With().Str("role", "compute").Logger()
	cond := NewConductor(tr, cfg.Exchange, cfg.RPCTimeout, log)
	sched := tr.NewClient(rpc.Target{Exchange: cfg.Exchange, Topic: "scheduler", Fanout: true, Version: "4.2"})
	// conductor's ComputeTaskAPI; 1.19 carries host_lists (Zed sends 1.19).
	tasks := tr.NewClient(rpc.Target{Exchange: cfg.Exchange, Topic: "conductor", Namespace: "compute_task", Version: "1.19"})
	m := &Manager{
		cfg:  cfg,
		tr:   tr,
		cond: cond,
		rt: &resourceTracker{
			cond: cond, vc: vc, placement: placement, host: cfg.Host, hostIP: cfg.HostIP,
			clusters: cfg.Clusters, dsRegex: cfg.DatastoreRegex, res: cfg.Resources, log: log,
			nodes: map[string]*ovo.Object{},
		},
		life: &lifecycle{cond: cond, hv: deps.Hypervisor, images: deps.Images, cache: deps.Cache, pl: placement,
			sched: sched, tasks: tasks, host: cfg.Host, ds: cfg.DatastoreRegex, log: log,
			notify:     newNotifier(tr, cfg.Exchange, cfg.Host, cfg.Notifications),
			builds:     newBuildLimit(cfg.MaxConcurrentBuilds),
			vifTimeout: cfg.VIFPluggingTimeout, vifFatal: cfg.VIFPluggingIsFatal},
		scheduler:   sched,
		log:         log,
		onConsuming: onConsuming,
	}
	m.rt.vmsOn = m.life.vms.countOn
	m.vols = &volumes{lifecycle: m.life, api: deps.Volumes, connectorIP: cfg.VCenterHost}
	m.life.vols = m.vols
	if deps.Network != nil {
		m.life.net = &networkAPI{client: deps.Network}
	}
	return m, nil
}

// InstancesPerCluster returns how many of the agent's VMs run on each
// served cluster, for metrics.
func (m *Manager) InstancesPerCluster() map[string]float64 {
	out := map[string]float64{}
	for k, v := range m.rt.instancesPerCluster() {
		out[k] = float64(v)
	}
	return out
}

// BuildsQueued returns how many builds wait for a slot
// (max_concurrent_builds), for metrics.
func (m *Manager) BuildsQueued() float64 { return float64(m.life.builds.queued()) }

// BuildsRunning returns how many builds hold a slot, for metrics.
func (m *Manager) BuildsRunning() float64 { return float64(m.life.builds.running()) }

// Run starts the role as nova-compute starts, and serves until ctx ends:
// wait for conductor, register the service, report the nodes, serve RPC,
// then heartbeat and refresh periodically. On return every goroutine it
// started has stopped.
func (m *Manager) Run(ctx context.Context) error {
	rc := AdminContext()
	if err := m.cond.WaitUntilReady(ctx, rc); err != nil {
		return err
	}
	svc := &serviceRecord{cond: m.cond, host: m.cfg.Host, rc: rc, log: m.log}
	if err := svc.register(ctx); err != nil {
		return err
	}
	if err := m.rt.update(ctx, rc); err != nil {
		// nova-compute starts anyway and retries at the next period.
		m.log.Error().Err(err).Msg("initial resource update failed")
	}
	srv, err := m.tr.NewServer(rpc.ServerConfig{
		Target: rpc.Target{Exchange: m.cfg.Exchange, Topic: Topic, Server: m.cfg.Host},
		Endpoints: Endpoints(map[string]rpc.Handler{
			"build_and_run_instance":        m.life.BuildAndRunInstance,
			"stop_instance":                 m.life.StopInstance,
			"start_instance":                m.life.StartInstance,
			"reboot_instance":               m.life.RebootInstance,
			"terminate_instance":            m.vols.TerminateInstance, // volumes.go, around m.life's
			"pause_instance":                m.life.PauseInstance,
			"unpause_instance":              m.life.UnpauseInstance,
			"set_admin_password":            m.life.SetAdminPassword,
			"trigger_crash_dump":            m.life.TriggerCrashDump,
			"get_vnc_console":               m.life.GetVNCConsole,
			"get_mks_console":               m.life.GetMKSConsole,
			"get_spice_console":             m.life.GetSpiceConsole,
			"get_rdp_console":               m.life.GetRDPConsole,
			"get_serial_console":            m.life.GetSerialConsole,
			"validate_console_port":         m.life.ValidateConsolePort,
			"get_console_output":            m.life.GetConsoleOutput,
			"get_diagnostics":               m.life.GetDiagnostics,
			"get_instance_diagnostics":      m.life.GetInstanceDiagnostics,
			"external_instance_event":       m.life.ExternalInstanceEvent,
			"inject_network_info":           m.life.InjectNetworkInfo,
			"host_power_action":             m.life.HostPowerAction,
			"host_maintenance_mode":         m.life.HostMaintenanceMode,
			"set_host_enabled":              m.life.SetHostEnabled,
			"get_host_uptime":               m.life.GetHostUptimeNotified,
			"check_instance_shared_storage": m.life.CheckInstanceSharedStorage,
			"cache_images":                  m.life.CacheImages,
			"quiesce_instance":              m.life.driverNotImplemented("quiesce_instance"),
			"unquiesce_instance":            m.life.driverNotImplemented("unquiesce_instance"),
			"volume_snapshot_create":        m.life.driverNotImplemented("volume_snapshot_create"),
			"volume_snapshot_delete":        m.life.driverNotImplemented("volume_snapshot_delete"),
			"live_migration_force_complete": m.life.LiveMigrationForceComplete,
			"live_migration_abort":          m.life.LiveMigrationAbort,
			"soft_delete_instance":          m.life.SoftDeleteInstance,
			"restore_instance":              m.life.RestoreInstance,
			"suspend_instance":              m.life.SuspendInstance,
			"resume_instance":               m.life.ResumeInstance,
			"rescue_instance":               m.life.RescueInstance,
			"unrescue_instance":             m.life.UnrescueInstance,
			"rebuild_instance":              m.life.RebuildInstance,
			"attach_interface":              m.life.AttachInterface,
			"detach_interface":              m.life.DetachInterface,
			"add_fixed_ip_to_instance":      m.life.AddFixedIPToInstance,      // fixedip.go
			"remove_fixed_ip_from_instance": m.life.RemoveFixedIPFromInstance, // fixedip.go

			// volumes (volumes.go)
			"reserve_block_device_name": m.vols.ReserveBlockDeviceName,
			"attach_volume":             m.vols.AttachVolume,
			"detach_volume":             m.vols.DetachVolume,
			"swap_volume":               m.vols.SwapVolume,
			"remove_volume_connection":  m.vols.RemoveVolumeConnection,

			// snapshot and shelve (snapshot.go, shelve.go)
			"snapshot_instance":       m.life.SnapshotInstance,
			"backup_instance":         m.life.BackupInstance, // backup.go
			"shelve_instance":         m.life.ShelveInstance,
			"shelve_offload_instance": m.life.ShelveOffloadInstance,
			"unshelve_instance":       m.life.UnshelveInstance,

			// resize, cold and live migration (resize.go, livemigrate.go)
			"prep_resize":                            m.life.PrepResize,
			"resize_instance":                        m.life.ResizeInstance,
			"finish_resize":                          m.life.FinishResize,
			"confirm_resize":                         m.life.ConfirmResize,
			"revert_resize":                          m.life.RevertResize,
			"finish_revert_resize":                   m.life.FinishRevertResize,
			"check_can_live_migrate_destination":     m.life.CheckCanLiveMigrateDestination,
			"check_can_live_migrate_source":          m.life.CheckCanLiveMigrateSource,
			"pre_live_migration":                     m.life.PreLiveMigration,
			"live_migration":                         m.life.LiveMigration,
			"post_live_migration_at_destination":     m.life.PostLiveMigrationAtDestination,
			"rollback_live_migration_at_destination": m.life.RollbackLiveMigrationAtDestination,
			"drop_move_claim_at_destination":         m.life.DropMoveClaimAtDestination,

			// cross-cell resize (crosscell.go)
			"prep_snapshot_based_resize_at_dest":            m.life.PrepSnapshotBasedResizeAtDest,
			"prep_snapshot_based_resize_at_source":          m.life.PrepSnapshotBasedResizeAtSource,
			"finish_snapshot_based_resize_at_dest":          m.life.FinishSnapshotBasedResizeAtDest,
			"confirm_snapshot_based_resize_at_source":       m.life.ConfirmSnapshotBasedResizeAtSource,
			"revert_snapshot_based_resize_at_dest":          m.life.RevertSnapshotBasedResizeAtDest,
			"finish_revert_snapshot_based_resize_at_source": m.life.FinishRevertSnapshotBasedResizeAtSource,
		}),
		DrainTimeout: m.cfg.DrainTimeout,
		OnConsuming:  m.onConsuming,
		Observer:     m.cfg.RPCObserver,
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	goLoop := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	goLoop(func() { svc.runHeartbeats(ctx, m.cfg.ReportInterval) })
	goLoop(func() {
		every(ctx, m.cfg.ResourceInterval, false, func() {
			if err := m.rt.update(ctx, AdminContext()); err != nil {
				m.log.Error().Err(err).Msg("update_available_resource failed")
			}
		})
	})
	goLoop(func() { every(ctx, m.cfg.SchedulerSyncInterval, true, func() { m.syncSchedulerInstanceInfo(ctx) }) })
	if m.life.net != nil && m.cfg.HealInstanceInfoCacheInterval > 0 {
		goLoop(func() {
			every(ctx, m.cfg.HealInstanceInfoCacheInterval, false, func() { m.life.healInstanceInfoCache(ctx, AdminContext()) })
		})
	}
	m.startPeriodicTasks(ctx, goLoop)
	if w, ok := m.life.hv.(VMWatcher); ok {
		goLoop(func() { m.life.syncPowerStates(ctx, w, m.cfg.PowerSyncReconcile) })
	}
	return srv.Run(ctx)
}

// syncSchedulerInstanceInfo tells the schedulers which instances live on
// this host (nova's _sync_scheduler_instance_info).
func (m *Manager) syncSchedulerInstanceInfo(ctx context.Context) {
	rc := AdminContext()
	v, err := m.cond.ClassAction(ctx, rc, "InstanceList", "get_by_host", []any{m.cfg.Host},
		map[string]any{"expected_attrs": []string{}, "use_slave": true})
	if err != nil {
		m.log.Warn().Err(err).Msg("listing this host's instances for the scheduler failed")
		return
	}
	uuids := []string{}
	if list, ok := v.(*ovo.Object); ok {
		items, _ := list.Items()
		for _, inst := range items {
			uuids = append(uuids, inst.StringOrEmpty("uuid"))
		}
	}
	if err := m.scheduler.Cast(ctx, rc, "sync_instance_info", map[string]any{"host_name": m.cfg.Host, "instance_uuids": uuids}); err != nil {
		m.log.Warn().Err(err).Msg("sync_instance_info to the scheduler failed")
	}
}

// every runs f every interval until ctx ends (at once first if now).
func every(ctx context.Context, interval time.Duration, now bool, f func()) {
	if now {
		f()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
