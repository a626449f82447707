package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/volume"
	"github.com/vcagent/vcagent/rpc"
)

// EnvPrefix prefixes every environment variable the agent reads.
const EnvPrefix = "VCAGENT"

// Config is the agent's whole configuration, read once at start-up (see
// Load) and passed down; nothing reads the environment or the files later.
//
// The struct tags are the one table of the configuration: envconfig names
// the VCAGENT_* variable and default its default (both parsed by
// github.com/kelseyhightower/envconfig, see processEnv), conf the
// oslo.config option(s) of nova.conf that set it ("section.key"; several
// are alternatives, the first found wins; after ";" a mode, see
// knownConfMode), secret marks values never shown ("url": only the URL's
// passwords), and desc the text of --help. Load, Usage and Settings all
// read these tags, so the variables, the file options, the help and
// `vcagent config` cannot disagree.
type Config struct {
	// ConfigFiles are the INI files read (VCAGENT_CONFIG_FILE, then the
	// --config-file and --config-dir arguments); a directory stands for its
	// *.conf files.
	ConfigFiles  []string `envconfig:"CONFIG_FILE" desc:"comma-separated oslo.config INI files (nova.conf, nova-compute.conf, ...) read in order, later files winning, before the --config-file/--config-dir arguments; a directory means its *.conf files"`
	TransportURL string   `envconfig:"TRANSPORT_URL" conf:"DEFAULT.transport_url" secret:"url" default:"rabbit://guest:guest@127.0.0.1:5672/" desc:"oslo.messaging transport_url of the OpenStack bus"`
	Host         string   `envconfig:"HOST" conf:"DEFAULT.host" desc:"host name the agent serves as; default: the machine's host name"`
	// Roles are the services the agent runs.
	Roles []string `envconfig:"ROLES" default:"compute" desc:"comma-separated roles to run: compute (nova-compute), volume (cinder-volume, VMDK driver), network"`
	// ControlExchange is the exchange of the compute service (nova's default).
	ControlExchange string `envconfig:"CONTROL_EXCHANGE" conf:"DEFAULT.control_exchange" default:"nova" desc:"control exchange of the compute role"`

	VCenterURL      string   `envconfig:"VCENTER_URL" conf:"vmware.host_ip,vmware.host_port;vcenter_url" secret:"url" desc:"vCenter SDK URL (from the files: https://host_ip:host_port/sdk); empty starts the embedded vCenter simulator"`
	VCenterUser     string   `envconfig:"VCENTER_USER" conf:"vmware.host_username" desc:"vCenter user"`
	VCenterPassword string   `envconfig:"VCENTER_PASSWORD" conf:"vmware.host_password" secret:"true" desc:"vCenter password"`
	VCenterInsecure bool     `envconfig:"VCENTER_INSECURE" conf:"vmware.insecure" default:"false" desc:"skip vCenter certificate verification"`
	VCenterCAFile   string   `envconfig:"VCENTER_CA_FILE" conf:"vmware.ca_file" desc:"CA bundle for vCenter's certificate"`
	Clusters        []string `envconfig:"CLUSTERS" conf:"vmware.cluster_name;multi" desc:"comma-separated vCenter clusters to serve (in a file: cluster_name once per cluster); empty: every cluster"`
	DatastoreRegex  string   `envconfig:"DATASTORE_REGEX" conf:"vmware.datastore_regex" desc:"regular expression selecting datastores; empty: all"`

	AuthURL               string `envconfig:"AUTH_URL" conf:"placement.auth_url,placement.auth_type;password_auth" secret:"url" desc:"keystone URL for placement and glance (password authentication)"`
	AuthUsername          string `envconfig:"AUTH_USERNAME" conf:"placement.username,placement.auth_type;password_auth" desc:"service user"`
	AuthPassword          string `envconfig:"AUTH_PASSWORD" conf:"placement.password,placement.auth_type;password_auth" secret:"true" desc:"service user's password"`
	AuthProjectName       string `envconfig:"AUTH_PROJECT_NAME" conf:"placement.project_name" default:"service" desc:"service project"`
	AuthUserDomainName    string `envconfig:"AUTH_USER_DOMAIN_NAME" conf:"placement.user_domain_name" default:"Default" desc:"service user's domain"`
	AuthProjectDomainName string `envconfig:"AUTH_PROJECT_DOMAIN_NAME" conf:"placement.project_domain_name" default:"Default" desc:"service project's domain"`
	RegionName            string `envconfig:"REGION_NAME" conf:"placement.region_name" desc:"region of the endpoints in the catalog"`
	AuthToken             string `envconfig:"AUTH_TOKEN" conf:"placement.token,placement.auth_type;token_auth" secret:"true" desc:"a fixed token instead of keystone (needs VCAGENT_PLACEMENT_ENDPOINT), for test clouds; from the files when auth_type is admin_token or token"`
	PlacementEndpoint     string `envconfig:"PLACEMENT_ENDPOINT" conf:"placement.endpoint_override,placement.endpoint" secret:"url" desc:"placement URL, instead of the catalog's"`
	GlanceEndpoint        string `envconfig:"GLANCE_ENDPOINT" conf:"glance.endpoint_override" secret:"url" desc:"glance URL, instead of the catalog's"`
	NeutronEndpoint       string `envconfig:"NEUTRON_ENDPOINT" conf:"neutron.endpoint_override" secret:"url" desc:"neutron URL, instead of the catalog's"`
	CinderEndpoint        string `envconfig:"CINDER_ENDPOINT" conf:"cinder.endpoint_template" secret:"url" desc:"cinder URL template for the compute role's volume attachments, %(project_id)s replaced by the request's project (nova's endpoint_template); empty: the request's service catalog"`
	CinderCatalogInfo     string `envconfig:"CINDER_CATALOG_INFO" conf:"cinder.catalog_info" default:"volumev3::publicURL" desc:"cinder's catalog entry, <service_type>:<service_name>:<interface>, used without VCAGENT_CINDER_ENDPOINT"`

	// The network info cache heal (nova's _heal_instance_info_cache).
	VIFPluggingTimeout            time.Duration `envconfig:"VIF_PLUGGING_TIMEOUT" default:"0s" desc:"how long a build waits for neutron's network-vif-plugged events; 0: no wait, as nova's VMware driver (which ignores [DEFAULT] vif_plugging_timeout)"`
	VIFPluggingIsFatal            bool          `envconfig:"VIF_PLUGGING_IS_FATAL" conf:"DEFAULT.vif_plugging_is_fatal" default:"true" desc:"a build whose ports were not reported plugged in time fails (with VCAGENT_VIF_PLUGGING_TIMEOUT)"`
	HealInstanceInfoCacheInterval time.Duration `envconfig:"HEAL_INSTANCE_INFO_CACHE_INTERVAL" conf:"DEFAULT.heal_instance_info_cache_interval" default:"60s" desc:"how often one instance's network info cache is rebuilt from neutron (in a file: seconds); 0 or less: never"`

	CachePrefix                string        `envconfig:"CACHE_PREFIX" conf:"vmware.cache_prefix" desc:"image cache folder <prefix>_base on each datastore; default: my_ip, else the host name"`
	MyIP                       string        `envconfig:"MY_IP" conf:"DEFAULT.my_ip" desc:"IP address reported as the compute nodes' host_ip"`
	ReportInterval             time.Duration `envconfig:"REPORT_INTERVAL" conf:"DEFAULT.report_interval" default:"10s" desc:"service heartbeat interval (in a file: seconds)"`
	ResourceInterval           time.Duration `envconfig:"RESOURCE_INTERVAL" conf:"DEFAULT.update_resources_interval;zero_default" default:"60s" desc:"compute node refresh interval (in a file: seconds, 0 the default)"`
	SchedulerSyncInterval      time.Duration `envconfig:"SCHEDULER_SYNC_INTERVAL" conf:"DEFAULT.scheduler_instance_sync_interval;zero_default" default:"120s" desc:"instance list sent to the scheduler (in a file: seconds, 0 the default)"`
	CPUAllocationRatio         float64       `envconfig:"CPU_ALLOCATION_RATIO" conf:"DEFAULT.cpu_allocation_ratio" default:"0" desc:"VCPU allocation ratio; 0 keeps placement's"`
	RAMAllocationRatio         float64       `envconfig:"RAM_ALLOCATION_RATIO" conf:"DEFAULT.ram_allocation_ratio" default:"0" desc:"MEMORY_MB allocation ratio; 0 keeps placement's"`
	DiskAllocationRatio        float64       `envconfig:"DISK_ALLOCATION_RATIO" conf:"DEFAULT.disk_allocation_ratio" default:"0" desc:"DISK_GB allocation ratio; 0 keeps placement's"`
	InitialCPUAllocationRatio  float64       `envconfig:"INITIAL_CPU_ALLOCATION_RATIO" conf:"DEFAULT.initial_cpu_allocation_ratio" default:"16.0" desc:"VCPU ratio of a new node"`
	InitialRAMAllocationRatio  float64       `envconfig:"INITIAL_RAM_ALLOCATION_RATIO" conf:"DEFAULT.initial_ram_allocation_ratio" default:"1.5" desc:"MEMORY_MB ratio of a new node"`
	InitialDiskAllocationRatio float64       `envconfig:"INITIAL_DISK_ALLOCATION_RATIO" conf:"DEFAULT.initial_disk_allocation_ratio" default:"1.0" desc:"DISK_GB ratio of a new node"`
	ReservedHostMemoryMB       int64         `envconfig:"RESERVED_HOST_MEMORY_MB" conf:"DEFAULT.reserved_host_memory_mb" default:"512" desc:"memory kept for the host, MB"`
	ReservedHostDiskMB         int64         `envconfig:"RESERVED_HOST_DISK_MB" conf:"DEFAULT.reserved_host_disk_mb" default:"0" desc:"disk kept for the host, MB"`
	ReservedHostCPUs           int64         `envconfig:"RESERVED_HOST_CPUS" conf:"DEFAULT.reserved_host_cpus" default:"0" desc:"VCPUs kept for the host"`

	VolumeBackend     string `envconfig:"VOLUME_BACKEND" default:"vmware" desc:"volume role: the cinder backend served, <host>@<backend> (from the files: the first enabled_backends section whose volume_driver is the VMDK driver)"`
	VolumeDatabaseURL string `envconfig:"VOLUME_DATABASE_URL" conf:"database.connection" secret:"url" desc:"volume role: cinder's database, as oslo.db's connection (mysql+pymysql://user:pass@host/cinder?charset=utf8, ?unix_socket=PATH) or a go-sql-driver DSN"`
	VolumeExchange    string `envconfig:"VOLUME_EXCHANGE" default:"openstack" desc:"volume role: cinder's control exchange"`
	// The VMDK driver's [vmware] options; from the files: the backend
	// section's vmware_* options.
	VolumeFolder               string        `envconfig:"VOLUME_FOLDER" default:"Volumes" desc:"volume role: folder of the volume backings below OpenStack/Project (<id>)/ (vmware_volume_folder)"`
	VolumeLazyCreate           bool          `envconfig:"VOLUME_LAZY_CREATE" default:"true" desc:"volume role: create a blank volume's backing only when it is first attached (vmware_lazy_create)"`
	VolumeAdapterType          string        `envconfig:"VOLUME_ADAPTER_TYPE" default:"lsiLogic" desc:"volume role: disk adapter of new backings, lsiLogic, busLogic, lsiLogicsas, paraVirtual or ide (vmware_adapter_type)"`
	VolumeImageTransferTimeout time.Duration `envconfig:"VOLUME_IMAGE_TRANSFER_TIMEOUT" default:"7200s" desc:"volume role: timeout of image transfers to and from glance (vmware_image_transfer_timeout_secs; in a file: seconds)"`
	VolumeStorageProfiles      []string      `envconfig:"VOLUME_STORAGE_PROFILE" desc:"volume role: storage profiles (policies) whose compliant datastores make the capacity the backend reports, comma-separated (vmware_storage_profile)"`
	VolumeDatastoreRegex       string        `envconfig:"VOLUME_DATASTORE_REGEX" desc:"volume role: datastores for backings (vmware_datastore_regex); empty: VCAGENT_DATASTORE_REGEX"`

	NetworkBridgeMappings  []string      `envconfig:"NETWORK_BRIDGE_MAPPINGS" conf:"ML2_VMWARE.network_maps" default:"physnet1:DVS0" desc:"network role: comma-separated physical network to DVS name mappings, physnet:dvs"`
	NetworkExchange        string        `envconfig:"NETWORK_EXCHANGE" default:"neutron" desc:"network role: neutron's control exchange"`
	NetworkReportInterval  time.Duration `envconfig:"NETWORK_REPORT_INTERVAL" conf:"AGENT.report_interval" default:"30s" desc:"network role: agent state report interval (in a file: seconds)"`
	NetworkPollingInterval time.Duration `envconfig:"NETWORK_POLLING_INTERVAL" conf:"AGENT.polling_interval" default:"2s" desc:"network role: how often the DVS ports are read for ports that came up or went down (in a file: seconds)"`
	NetworkSecurityGroups  bool          `envconfig:"NETWORK_SECURITY_GROUPS" conf:"SECURITYGROUP.enable_security_group" default:"true" desc:"network role: program security groups as DVS port traffic filters"`
	NetworkPortgroupPorts  int           `envconfig:"NETWORK_PORTGROUP_PORTS" conf:"DVS.init_pg_ports_count" default:"4" desc:"network role: ports of a new port group (doubled when full)"`

	SimClusters        int `envconfig:"SIM_CLUSTERS" default:"2" desc:"embedded simulator: number of clusters"`
	SimHostsPerCluster int `envconfig:"SIM_HOSTS_PER_CLUSTER" default:"3" desc:"embedded simulator: ESXi hosts per cluster"`
	SimDatastores      int `envconfig:"SIM_DATASTORES" default:"2" desc:"embedded simulator: shared datastores"`
	// SimSessionTimeout ends idle simulator sessions, as vCenter's session
	// timeout does (tests use it to exercise re-login).
	SimSessionTimeout time.Duration `envconfig:"SIM_SESSION_TIMEOUT" default:"0s" desc:"embedded simulator: idle session timeout (0: none)"`

	HTTPAddr string `envconfig:"HTTP_ADDR" default:":9400" desc:"listen address of /metrics, /healthz and /readyz; empty turns them off"`

	LogLevel        string        `envconfig:"LOG_LEVEL" conf:"DEFAULT.debug;debug" default:"info" desc:"trace, debug, info, warn or error (a file's debug = true is debug)"`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"auto" desc:"json, console, or auto (console on a terminal, JSON otherwise)"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" conf:"DEFAULT.graceful_shutdown_timeout" default:"60s" desc:"how long in-flight work may finish after SIGTERM (in a file: seconds)"`

	MaxConcurrentBuilds int `envconfig:"MAX_CONCURRENT_BUILDS" conf:"DEFAULT.max_concurrent_builds" default:"10" desc:"builds run at once, the others wait; 0: unlimited"`
	VCenterMaxTasks     int `envconfig:"VCENTER_MAX_TASKS" default:"16" desc:"vCenter tasks (create, power, copy...) the agent runs at once; more wait for a slot, so a burst never floods vCenter"`

	// nova-compute's periodic tasks (compute.PeriodicConfig). In a file,
	// durations are integer seconds, as nova.conf has them.
	PeriodicInterval                   time.Duration `envconfig:"PERIODIC_INTERVAL" default:"60s" desc:"period of nova's periodic tasks that have no interval of their own (reclaim, resize confirmation, usage audit) and of those whose interval is 0 (oslo.service's 60 s)"`
	ImageCacheManagerInterval          time.Duration `envconfig:"IMAGE_CACHE_MANAGER_INTERVAL" conf:"image_cache.manager_interval,DEFAULT.image_cache_manager_interval" default:"2400s" desc:"image cache ageing pass interval (in a file: seconds); 0: every VCAGENT_PERIODIC_INTERVAL, -1s (in a file -1): off"`
	RemoveUnusedBaseImages             bool          `envconfig:"REMOVE_UNUSED_BASE_IMAGES" conf:"image_cache.remove_unused_base_images,DEFAULT.remove_unused_base_images" default:"true" desc:"age cached images no instance of this host uses: timestamp them, then remove them"`
	RemoveUnusedOriginalMinimumAge     time.Duration `envconfig:"REMOVE_UNUSED_ORIGINAL_MINIMUM_AGE" conf:"image_cache.remove_unused_original_minimum_age_seconds,DEFAULT.remove_unused_original_minimum_age_seconds" default:"86400s" desc:"how long a cached image stays unused before it is removed (in a file: seconds)"`
	ReclaimInstanceInterval            time.Duration `envconfig:"RECLAIM_INSTANCE_INTERVAL" conf:"DEFAULT.reclaim_instance_interval" default:"0s" desc:"soft-deleted instances older than this are deleted (in a file: seconds); 0: off"`
	RunningDeletedInstanceAction       string        `envconfig:"RUNNING_DELETED_INSTANCE_ACTION" conf:"DEFAULT.running_deleted_instance_action" default:"reap" desc:"what to do with VMs of deleted instances: reap (power off and destroy), log, shutdown (power off) or noop"`
	RunningDeletedInstancePollInterval time.Duration `envconfig:"RUNNING_DELETED_INSTANCE_POLL_INTERVAL" conf:"DEFAULT.running_deleted_instance_poll_interval" default:"1800s" desc:"interval of the check for VMs of deleted instances (in a file: seconds); 0: every VCAGENT_PERIODIC_INTERVAL, negative: off"`
	RunningDeletedInstanceTimeout      time.Duration `envconfig:"RUNNING_DELETED_INSTANCE_TIMEOUT" conf:"DEFAULT.running_deleted_instance_timeout" default:"0s" desc:"how long an instance is deleted before its VM is acted on (in a file: seconds)"`
	ResizeConfirmWindow                time.Duration `envconfig:"RESIZE_CONFIRM_WINDOW" conf:"DEFAULT.resize_confirm_window" default:"0s" desc:"resizes unconfirmed for longer are confirmed (in a file: seconds); 0: off"`
	InstanceUsageAudit                 bool          `envconfig:"INSTANCE_USAGE_AUDIT" conf:"DEFAULT.instance_usage_audit" default:"false" desc:"audit instance usage every period: task_log rows and compute.instance.exists notifications"`
	InstanceUsageAuditPeriod           string        `envconfig:"INSTANCE_USAGE_AUDIT_PERIOD" conf:"DEFAULT.instance_usage_audit_period" default:"month" desc:"usage audit period: hour, day, month or year, optionally @offset (month@15)"`

	NotificationDriver          string   `envconfig:"NOTIFICATION_DRIVER" conf:"oslo_messaging_notifications.driver" desc:"messagingv2 or messaging sends notifications on the bus; empty or noop sends none (nova's default)"`
	NotificationFormat          string   `envconfig:"NOTIFICATION_FORMAT" conf:"notifications.notification_format" default:"unversioned" desc:"unversioned, versioned or both"`
	NotificationTopics          []string `envconfig:"NOTIFICATION_TOPICS" conf:"oslo_messaging_notifications.topics" default:"notifications" desc:"topics of the unversioned (legacy) notifications"`
	VersionedNotificationTopics []string `envconfig:"VERSIONED_NOTIFICATION_TOPICS" conf:"notifications.versioned_notifications_topics" default:"versioned_notifications" desc:"topics of the versioned notifications"`

	VNCEnabled        bool   `envconfig:"VNC_ENABLED" conf:"vnc.enabled" default:"true" desc:"VNC consoles: a VNC port is given to each VM at spawn"`
	NoVNCProxyBaseURL string `envconfig:"NOVNCPROXY_BASE_URL" conf:"vnc.novncproxy_base_url" default:"http://127.0.0.1:6080/vnc_auto.html" desc:"base URL of the noVNC console proxy"`
	VNCPort           int    `envconfig:"VNC_PORT" conf:"vmware.vnc_port" default:"5900" desc:"first VNC port of the VMs"`
	VNCPortTotal      int    `envconfig:"VNC_PORT_TOTAL" conf:"vmware.vnc_port_total" default:"10000" desc:"number of VNC ports"`
	VNCKeymap         string `envconfig:"VNC_KEYMAP" conf:"vmware.vnc_keymap" default:"en-us" desc:"VNC keymap of the VMs"`
	MKSEnabled        bool   `envconfig:"MKS_ENABLED" conf:"mks.enabled" default:"false" desc:"MKS (WebMKS) consoles"`
	MKSProxyBaseURL   string `envconfig:"MKSPROXY_BASE_URL" conf:"mks.mksproxy_base_url" default:"http://127.0.0.1:6090/" desc:"base URL of the MKS console proxy"`
	SpiceEnabled      bool   `envconfig:"SPICE_ENABLED" conf:"spice.enabled" default:"false" desc:"SPICE consoles (the VMware driver has none: requests get nova's answer)"`
	RDPEnabled        bool   `envconfig:"RDP_ENABLED" conf:"rdp.enabled" default:"false" desc:"RDP consoles (the VMware driver has none)"`
	SerialEnabled     bool   `envconfig:"SERIAL_CONSOLE_ENABLED" conf:"serial_console.enabled" default:"false" desc:"serial consoles (the VMware driver has none)"`
	ConsoleTokenTTL   int    `envconfig:"CONSOLE_TOKEN_TTL" conf:"consoleauth.token_ttl" default:"600" desc:"console token lifetime, seconds"`
	SerialLogDir      string `envconfig:"SERIAL_LOG_DIR" conf:"vmware.serial_log_dir" default:"/opt/vmware/vspc" desc:"where a VSPC writes the VMs' serial logs (get_console_output)"`

	// Derived by Load: parsed forms of the values above.
	transport rpc.TransportURL
	rpcOpts   rpc.Options
	dsRegex   *regexp.Regexp
	level     zerolog.Level
	roles     map[string]bool
	volumeDSN string // VolumeDatabaseURL as a go-sql-driver DSN
	// bridgeMappings is NetworkBridgeMappings parsed: physnet → DVS name.
	bridgeMappings map[string]string
	// volumeBackendName and volumeClusters are the backend section's
	// volume_backend_name and vmware_cluster_name.
	volumeBackendName string
	volumeClusters    []string
	volumeDSRegex     *regexp.Regexp // VolumeDatastoreRegex, else dsRegex
	badVolumeOption   string         // a bad vmware_* option of the backend section

	// Recorded by Load: where each setting came from (by env name), the
	// bus options the files set, the file options no role uses yet, and
	// the file options vcagent does not use at all.
	sources    map[string]string
	fileRPC    []fileOption
	pending    PendingOptions
	unusedOpts []UnusedOption
}

