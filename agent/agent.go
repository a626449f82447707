package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/compute"
	"github.com/vcagent/vcagent/agent/network"
	"github.com/vcagent/vcagent/agent/ops"
	"github.com/vcagent/vcagent/agent/volume"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Agent runs the roles for one vCenter on one bus.
type Agent struct {
	cfg Config
	log zerolog.Logger
}

// New builds an agent from a loaded configuration.
func New(cfg Config, log zerolog.Logger) (*Agent, error) {
	if cfg.transport.Hosts == nil {
		return nil, fmt.Errorf("%w: configuration was not loaded with LoadConfig", ErrConfig)
	}
	return &Agent{cfg: cfg, log: log}, nil
}

// Run connects to vCenter and the bus and serves until ctx ends, then
// drains: it stops taking messages, lets in-flight work finish within
// ShutdownTimeout, closes the bus connections and logs out of vCenter.
func (a *Agent) Run(ctx context.Context) error {
	o := ops.New(a.log)
	if a.cfg.HTTPAddr != "" {
		octx, stop := context.WithCancel(context.WithoutCancel(ctx))
		served := make(chan error, 1)
		go func() { served <- o.Serve(octx, a.cfg.HTTPAddr) }()
		// The endpoint outlives the drain, so probes see it to the end.
		defer func() { stop(); <-served }()
	}
	vcCfg := vcenter.Config{URL: a.cfg.VCenterURL, User: a.cfg.VCenterUser, Password: a.cfg.VCenterPassword, Insecure: a.cfg.VCenterInsecure, CAFile: a.cfg.VCenterCAFile}
	if a.cfg.VCenterURL == "" {
		sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{
			Clusters:        a.cfg.SimClusters,
			HostsPerCluster: a.cfg.SimHostsPerCluster,
			Datastores:      a.cfg.SimDatastores,
			ListenAddr:      "127.0.0.1:0",
			// Stable per host, like a real vCenter's: the compute nodes'
			// names embed it, and a restarted agent must find them again.
			InstanceUUID:   stableUUID("vcagent-simulator:" + a.cfg.Host),
			SessionTimeout: a.cfg.SimSessionTimeout,
		})
		if err != nil {
			return fmt.Errorf("start the embedded vCenter simulator: %w", err)
		}
		defer sim.Close()
		u := sim.URL()
		vcCfg = vcenter.Config{URL: u.String(), Insecure: true}
		a.log.Info().Str("url", u.Redacted()).Int("clusters", a.cfg.SimClusters).Int("hosts_per_cluster", a.cfg.SimHostsPerCluster).
			Msg("no vCenter configured: embedded vCenter simulator listening")
	}
	vcCfg.OnCall = o.OnVCenterCall
	vcCfg.MaxTasks = a.cfg.VCenterMaxTasks
	vc, err := vcenter.New(vcCfg, a.log)
	if err != nil {
		return fmt.Errorf("vCenter: %w", err)
	}
	o.CounterFunc("vcagent_vcenter_relogins_total", "Times the vCenter session was logged in again after vCenter dropped it.",
		func() float64 { return float64(vc.Relogins()) })
	if err := vc.Login(ctx); err != nil {
		return fmt.Errorf("vCenter login: %w", err)
	}
	defer func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := vc.Logout(lctx); err != nil {
			a.log.Warn().Err(err).Msg("vCenter logout failed")
		}
	}()
	if err := a.logInventory(ctx, vc); err != nil {
		return err
	}

	tr, err := rpc.NewTransport(rpc.Config{
		URL:         a.cfg.transport,
		Options:     a.cfg.rpcOpts,
		Log:         a.log.With().Str("component", "rpc").Logger(),
		OnLinkEvent: o.OnLinkEvent,
		OnPublish:   o.OnPublish,
	})
	if err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	defer tr.Close()
	a.log.Info().Str("transport_url", a.cfg.transport.Redacted()).Str("host", a.cfg.Host).Msg("joining the bus")

	var roles []role
	if a.cfg.HasRole("volume") {
		if roles, err = a.volumeRole(tr, vc, o, roles); err != nil {
			return err
		}
	}
	if a.cfg.HasRole("network") {
		roles = append(roles, a.networkRole(tr, vc, o))
	}
	if !a.cfg.HasRole("compute") {
		return a.runRoles(ctx, roles)
	}

	deps := compute.Deps{Hypervisor: vc}
	if a.cfg.AuthToken == "" && a.cfg.AuthURL == "" {
		a.log.Warn().Msg("neither VCAGENT_AUTH_URL nor VCAGENT_AUTH_TOKEN is set: compute nodes are not reported to placement, and no image can be read from glance")
	} else {
		sess, err := a.cloudSession(ctx)
		if err != nil {
			return err
		}
		pl := cloud.NewPlacement(sess, cloud.PlacementOptions{})
		deps.Placement = pl
		if glance, err := cloud.NewGlance(sess); err != nil {
			a.log.Warn().Err(err).Msg("glance is not configured: builds will fail")
		} else {
			deps.Images = glance
		}
		if neutron, err := cloud.NewNeutron(sess); err != nil {
			a.log.Warn().Err(err).Msg("neutron is not configured: servers can only be built without networks")
		} else {
			deps.Network = neutron
		}
		if cinder, err := cloud.NewCinder(sess, cloud.CinderConfig{
			EndpointTemplate: a.cfg.CinderEndpoint, CatalogInfo: a.cfg.CinderCatalogInfo, RegionName: a.cfg.RegionName,
		}); err != nil {
			a.log.Warn().Err(err).Msg("cinder is not configured: volumes cannot be attached")
		} else {
			deps.Volumes = cinder
		}
	}
	prefix := a.cfg.CachePrefix
	if prefix == "" {
		prefix = a.cfg.MyIP
	}
	if prefix == "" {
		prefix = a.cfg.Host
	}
	if cache, err := vcenter.NewImageCache(vc, prefix+"_base"); err != nil {
		return fmt.Errorf("image cache: %w", err)
	} else if deps.Images != nil {
		deps.Cache = cache
	}
	o.SetReady("compute_rpc", false, "waiting for nova-conductor")
	mgr, err := compute.NewManager(compute.Config{
		Host:                  a.cfg.Host,
		HostIP:                a.cfg.MyIP,
		VCenterHost:           vcHostname(vcCfg.URL),
		Exchange:              a.cfg.ControlExchange,
		Clusters:              a.cfg.Clusters,
		DatastoreRegex:        a.cfg.dsRegex,
		ReportInterval:        a.cfg.ReportInterval,
		ResourceInterval:      a.cfg.ResourceInterval,
		SchedulerSyncInterval: a.cfg.SchedulerSyncInterval,
		RPCTimeout:            a.cfg.rpcOpts.ResponseTimeout,
		DrainTimeout:          a.cfg.ShutdownTimeout,
		Resources: cloud.ResourceConfig{
			CPUAllocationRatio:         a.cfg.CPUAllocationRatio,
			RAMAllocationRatio:         a.cfg.RAMAllocationRatio,
			DiskAllocationRatio:        a.cfg.DiskAllocationRatio,
			InitialCPUAllocationRatio:  a.cfg.InitialCPUAllocationRatio,
			InitialRAMAllocationRatio:  a.cfg.InitialRAMAllocationRatio,
			InitialDiskAllocationRatio: a.cfg.InitialDiskAllocationRatio,
			ReservedHostMemoryMB:       a.cfg.ReservedHostMemoryMB,
			ReservedHostDiskMB:         a.cfg.ReservedHostDiskMB,
			ReservedHostCPUs:           a.cfg.ReservedHostCPUs,
		},
		RPCObserver:                   o.ServerObserver(),
		MaxConcurrentBuilds:           a.cfg.MaxConcurrentBuilds,
		HealInstanceInfoCacheInterval: a.cfg.HealInstanceInfoCacheInterval,
		VIFPluggingTimeout:            a.cfg.VIFPluggingTimeout,
		VIFPluggingIsFatal:            a.cfg.VIFPluggingIsFatal,
		Periodic:                      a.cfg.periodicConfig(),
		Notifications: compute.NotificationConfig{
			Driver:          a.cfg.NotificationDriver,
			Format:          a.cfg.NotificationFormat,
			Topics:          a.cfg.NotificationTopics,
			VersionedTopics: a.cfg.VersionedNotificationTopics,
			GlanceURL:       a.cfg.GlanceEndpoint,
		},
	}, tr, deps, func(on bool) { o.SetReady("compute_rpc", on, "compute RPC server not consuming") }, a.log)
	if err != nil {
		return err
	}
	mgr.SetConsoleConfig(compute.ConsoleConfig{
		VNCEnabled: a.cfg.VNCEnabled, NoVNCProxyBaseURL: a.cfg.NoVNCProxyBaseURL,
		VNCPort: a.cfg.VNCPort, VNCPortTotal: a.cfg.VNCPortTotal, VNCKeymap: a.cfg.VNCKeymap,
		MKSEnabled: a.cfg.MKSEnabled, MKSProxyBaseURL: a.cfg.MKSProxyBaseURL,
		SpiceEnabled: a.cfg.SpiceEnabled, RDPEnabled: a.cfg.RDPEnabled, SerialEnabled: a.cfg.SerialEnabled,
		TokenTTL: a.cfg.ConsoleTokenTTL, SerialLogDir: a.cfg.SerialLogDir,
	})
	o.GaugeFunc("vcagent_vcenter_tasks_in_flight", "vCenter tasks started by the agent and not yet ended (bounded by VCAGENT_VCENTER_MAX_TASKS).",
		func() float64 { return float64(vc.TasksInFlight()) })
	o.GaugeFunc("vcagent_compute_builds_queued", "Builds waiting for a slot (VCAGENT_MAX_CONCURRENT_BUILDS).", mgr.BuildsQueued)
	o.GaugeFunc("vcagent_compute_builds_running", "Builds holding a slot.", mgr.BuildsRunning)
	o.GaugeVecFunc("vcagent_compute_instances", "The agent's VMs per served cluster.", "cluster", mgr.InstancesPerCluster)
	return a.runRoles(ctx, append(roles, role{"compute", mgr.Run}))
}

