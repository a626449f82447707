package volume

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Config configures the volume role.
type Config struct {
	// Host is [DEFAULT] host; the service is <Host>@<Backend>.
	Host string
	// Backend is the backend section (enabled_backends), e.g. "vmware".
	Backend string
	// BackendName is volume_backend_name; empty means Backend.
	BackendName string
	// Exchange is cinder's control exchange ("openstack").
	Exchange string
	// DatabaseDSN is cinder's database as a go-sql-driver DSN
	// (DatabaseDSN converts oslo.db URLs).
	DatabaseDSN string
	// AvailabilityZone is storage_availability_zone ("nova").
	AvailabilityZone string
	// ReportInterval is report_interval (heartbeats).
	ReportInterval time.Duration
	// CapabilityInterval is how often capabilities go to the scheduler
	// (cinder's periodic task: 60 s).
	CapabilityInterval time.Duration
	// Clusters and DatastoreRegex select the datastores whose capacity is
	// reported.
	Clusters       []string
	DatastoreRegex *regexp.Regexp
	// ReservedPercentage is the backend's reserved_percentage.
	ReservedPercentage int
	// DrainTimeout bounds in-flight requests at shutdown.
	DrainTimeout time.Duration
	// RPCObserver, if set, is told about every volume RPC request.
	RPCObserver rpc.ServerObserver
	// NotificationDriver ("messagingv2", "messaging"; empty or "noop":
	// none) and NotificationTopics select cinder's notifications.
	NotificationDriver string
	NotificationTopics []string

	// The VMDK driver's [vmware] options. VolumeFolder is
	// vmware_volume_folder ("Volumes"); LazyCreate is vmware_lazy_create
	// (the agent's default true: a blank volume gets its backing when first
	// attached); AdapterType is vmware_adapter_type ("lsiLogic");
	// ImageTransferTimeout is vmware_image_transfer_timeout_secs;
	// StorageProfiles is vmware_storage_profile (the reported capacity is
	// that of the datastores compliant with these profiles).
	VolumeFolder         string
	LazyCreate           bool
	AdapterType          string
	ImageTransferTimeout time.Duration
	StorageProfiles      []string
	// Images is glance, for copy_volume_to_image (nil: not available).
	Images ImageService
	// ConnectorConfig is the "config" of the connection info given to
	// os-brick connectors (vmware_host_ip, ... as the driver sends them).
	ConnectorConfig map[string]any
}

func (c *Config) defaults() {
	if c.Backend == "" {
		c.Backend = "vmware"
	}
	if c.BackendName == "" {
		c.BackendName = c.Backend
	}
	if c.Exchange == "" {
		c.Exchange = "openstack"
	}
	if c.AvailabilityZone == "" {
		c.AvailabilityZone = "nova"
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = 10 * time.Second
	}
	if c.CapabilityInterval <= 0 {
		c.CapabilityInterval = 60 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 60 * time.Second
	}
	if len(c.NotificationTopics) == 0 {
		c.NotificationTopics = []string{"notifications"}
	}
	if c.VolumeFolder == "" {
		c.VolumeFolder = "Volumes"
	}
	if c.AdapterType == "" {
		c.AdapterType = "lsiLogic"
	}
	if c.ImageTransferTimeout <= 0 {
		c.ImageTransferTimeout = 7200 * time.Second
	}
}

// ImageCacheFolder is the datastore folder where the volume role keeps
// the images it made volumes from (one copy per image and datastore).
const ImageCacheFolder = "cinder_image_cache"

// Manager is the cinder-volume role.
type Manager struct {
	cfg         Config
	backendHost string // <host>@<backend>
	tr          *rpc.Transport
	db          *sql.DB
	inv         Inventory
	drv         *vmdkDriver // nil without a vCenter session
	images      imageDisks  // the role's image cache on the datastores
	svc         *serviceRow
	schedFanout rpc.Client // update_service_capabilities (3.3)
	sched       rpc.Client // notify_service_capabilities (3.5)
	notifier    *rpc.Notifier
	log         zerolog.Logger
	onConsuming func(bool)

	mu         sync.Mutex
	registered bool
	serviceID  int64 // the services row's id, once registered
	lastCaps   map[string]any
	reportNow  chan struct{}
	// bg tracks the start-up clean-up and the deletes it resumed; Run
	// waits for them before closing the database.
	bg sync.WaitGroup
}