// ErrConfig marks a configuration error; its message names the variable,
// or the file, section and option, at fault.
var ErrConfig = errors.New("configuration error")

// LoadConfig reads and checks the configuration from the environment and
// the files VCAGENT_CONFIG_FILE names: Load with no extra files.
func LoadConfig() (Config, error) { return Load(LoadOptions{}) }

// badValue is a value finish refuses; Load turns it into an error naming
// where the value came from (the variable, or the file, section and option).
type badValue struct {
	name string // the setting's env name without prefix
	msg  string
}

func (e *badValue) Error() string {
	return fmt.Sprintf("%v: %s_%s: %s", ErrConfig, EnvPrefix, e.name, e.msg)
}

func (e *badValue) Unwrap() error { return ErrConfig }

func bad(name string, format string, args ...any) error {
	return &badValue{name: name, msg: fmt.Sprintf(format, args...)}
}

// finish validates c and fills its derived fields.
func (c *Config) finish() error {
	var err error
	if c.Host == "" {
		if c.Host, err = os.Hostname(); err != nil {
			return bad("HOST", "not set and the host name is unknown: %v", err)
		}
	}
	if c.transport, err = rpc.ParseTransportURL(c.TransportURL); err != nil {
		return bad("TRANSPORT_URL", "%v", err)
	}
	// The files' [oslo_messaging_rabbit] options first, then the URL's
	// query: the more specific setting wins.
	c.rpcOpts = rpc.DefaultOptions()
	for _, o := range c.fileRPC {
		if _, err := c.rpcOpts.Set(o.name, o.value); err != nil {
			return fileError(o.from, "%v", err)
		}
	}
	if err := c.rpcOpts.ApplyQuery(c.transport.Query); err != nil {
		return bad("TRANSPORT_URL", "%v", err)
	}
	if err := c.rpcOpts.Validate(); err != nil {
		return bad("TRANSPORT_URL", "%v", err)
	}
	if c.ControlExchange == "" {
		return bad("CONTROL_EXCHANGE", "must not be empty")
	}
	if c.VNCPort < 1 || c.VNCPort > 65535 {
		return bad("VNC_PORT", "%d is not a TCP port", c.VNCPort)
	}
	if c.VNCPortTotal < 1 || c.VNCPort+c.VNCPortTotal-1 > 65535 {
		return bad("VNC_PORT_TOTAL", "%d ports from %d do not fit in 1-65535", c.VNCPortTotal, c.VNCPort)
	}
	if c.ConsoleTokenTTL < 1 {
		return bad("CONSOLE_TOKEN_TTL", "must be positive")
	}
	if err := c.finishRoles(); err != nil {
		return err
	}
	if c.DatastoreRegex != "" {
		if c.dsRegex, err = regexp.Compile(c.DatastoreRegex); err != nil {
			return bad("DATASTORE_REGEX", "%v", err)
		}
	}
	for i, name := range c.Clusters {
		c.Clusters[i] = strings.TrimSpace(name)
		if c.Clusters[i] == "" {
			return bad("CLUSTERS", "empty cluster name in %q", strings.Join(c.Clusters, ","))
		}
	}
	if c.level, err = zerolog.ParseLevel(strings.ToLower(c.LogLevel)); err != nil || c.LogLevel == "" {
		return bad("LOG_LEVEL", "%q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "console", "auto":
	default:
		return bad("LOG_FORMAT", "%q is not json, console or auto", c.LogFormat)
	}
	for name, d := range map[string]time.Duration{"REPORT_INTERVAL": c.ReportInterval, "RESOURCE_INTERVAL": c.ResourceInterval, "SCHEDULER_SYNC_INTERVAL": c.SchedulerSyncInterval} {
		if d <= 0 {
			return bad(name, "must be positive, got %s", d)
		}
	}
	for name, r := range map[string]float64{"CPU_ALLOCATION_RATIO": c.CPUAllocationRatio, "RAM_ALLOCATION_RATIO": c.RAMAllocationRatio, "DISK_ALLOCATION_RATIO": c.DiskAllocationRatio} {
		if r < 0 {
			return bad(name, "must not be negative, got %g", r)
		}
	}
	for name, r := range map[string]float64{"INITIAL_CPU_ALLOCATION_RATIO": c.InitialCPUAllocationRatio, "INITIAL_RAM_ALLOCATION_RATIO": c.InitialRAMAllocationRatio, "INITIAL_DISK_ALLOCATION_RATIO": c.InitialDiskAllocationRatio} {
		if r <= 0 {
			return bad(name, "must be positive, got %g", r)
		}
	}
	if c.ReservedHostMemoryMB < 0 || c.ReservedHostDiskMB < 0 || c.ReservedHostCPUs < 0 {
		return bad("RESERVED_HOST_MEMORY_MB", "reserved amounts must not be negative")
	}
	switch {
	case c.AuthToken != "" && c.PlacementEndpoint == "":
		return bad("PLACEMENT_ENDPOINT", "required with VCAGENT_AUTH_TOKEN")
	case c.AuthToken == "" && c.AuthURL != "" && (c.AuthUsername == "" || c.AuthPassword == ""):
		return bad("AUTH_USERNAME", "VCAGENT_AUTH_URL needs VCAGENT_AUTH_USERNAME and VCAGENT_AUTH_PASSWORD")
	}
	if c.MyIP != "" && net.ParseIP(c.MyIP) == nil {
		return bad("MY_IP", "%q is not an IP address", c.MyIP)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("HTTP_ADDR", "%q is not host:port: %v", c.HTTPAddr, err)
		}
	}
	if c.ShutdownTimeout <= 0 {
		return bad("SHUTDOWN_TIMEOUT", "must be positive, got %s", c.ShutdownTimeout)
	}
	if c.MaxConcurrentBuilds < 0 {
		return bad("MAX_CONCURRENT_BUILDS", "must not be negative, got %d", c.MaxConcurrentBuilds)
	}
	if c.VCenterMaxTasks < 1 {
		return bad("VCENTER_MAX_TASKS", "must be positive, got %d", c.VCenterMaxTasks)
	}
	if err := c.finishPeriodic(); err != nil {
		return err
	}
	switch c.NotificationDriver {
	case "", "noop", "log", "messaging", "messagingv2":
	default:
		return bad("NOTIFICATION_DRIVER", "%q is not messagingv2, messaging, log or noop", c.NotificationDriver)
	}
	switch c.NotificationFormat {
	case "unversioned", "versioned", "both":
	default:
		return bad("NOTIFICATION_FORMAT", "%q is not unversioned, versioned or both", c.NotificationFormat)
	}
	if c.VCenterURL == "" {
		if c.SimClusters < 1 || c.SimHostsPerCluster < 1 || c.SimDatastores < 1 {
			return bad("SIM_CLUSTERS", "the embedded simulator needs at least one cluster, host and datastore")
		}
	} else if c.VCenterUser == "" {
		return bad("VCENTER_USER", "required when VCAGENT_VCENTER_URL is set")
	}
	return nil
}