// cloudSession authenticates to the control plane with the configured
// credentials.
func (a *Agent) cloudSession(ctx context.Context) (*cloud.Session, error) {
	sess, err := cloud.NewSession(ctx, cloud.AuthConfig{
		AuthURL:           a.cfg.AuthURL,
		Username:          a.cfg.AuthUsername,
		Password:          a.cfg.AuthPassword,
		ProjectName:       a.cfg.AuthProjectName,
		UserDomainName:    a.cfg.AuthUserDomainName,
		ProjectDomainName: a.cfg.AuthProjectDomainName,
		RegionName:        a.cfg.RegionName,
		Token:             a.cfg.AuthToken,
		PlacementEndpoint: a.cfg.PlacementEndpoint,
		GlanceEndpoint:    a.cfg.GlanceEndpoint,
		NeutronEndpoint:   a.cfg.NeutronEndpoint,
	}, a.log)
	if err != nil {
		return nil, fmt.Errorf("OpenStack authentication: %w", err)
	}
	return sess, nil
}

// logInventory logs the clusters and datastores the agent will serve.
func (a *Agent) logInventory(ctx context.Context, vc *vcenter.Session) error {
	clusters, err := vc.Clusters(ctx, a.cfg.Clusters...)
	if err != nil {
		return fmt.Errorf("read vCenter inventory: %w", err)
	}
	if len(clusters) == 0 {
		return fmt.Errorf("%w: vCenter has no cluster to serve (VCAGENT_CLUSTERS=%v)", ErrConfig, a.cfg.Clusters)
	}
	about := vc.About()
	a.log.Info().Str("vcenter", about.FullName).Str("instance_uuid", vc.InstanceUUID()).Int("clusters", len(clusters)).Msg("connected to vCenter")
	for _, c := range clusters {
		res := c.Resources(a.cfg.dsRegex)
		var names []string
		for _, ds := range c.UsableDatastores(a.cfg.dsRegex) {
			names = append(names, ds.Name)
		}
		a.log.Info().Str("cluster", c.Name).Str("moref", c.Ref.Value).Int("hosts", len(c.Hosts)).
			Int64("vcpus", res.VCPUs).Int64("memory_mb", res.MemoryMB).Int64("disk_gb", res.DiskTotalGB).
			Strs("datastores", names).Msg("serving cluster")
	}
	return nil
}