// NewManager builds the volume role; it opens (but does not yet reach)
// cinder's database.
func NewManager(cfg Config, tr *rpc.Transport, inv Inventory, onConsuming func(bool), log zerolog.Logger) (*Manager, error) {
	cfg.defaults()
	if cfg.Host == "" {
		return nil, errors.New("volume: host name is empty")
	}
	if cfg.DatabaseDSN == "" {
		return nil, errors.New("volume: cinder's database is not configured (VCAGENT_VOLUME_DATABASE_URL)")
	}
	// The driver's own messages (a connection lost, ...) go to the log.
	_ = mysql.SetLogger(driverLogger{log.With().Str("component", "mysql").Logger()})
	db, err := sql.Open("mysql", cfg.DatabaseDSN)
	if err != nil {
		return nil, fmt.Errorf("volume: database: %w", err)
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxLifetime(5 * time.Minute)
	backendHost := cfg.Host + "@" + cfg.Backend
	log = log.With().Str("role", "volume").Str("backend", backendHost).Logger()
	m := &Manager{
		cfg:         cfg,
		backendHost: backendHost,
		tr:          tr,
		db:          db,
		inv:         inv,
		svc:         &serviceRow{db: db, host: backendHost, az: cfg.AvailabilityZone},
		schedFanout: tr.NewClient(rpc.Target{Exchange: cfg.Exchange, Topic: "cinder-scheduler", Fanout: true, Version: "3.3"}),
		sched:       tr.NewClient(rpc.Target{Exchange: cfg.Exchange, Topic: "cinder-scheduler", Version: "3.5"}),
		log:         log,
		onConsuming: onConsuming,
		reportNow:   make(chan struct{}, 1),
	}
	if vc, ok := inv.(VCenter); ok {
		m.drv = newVMDKDriver(vc, cfg.Clusters, cfg.DatastoreRegex, cfg.VolumeFolder, log)
	}
	if s, ok := inv.(*vcenter.Session); ok {
		if m.drv != nil {
			m.drv.pol = newStoragePolicies(vcenter.NewStoragePolicies(s))
		}
		if ic, err := vcenter.NewImageCache(s, ImageCacheFolder); err == nil {
			m.images = ic
		}
	}
	switch cfg.NotificationDriver {
	case "messaging", "messagingv2":
		m.notifier = tr.NewNotifier(rpc.NotifierConfig{Exchange: cfg.Exchange, PublisherID: "volume." + backendHost,
			Topics: cfg.NotificationTopics, Legacy: cfg.NotificationDriver == "messaging"})
	}
	return m, nil
}

// BackendHost is the service's host, <host>@<backend>.
func (m *Manager) BackendHost() string { return m.backendHost }

// Run registers the service, serves volume RPC, heartbeats and reports
// capabilities until ctx ends, then drains and closes the database.
func (m *Manager) Run(ctx context.Context) error {
	defer m.db.Close()
	endpoints := []rpc.Endpoint{m.endpoint()}
	var servers []*rpc.Server
	var consuming sync.Map
	for _, target := range []rpc.Target{
		{Exchange: m.cfg.Exchange, Topic: Topic, Server: m.backendHost},
		{Exchange: m.cfg.Exchange, Topic: Topic + "." + m.backendHost, Server: m.cfg.Host},
	} {
		key := target.String()
		srv, err := m.tr.NewServer(rpc.ServerConfig{
			Target:       target,
			Endpoints:    endpoints,
			DrainTimeout: m.cfg.DrainTimeout,
			Observer:     m.cfg.RPCObserver,
			OnConsuming: func(on bool) {
				consuming.Store(key, on)
				if m.onConsuming != nil {
					all := true
					consuming.Range(func(_, v any) bool { all = all && v.(bool); return all })
					m.onConsuming(all)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("volume RPC server %s: %w", target, err)
		}
		consuming.Store(key, false)
		servers = append(servers, srv)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- err
			}
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); m.runHeartbeats(ctx) }()
	go func() { defer wg.Done(); m.runCapabilityReports(ctx) }()
	m.log.Info().Str("exchange", m.cfg.Exchange).Str("rpc_version", RPCVersion).Msg("volume role started")
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	wg.Wait()
	m.bg.Wait()
	return err
}

// runHeartbeats registers the service row, then heartbeats every
// ReportInterval; while the database is unreachable it logs once and
// retries at each interval (a deleted row is created again, as cinder's
// report_state does).
func (m *Manager) runHeartbeats(ctx context.Context) {
	failing := false
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := m.beat(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			m.log.Error().Err(err).Dur("retry_in", m.cfg.ReportInterval).Msg("cannot report the cinder-volume service status to cinder's database; retrying")
		case err != nil:
			m.log.Debug().Err(err).Msg("service status report failed again")
		case failing:
			failing = false
			m.log.Info().Msg("recovered: reporting the cinder-volume service status again")
		}
		t.Reset(m.cfg.ReportInterval)
	}
}

func (m *Manager) beat(ctx context.Context) error {
	runCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, max(m.cfg.ReportInterval, 5*time.Second))
	defer cancel()
	m.mu.Lock()
	registered := m.registered
	m.mu.Unlock()
	if registered {
		err := m.svc.heartbeat(ctx)
		if !errors.Is(err, errServiceGone) {
			return err
		}
		m.log.Warn().Msg("the cinder-volume service row was deleted: creating it again")
	}
	if err := m.svc.register(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	first := !m.registered
	m.registered = true
	m.serviceID = m.svc.id
	m.mu.Unlock()
	m.log.Info().Int64("service_id", m.svc.id).Str("service_uuid", m.svc.uuid).Str("availability_zone", m.cfg.AvailabilityZone).
		Msg("registered the cinder-volume service")
	if first {
		m.triggerReport()
		// init_host: clean up what a previous run left under way
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.initHostCleanup(runCtx)
		}()
	}
	return nil
}