// finishRoles checks VCAGENT_ROLES and, with the volume role, its settings.
func (c *Config) finishRoles() error {
	c.roles = map[string]bool{}
	for _, r := range c.Roles {
		switch r = strings.ToLower(strings.TrimSpace(r)); r {
		case "compute", "volume", "network":
			c.roles[r] = true
		case "":
		default:
			return bad("ROLES", "unknown role %q: compute, volume or network", r)
		}
	}
	if len(c.roles) == 0 {
		return bad("ROLES", "no role: compute, volume or network")
	}
	if c.roles["network"] {
		if err := c.finishNetwork(); err != nil {
			return err
		}
	}
	if c.sources["VOLUME_BACKEND"] == "default" && len(c.pending.VolumeBackends) > 0 {
		c.VolumeBackend = c.pending.VolumeBackends[0].Section
		c.sources["VOLUME_BACKEND"] = "enabled_backends (the VMDK driver's section)"
	}
	for _, b := range c.pending.VolumeBackends {
		if b.Section == c.VolumeBackend {
			c.volumeBackendName, c.volumeClusters = b.BackendName, b.VMware["vmware_cluster_name"]
			c.volumeDriverOptions(b)
		}
	}
	if !c.roles["volume"] {
		return nil
	}
	if c.VolumeBackend == "" || strings.ContainsAny(c.VolumeBackend, "@# ") {
		return bad("VOLUME_BACKEND", "%q is not a backend name (no @, # or blanks)", c.VolumeBackend)
	}
	if c.VolumeExchange == "" {
		return bad("VOLUME_EXCHANGE", "must not be empty")
	}
	if c.VolumeDatabaseURL == "" {
		return bad("VOLUME_DATABASE_URL", "required by the volume role (cinder's [database] connection)")
	}
	var err error
	if c.volumeDSN, err = volume.DatabaseDSN(c.VolumeDatabaseURL); err != nil {
		return bad("VOLUME_DATABASE_URL", "%v", err)
	}
	return c.finishVolumeDriver()
}