// stableUUID derives a uuid-formatted identifier from name (a SHA-256 name
// hash, laid out as a version 5 UUID would be).
func stableUUID(name string) string {
	h := sha256.Sum256([]byte(name))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// role is one service the agent runs (compute, volume).
type role struct {
	name string
	run  func(context.Context) error
}

// runRoles runs the roles until ctx ends; a role failing stops the others
// and its error is returned.
func (a *Agent) runRoles(ctx context.Context, roles []role) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(roles))
	for _, r := range roles {
		go func() {
			err := r.run(ctx)
			a.log.Info().Str("role", r.name).Msg(r.name + " role stopped")
			if err != nil && !errors.Is(err, context.Canceled) {
				cancel()
				errs <- err
				return
			}
			errs <- nil
		}()
	}
	var first error
	for range roles {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// volumeRole adds the cinder-volume role, on the shared bus and vCenter
// session.
func (a *Agent) volumeRole(tr *rpc.Transport, vc *vcenter.Session, o *ops.Ops, roles []role) ([]role, error) {
	o.SetReady("volume_rpc", false, "volume RPC server not consuming")
	clusters := a.cfg.Clusters
	if len(a.cfg.volumeClusters) > 0 {
		clusters = a.cfg.volumeClusters // the backend section's vmware_cluster_name
	}
	vm, err := volume.NewManager(volume.Config{
		Host:               a.cfg.Host,
		Backend:            a.cfg.VolumeBackend,
		BackendName:        a.cfg.volumeBackendName,
		Exchange:           a.cfg.VolumeExchange,
		DatabaseDSN:        a.cfg.volumeDSN,
		ReportInterval:     a.cfg.ReportInterval,
		Clusters:           clusters,
		DatastoreRegex:     a.cfg.volumeDSRegex,
		DrainTimeout:       a.cfg.ShutdownTimeout,
		RPCObserver:        o.ServerObserver(),
		NotificationDriver: a.cfg.NotificationDriver,
		NotificationTopics: a.cfg.NotificationTopics,

		VolumeFolder:         a.cfg.VolumeFolder,
		LazyCreate:           a.cfg.VolumeLazyCreate,
		AdapterType:          a.cfg.VolumeAdapterType,
		ImageTransferTimeout: a.cfg.VolumeImageTransferTimeout,
		StorageProfiles:      a.cfg.VolumeStorageProfiles,
		ConnectorConfig:      vmdkConnectorConfig(a.cfg, a.cfg.VolumeImageTransferTimeout),
		Images:               a.volumeImages(),
	}, tr, vc, func(on bool) { o.SetReady("volume_rpc", on, "volume RPC server not consuming") }, a.log)
	if err != nil {
		return nil, err
	}
	return append(roles, role{"volume", vm.Run}), nil
}

// volumeImages is glance for the volume role (copy_volume_to_image), nil
// when no endpoint is configured.
func (a *Agent) volumeImages() volume.ImageService {
	if a.cfg.AuthToken == "" && a.cfg.AuthURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := a.cloudSession(ctx)
	if err != nil {
		a.log.Warn().Err(err).Msg("volume role: no glance: volumes cannot be uploaded to images")
		return nil
	}
	g, err := cloud.NewGlance(sess)
	if err != nil {
		a.log.Warn().Err(err).Msg("volume role: no glance: volumes cannot be uploaded to images")
		return nil
	}
	return g
}

// vmdkConnectorConfig is the "config" the VMDK driver puts into the
// connection info of os-brick connectors: the vCenter connection, password
// included, as cinder does.
func vmdkConnectorConfig(cfg Config, timeout time.Duration) map[string]any {
	host, port := "", 443
	if u, err := url.Parse(cfg.VCenterURL); err == nil && u.Host != "" {
		host = u.Hostname()
		if u.Port() != "" {
			_, _ = fmt.Sscan(u.Port(), &port)
		}
	}
	var ca any
	if cfg.VCenterCAFile != "" {
		ca = cfg.VCenterCAFile
	}
	return map[string]any{
		"vmware_host_ip": host, "vmware_host_port": port, "vmware_host_username": cfg.VCenterUser,
		"vmware_host_password": cfg.VCenterPassword, "vmware_api_retry_count": 10, "vmware_task_poll_interval": 2.0,
		"vmware_ca_file": ca, "vmware_insecure": cfg.VCenterInsecure, "vmware_tmp_dir": "/tmp",
		"vmware_image_transfer_timeout_secs": int(timeout / time.Second),
	}
}

// networkRole adds the neutron DVS agent role, on the shared bus and
// vCenter session.
func (a *Agent) networkRole(tr *rpc.Transport, vc *vcenter.Session, o *ops.Ops) role {
	o.SetReady("network_rpc", false, "network RPC servers not consuming")
	vcHost := "embedded-simulator"
	if u, err := url.Parse(a.cfg.VCenterURL); err == nil && u.Host != "" {
		vcHost = u.Hostname()
	}
	na, err := network.New(network.Config{
		Host:            a.cfg.Host,
		Exchange:        a.cfg.NetworkExchange,
		BridgeMappings:  a.cfg.bridgeMappings,
		ReportInterval:  a.cfg.NetworkReportInterval,
		PollingInterval: a.cfg.NetworkPollingInterval,
		SecurityGroups:  a.cfg.NetworkSecurityGroups,
		PortgroupPorts:  a.cfg.NetworkPortgroupPorts,
		VCenterHost:     vcHost,
		RPCTimeout:      a.cfg.rpcOpts.ResponseTimeout,
		DrainTimeout:    a.cfg.ShutdownTimeout,
		RPCObserver:     o.ServerObserver(),
	}, tr, vc, func(on bool) { o.SetReady("network_rpc", on, "network RPC servers not consuming") }, a.log)
	if err != nil {
		// the configuration was checked: only a programming error gets here
		return role{"network", func(context.Context) error { return err }}
	}
	return role{"network", na.Run}
}

// vcHostname is the vCenter's address, nova's [vmware] host_ip.
func vcHostname(vcURL string) string {
	if u, err := url.Parse(vcURL); err == nil {
		return u.Hostname()
	}
	return ""
}