// serviceUUID is the services row's uuid ("" before registration).
func (m *Manager) serviceUUID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.registered {
		return ""
	}
	return m.svc.uuid
}

func (m *Manager) triggerReport() {
	select {
	case m.reportNow <- struct{}{}:
	default:
	}
}

// runCapabilityReports sends the capabilities at start, every
// CapabilityInterval, and when asked (publish_service_capabilities, a
// volume created or deleted).
func (m *Manager) runCapabilityReports(ctx context.Context) {
	t := time.NewTicker(m.cfg.CapabilityInterval)
	defer t.Stop()
	m.reportCapabilities(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.reportNow:
		}
		m.reportCapabilities(ctx)
	}
}

// currentCapabilities reads the capacity from vCenter and the allocated
// size from cinder's database.
func (m *Manager) currentCapabilities(ctx context.Context) map[string]any {
	var capa *Capacity
	if m.inv != nil {
		var clusters []vcenter.Cluster
		var err error
		if m.drv != nil {
			clusters, err = m.drv.inventory(ctx, false) // shared with placement, at most 20 s old
		} else {
			clusters, err = m.inv.Clusters(ctx, m.cfg.Clusters...)
		}
		if err != nil {
			m.log.Warn().Err(err).Msg("cannot read the datastores' capacity: reporting it unknown")
		} else {
			var monitored map[vcenter.Ref]bool
			if len(m.cfg.StorageProfiles) > 0 && m.drv != nil {
				// vmware_storage_profile: only the datastores compliant
				// with these profiles count (cached compliance answers)
				monitored, err = m.drv.pol.monitored(ctx, m.cfg.StorageProfiles)
				if err == nil && len(monitored) == 0 {
					m.log.Warn().Strs("storage_profiles", m.cfg.StorageProfiles).Msg("no datastores found for the storage profiles")
				}
			}
			if err != nil {
				m.log.Warn().Err(err).Msg("cannot read the datastores compliant with the storage profiles: reporting the capacity unknown")
			} else {
				c := capacityOf(clusters, m.cfg.DatastoreRegex, monitored)
				capa = &c
			}
		}
	}
	var allocated int64
	if err := m.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(size), 0) FROM volumes WHERE deleted = 0 AND (host = ? OR host LIKE ?)",
		m.backendHost, strings.ReplaceAll(m.backendHost, "%", `\%`)+"#%").Scan(&allocated); err != nil {
		m.log.Debug().Err(err).Msg("cannot read the allocated capacity")
	}
	caps := capabilities(m.cfg.BackendName, m.cfg.ReservedPercentage, capa, allocated)
	m.mu.Lock()
	m.lastCaps = caps
	m.mu.Unlock()
	return caps
}