// volumeDriverOptions takes the backend section's vmware_* driver options
// for the settings no variable set.
func (c *Config) volumeDriverOptions(b VolumeBackend) {
	from := func(env, key string, set func(string)) {
		if v := b.VMware[key]; len(v) > 0 && c.sources[env] == "default" {
			set(v[len(v)-1])
			c.sources[env] = "file: [" + b.Section + "] " + key
		}
	}
	from("VOLUME_FOLDER", "vmware_volume_folder", func(v string) { c.VolumeFolder = v })
	from("VOLUME_ADAPTER_TYPE", "vmware_adapter_type", func(v string) { c.VolumeAdapterType = v })
	from("VOLUME_DATASTORE_REGEX", "vmware_datastore_regex", func(v string) { c.VolumeDatastoreRegex = v })
	from("VOLUME_LAZY_CREATE", "vmware_lazy_create", func(v string) {
		// oslo.config's BoolOpt words
		on, err := false, error(nil)
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "1", "on", "yes":
			on = true
		case "false", "0", "off", "no":
		default:
			err = strconv.ErrSyntax
		}
		if err != nil {
			c.badVolumeOption = fmt.Sprintf("[%s] vmware_lazy_create: %q is not a boolean", b.Section, v)
			return
		}
		c.VolumeLazyCreate = on
	})
	from("VOLUME_IMAGE_TRANSFER_TIMEOUT", "vmware_image_transfer_timeout_secs", func(v string) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n <= 0 {
			c.badVolumeOption = fmt.Sprintf("[%s] vmware_image_transfer_timeout_secs: %q is not a positive integer", b.Section, v)
			return
		}
		c.VolumeImageTransferTimeout = time.Duration(n) * time.Second
	})
	if v := b.VMware["vmware_storage_profile"]; len(v) > 0 && c.sources["VOLUME_STORAGE_PROFILE"] == "default" {
		c.VolumeStorageProfiles = v
		c.sources["VOLUME_STORAGE_PROFILE"] = "file: [" + b.Section + "] vmware_storage_profile"
	}
}

// finishVolumeDriver checks the VMDK driver's settings.
func (c *Config) finishVolumeDriver() error {
	if c.badVolumeOption != "" {
		return fmt.Errorf("%w: %s", ErrConfig, c.badVolumeOption)
	}
	if c.VolumeFolder == "" || strings.Contains(c.VolumeFolder, "/") {
		return bad("VOLUME_FOLDER", "%q is not a folder name (not empty, no /)", c.VolumeFolder)
	}
	switch c.VolumeAdapterType {
	case "lsiLogic", "busLogic", "lsiLogicsas", "paraVirtual", "ide":
	default:
		return bad("VOLUME_ADAPTER_TYPE", "%q: lsiLogic, busLogic, lsiLogicsas, paraVirtual or ide", c.VolumeAdapterType)
	}
	if c.VolumeImageTransferTimeout <= 0 {
		return bad("VOLUME_IMAGE_TRANSFER_TIMEOUT", "must be positive")
	}
	for i, p := range c.VolumeStorageProfiles {
		// a list option, blanks around names dropped as oslo.config does
		if c.VolumeStorageProfiles[i] = strings.TrimSpace(p); c.VolumeStorageProfiles[i] == "" {
			return bad("VOLUME_STORAGE_PROFILE", "%q has an empty profile name", strings.Join(c.VolumeStorageProfiles, ","))
		}
	}
	c.volumeDSRegex = c.dsRegex
	if c.VolumeDatastoreRegex != "" {
		re, err := regexp.Compile(c.VolumeDatastoreRegex)
		if err != nil {
			return bad("VOLUME_DATASTORE_REGEX", "%v", err)
		}
		c.volumeDSRegex = re
	}
	return nil
}