// reportCapabilities sends update_service_capabilities (fanout, 3.3) and
// notify_service_capabilities (cast, 3.5) to cinder-scheduler.
func (m *Manager) reportCapabilities(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	caps := m.currentCapabilities(rctx)
	rc := adminContext()
	ts := utcNow().Format("2006-01-02T15:04:05.000000")
	err := m.schedFanout.Cast(rctx, rc, "update_service_capabilities", map[string]any{
		"service_name": "volume", "host": m.backendHost, "capabilities": caps, "cluster_name": nil, "timestamp": ts,
	})
	if err == nil {
		err = m.sched.Cast(rctx, rc, "notify_service_capabilities", map[string]any{
			"service_name": "volume", "backend": m.backendHost, "capabilities": caps, "timestamp": ts,
		})
	}
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("cannot send the capabilities to cinder-scheduler")
		}
		return
	}
	m.log.Debug().Any("total_capacity_gb", caps["total_capacity_gb"]).Any("free_capacity_gb", caps["free_capacity_gb"]).
		Any("allocated_capacity_gb", caps["allocated_capacity_gb"]).Msg("capabilities sent to cinder-scheduler")
}

// adminContext is cinder's get_admin_context() as the manager's periodic
// tasks send it.
func adminContext() rpc.Context {
	rc, _ := rpc.NewContext(map[string]any{
		"user": nil, "project_id": nil, "system_scope": nil, "project": nil, "domain": nil,
		"user_domain": nil, "project_domain": nil, "is_admin": true, "read_only": false, "show_deleted": false,
		"auth_token": nil, "request_id": "req-" + newUUID(), "global_request_id": nil, "resource_uuid": nil,
		"roles": []string{"admin"}, "user_identity": "- - - - -", "is_admin_project": true, "user_id": nil,
		"project_name": nil, "domain_id": nil, "read_deleted": "no", "remote_address": nil,
		"timestamp": utcNow().Format("2006-01-02T15:04:05.000000"), "quota_class": nil, "service_catalog": []any{},
	})
	return rc
}

// rawJSON is a helper for decoding a versioned object's data.
type objectPrimitive struct {
	Name    string                     `json:"versioned_object.name"`
	Version string                     `json:"versioned_object.version"`
	Data    map[string]json.RawMessage `json:"versioned_object.data"`
}

func (o objectPrimitive) str(key string) string {
	var s string
	if raw, ok := o.Data[key]; ok {
		_ = json.Unmarshal(raw, &s)
	}
	return s
}

func (o objectPrimitive) int(key string) int64 {
	var n int64
	if raw, ok := o.Data[key]; ok {
		_ = json.Unmarshal(raw, &n)
	}
	return n
}

func (o objectPrimitive) boolean(key string, def bool) bool {
	b := def
	if raw, ok := o.Data[key]; ok && string(raw) != "null" {
		_ = json.Unmarshal(raw, &b)
	}
	return b
}

// driverLogger is go-sql-driver's logger on the agent's log.
type driverLogger struct{ log zerolog.Logger }

func (l driverLogger) Print(v ...any) { l.log.Warn().Msg(strings.TrimSpace(fmt.Sprint(v...))) }