// HasRole reports whether the role (compute, volume, network) is enabled.
func (c Config) HasRole(role string) bool { return c.roles[role] }

// Level is the parsed log level.
func (c Config) Level() zerolog.Level { return c.level }

// LoadOptions are Load's inputs besides the defaults.
type LoadOptions struct {
	// Files are INI files read after those VCAGENT_CONFIG_FILE names: the
	// --config-file and --config-dir arguments, in order.
	Files []string
}

// configFileEnv is the setting naming the files; Load reads it first.
const configFileEnv = "CONFIG_FILE"

// Load reads and checks the configuration. Each setting takes its default,
// then the value the files give it (oslo.config's semantics: the last file
// setting an option wins, a MultiStrOpt collects every occurrence), then
// the value of its VCAGENT_* variable: the environment overrides the files,
// which override the defaults. An error names the variable, or the file,
// section and option at fault.
func Load(o LoadOptions) (Config, error) {
	c := Config{sources: map[string]string{}}
	table, err := settingsTable()
	if err != nil {
		return c, err
	}
	env, set, err := processEnv(table)
	if err != nil {
		return c, err
	}
	v := reflect.ValueOf(&c).Elem()
	for _, s := range table {
		c.sources[s.env] = "default"
		if !set[s.env] {
			v.FieldByIndex(s.index).Set(env[s.env])
		}
	}

	var paths, from []string
	if set[configFileEnv] {
		for _, p := range env[configFileEnv].Interface().([]string) {
			if p = strings.TrimSpace(p); p != "" {
				paths = append(paths, p)
			}
		}
		from = append(from, "env "+EnvPrefix+"_"+configFileEnv)
	}
	if len(o.Files) > 0 {
		paths = append(paths, o.Files...)
		from = append(from, "--config-file")
	}
	c.ConfigFiles = paths
	if len(from) > 0 {
		c.sources[configFileEnv] = strings.Join(from, ", ")
	}
	files, err := expandConfigPaths(paths)
	if err != nil {
		return c, err
	}
	cf, err := readConfFiles(files)
	if err != nil {
		return c, err
	}
	origins := map[string]origin{}
	for _, s := range table {
		if len(s.keys) == 0 {
			continue
		}
		src, err := applyFile(cf, s, v.FieldByIndex(s.index))
		if err != nil {
			return c, err
		}
		if len(src) > 0 {
			origins[s.env] = src[0]
			parts := make([]string, 0, len(src))
			for _, o := range src {
				if p := o.source(); !slices.Contains(parts, p) {
					parts = append(parts, p)
				}
			}
			c.sources[s.env] = strings.Join(parts, " + ")
		}
	}
	if c.fileRPC, err = cf.rpcOptions(); err != nil {
		return c, err
	}
	if c.pending, err = cf.pendingOptions(); err != nil {
		return c, err
	}
	c.unusedOpts = cf.unused()

	for _, s := range table {
		if s.env == configFileEnv || !set[s.env] {
			continue
		}
		v.FieldByIndex(s.index).Set(env[s.env])
		c.sources[s.env] = "env " + s.envName()
		delete(origins, s.env)
	}

	if err := c.finish(); err != nil {
		var bv *badValue
		if errors.As(err, &bv) {
			if o, ok := origins[bv.name]; ok {
				return c, fileError(o, "%s", bv.msg)
			}
		}
		return c, err
	}
	if c.sources["HOST"] == "default" {
		c.sources["HOST"] = "default (the machine's host name)"
	}
	return c, nil
}

// processEnv reads the environment with envconfig: it returns, by env
// name, every setting's value (its variable's, else its default) and
// which variables are set, so that Load lets a variable override the
// files but a default not.
//
// envconfig fills a scratch struct of the settings' types whose fields are
// named after the variables and carry only the default tags: given
// Config's envconfig tags, envconfig would fall back to the unprefixed
// name (HOST, LOG_LEVEL...) when a VCAGENT_* variable is not set, reading
// variables that are not vcagent's.
func processEnv(table []setting) (map[string]reflect.Value, map[string]bool, error) {
	ct := reflect.TypeFor[Config]()
	fields := make([]reflect.StructField, len(table))
	set := map[string]bool{}
	for i, s := range table {
		fields[i] = reflect.StructField{Name: s.env, Type: ct.FieldByIndex(s.index).Type}
		if s.hasDef {
			fields[i].Tag = reflect.StructTag("default:" + strconv.Quote(s.def))
		}
		_, set[s.env] = os.LookupEnv(s.envName())
	}
	scratch := reflect.New(reflect.StructOf(fields))
	if err := envconfig.Process(EnvPrefix, scratch.Interface()); err != nil {
		var pe *envconfig.ParseError
		if !errors.As(err, &pe) {
			return nil, nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		i := slices.IndexFunc(table, func(s setting) bool { return s.env == pe.FieldName })
		s, want := table[i], valueKind(fields[i].Type)
		switch {
		case !set[s.env]:
			return nil, nil, fmt.Errorf("%w: default of %s: %q is not %s", ErrConfig, s.envName(), pe.Value, want)
		case s.secret != "":
			return nil, nil, bad(s.env, "invalid value")
		}
		return nil, nil, bad(s.env, "%q is not %s", pe.Value, want)
	}
	env := map[string]reflect.Value{}
	for i, f := range fields {
		env[f.Name] = scratch.Elem().Field(i)
	}
	return env, set, nil
}

// valueKind is what a variable of type t holds, for errors.
func valueKind(t reflect.Type) string {
	if t == reflect.TypeFor[time.Duration]() {
		return "a duration such as 10s or 2m"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "a " + t.String()
}

// Unused returns the options the files set that vcagent does not use, each
// once; the caller logs them at debug level.
func (c Config) Unused() []UnusedOption { return c.unusedOpts }

// Pending returns the cinder-volume and neutron agent options the files
// carry, which no role uses yet.
func (c Config) Pending() PendingOptions { return c.pending }

// finishNetwork checks the network role's settings.
func (c *Config) finishNetwork() error {
	c.bridgeMappings = map[string]string{}
	for _, m := range c.NetworkBridgeMappings {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		physnet, dvs, ok := strings.Cut(m, ":")
		physnet, dvs = strings.TrimSpace(physnet), strings.TrimSpace(dvs)
		if !ok || physnet == "" || dvs == "" {
			return bad("NETWORK_BRIDGE_MAPPINGS", "%q is not physnet:dvs", m)
		}
		if _, dup := c.bridgeMappings[physnet]; dup {
			return bad("NETWORK_BRIDGE_MAPPINGS", "physical network %q is mapped twice", physnet)
		}
		c.bridgeMappings[physnet] = dvs
	}
	if len(c.bridgeMappings) == 0 {
		return bad("NETWORK_BRIDGE_MAPPINGS", "required by the network role: physnet:dvs,...")
	}
	if c.NetworkExchange == "" {
		return bad("NETWORK_EXCHANGE", "must not be empty")
	}
	if c.NetworkReportInterval <= 0 {
		return bad("NETWORK_REPORT_INTERVAL", "must be positive")
	}
	if c.NetworkPollingInterval <= 0 {
		return bad("NETWORK_POLLING_INTERVAL", "must be positive")
	}
	if c.NetworkPortgroupPorts < 1 || c.NetworkPortgroupPorts > 8192 {
		return bad("NETWORK_PORTGROUP_PORTS", "%d is not between 1 and 8192", c.NetworkPortgroupPorts)
	}
	return nil
}
