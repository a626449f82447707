package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// EnvPrefix prefixes every environment variable the agent reads.
const EnvPrefix = "VCAGENT"

// Config is the agent's whole configuration, read once at start-up (see
// Load) and passed down; nothing reads the environment or the files later.
//
// The struct tags are the one table of the configuration: env names the
// VCAGENT_* variable, default its default, conf the oslo.config option(s) of
// nova.conf that set it ("section.key"; several are alternatives, the first
// found wins; after ";" a mode, see knownConfMode), secret marks values never
// shown ("url": only the URL's passwords), and desc the text of --help. Load,
// Usage and Settings all read these tags, so the variables, the file options,
// the help and `vcagent config` cannot disagree.
type Config struct {
	// ConfigFiles are the INI files read (VCAGENT_CONFIG_FILE, then the
	// --config-file and --config-dir arguments); a directory stands for its
	// *.conf files.
	ConfigFiles  []string `env:"CONFIG_FILE" desc:"comma-separated oslo.config INI files (nova.conf, nova-compute.conf, ...) read in order, later files winning, before the --config-file/--config-dir arguments; a directory means its *.conf files"`
	TransportURL string   `env:"TRANSPORT_URL" conf:"DEFAULT.transport_url" secret:"url" default:"rabbit://guest:guest@127.0.0.1:5672/" desc:"oslo.messaging transport_url of the OpenStack bus"`
	Host         string   `env:"HOST" conf:"DEFAULT.host" desc:"host name the agent serves as; default: the machine's host name"`
	// ControlExchange is the exchange of the compute service (nova's default).
	ControlExchange string `env:"CONTROL_EXCHANGE" conf:"DEFAULT.control_exchange" default:"nova" desc:"control exchange of the compute role"`

	VCenterURL      string   `env:"VCENTER_URL" conf:"vmware.host_ip,vmware.host_port;vcenter_url" secret:"url" desc:"vCenter SDK URL (from the files: https://host_ip:host_port/sdk); empty starts the embedded vCenter simulator"`
	VCenterUser     string   `env:"VCENTER_USER" conf:"vmware.host_username" desc:"vCenter user"`
	VCenterPassword string   `env:"VCENTER_PASSWORD" conf:"vmware.host_password" secret:"true" desc:"vCenter password"`
	VCenterInsecure bool     `env:"VCENTER_INSECURE" conf:"vmware.insecure" default:"false" desc:"skip vCenter certificate verification"`
	VCenterCAFile   string   `env:"VCENTER_CA_FILE" conf:"vmware.ca_file" desc:"CA bundle for vCenter's certificate"`
	Clusters        []string `env:"CLUSTERS" conf:"vmware.cluster_name;multi" desc:"comma-separated vCenter clusters to serve (in a file: cluster_name once per cluster); empty: every cluster"`
	DatastoreRegex  string   `env:"DATASTORE_REGEX" conf:"vmware.datastore_regex" desc:"regular expression selecting datastores; empty: all"`

	AuthURL               string `env:"AUTH_URL" conf:"placement.auth_url,placement.auth_type;password_auth" secret:"url" desc:"keystone URL for placement and glance (password authentication)"`
	AuthUsername          string `env:"AUTH_USERNAME" conf:"placement.username,placement.auth_type;password_auth" desc:"service user"`
	AuthPassword          string `env:"AUTH_PASSWORD" conf:"placement.password,placement.auth_type;password_auth" secret:"true" desc:"service user's password"`
	AuthProjectName       string `env:"AUTH_PROJECT_NAME" conf:"placement.project_name" default:"service" desc:"service project"`
	AuthUserDomainName    string `env:"AUTH_USER_DOMAIN_NAME" conf:"placement.user_domain_name" default:"Default" desc:"service user's domain"`
	AuthProjectDomainName string `env:"AUTH_PROJECT_DOMAIN_NAME" conf:"placement.project_domain_name" default:"Default" desc:"service project's domain"`
	RegionName            string `env:"REGION_NAME" conf:"placement.region_name" desc:"region of the endpoints in the catalog"`
	AuthToken             string `env:"AUTH_TOKEN" conf:"placement.token,placement.auth_type;token_auth" secret:"true" desc:"a fixed token instead of keystone (needs VCAGENT_PLACEMENT_ENDPOINT), for test clouds; from the files when auth_type is admin_token or token"`
	PlacementEndpoint     string `env:"PLACEMENT_ENDPOINT" conf:"placement.endpoint_override,placement.endpoint" secret:"url" desc:"placement URL, instead of the catalog's"`
	GlanceEndpoint        string `env:"GLANCE_ENDPOINT" conf:"glance.endpoint_override" secret:"url" desc:"glance URL, instead of the catalog's"`

	CachePrefix                string        `env:"CACHE_PREFIX" conf:"vmware.cache_prefix" desc:"image cache folder <prefix>_base on each datastore; default: my_ip, else the host name"`
	MyIP                       string        `env:"MY_IP" conf:"DEFAULT.my_ip" desc:"IP address reported as the compute nodes' host_ip"`
	ReportInterval             time.Duration `env:"REPORT_INTERVAL" conf:"DEFAULT.report_interval" default:"10s" desc:"service heartbeat interval (in a file: seconds)"`
	ResourceInterval           time.Duration `env:"RESOURCE_INTERVAL" conf:"DEFAULT.update_resources_interval;zero_default" default:"60s" desc:"compute node refresh interval (in a file: seconds, 0 the default)"`
	SchedulerSyncInterval      time.Duration `env:"SCHEDULER_SYNC_INTERVAL" conf:"DEFAULT.scheduler_instance_sync_interval;zero_default" default:"120s" desc:"instance list sent to the scheduler (in a file: seconds, 0 the default)"`
	CPUAllocationRatio         float64       `env:"CPU_ALLOCATION_RATIO" conf:"DEFAULT.cpu_allocation_ratio" default:"0" desc:"VCPU allocation ratio; 0 keeps placement's"`
	RAMAllocationRatio         float64       `env:"RAM_ALLOCATION_RATIO" conf:"DEFAULT.ram_allocation_ratio" default:"0" desc:"MEMORY_MB allocation ratio; 0 keeps placement's"`
	DiskAllocationRatio        float64       `env:"DISK_ALLOCATION_RATIO" conf:"DEFAULT.disk_allocation_ratio" default:"0" desc:"DISK_GB allocation ratio; 0 keeps placement's"`
	InitialCPUAllocationRatio  float64       `env:"INITIAL_CPU_ALLOCATION_RATIO" conf:"DEFAULT.initial_cpu_allocation_ratio" default:"16.0" desc:"VCPU ratio of a new node"`
	InitialRAMAllocationRatio  float64       `env:"INITIAL_RAM_ALLOCATION_RATIO" conf:"DEFAULT.initial_ram_allocation_ratio" default:"1.5" desc:"MEMORY_MB ratio of a new node"`
	InitialDiskAllocationRatio float64       `env:"INITIAL_DISK_ALLOCATION_RATIO" conf:"DEFAULT.initial_disk_allocation_ratio" default:"1.0" desc:"DISK_GB ratio of a new node"`
	ReservedHostMemoryMB       int64         `env:"RESERVED_HOST_MEMORY_MB" conf:"DEFAULT.reserved_host_memory_mb" default:"512" desc:"memory kept for the host, MB"`
	ReservedHostDiskMB         int64         `env:"RESERVED_HOST_DISK_MB" conf:"DEFAULT.reserved_host_disk_mb" default:"0" desc:"disk kept for the host, MB"`
	ReservedHostCPUs           int64         `env:"RESERVED_HOST_CPUS" conf:"DEFAULT.reserved_host_cpus" default:"0" desc:"VCPUs kept for the host"`

	SimClusters        int `env:"SIM_CLUSTERS" default:"2" desc:"embedded simulator: number of clusters"`
	SimHostsPerCluster int `env:"SIM_HOSTS_PER_CLUSTER" default:"3" desc:"embedded simulator: ESXi hosts per cluster"`
	SimDatastores      int `env:"SIM_DATASTORES" default:"2" desc:"embedded simulator: shared datastores"`
	// SimSessionTimeout ends idle simulator sessions, as vCenter's session
	// timeout does (tests use it to exercise re-login).
	SimSessionTimeout time.Duration `env:"SIM_SESSION_TIMEOUT" default:"0s" desc:"embedded simulator: idle session timeout (0: none)"`

	HTTPAddr string `env:"HTTP_ADDR" default:":9400" desc:"listen address of /metrics, /healthz and /readyz; empty turns them off"`

	LogLevel        string        `env:"LOG_LEVEL" conf:"DEFAULT.debug;debug" default:"info" desc:"trace, debug, info, warn or error (a file's debug = true is debug)"`
	LogFormat       string        `env:"LOG_FORMAT" default:"auto" desc:"json, console, or auto (console on a terminal, JSON otherwise)"`
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" conf:"DEFAULT.graceful_shutdown_timeout" default:"60s" desc:"how long in-flight work may finish after SIGTERM (in a file: seconds)"`

	MaxConcurrentBuilds int `env:"MAX_CONCURRENT_BUILDS" conf:"DEFAULT.max_concurrent_builds" default:"10" desc:"builds run at once, the others wait; 0: unlimited"`
	VCenterMaxTasks     int `env:"VCENTER_MAX_TASKS" default:"16" desc:"vCenter tasks (create, power, copy...) the agent runs at once; more wait for a slot, so a burst never floods vCenter"`

	NotificationDriver          string   `env:"NOTIFICATION_DRIVER" conf:"oslo_messaging_notifications.driver" desc:"messagingv2 or messaging sends notifications on the bus; empty or noop sends none (nova's default)"`
	NotificationFormat          string   `env:"NOTIFICATION_FORMAT" conf:"notifications.notification_format" default:"unversioned" desc:"unversioned, versioned or both"`
	NotificationTopics          []string `env:"NOTIFICATION_TOPICS" conf:"oslo_messaging_notifications.topics" default:"notifications" desc:"topics of the unversioned (legacy) notifications"`
	VersionedNotificationTopics []string `env:"VERSIONED_NOTIFICATION_TOPICS" conf:"notifications.versioned_notifications_topics" default:"versioned_notifications" desc:"topics of the versioned notifications"`

	// Derived by Load: parsed forms of the values above.
	transport rpc.TransportURL
	rpcOpts   rpc.Options
	dsRegex   *regexp.Regexp
	level     zerolog.Level

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
// the files VCAGENT_CONFIG_FILE names: Load with no extra files and the
// process environment.
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

// Level is the parsed log level.
func (c Config) Level() zerolog.Level { return c.level }

// LoadOptions are Load's inputs besides the defaults.
type LoadOptions struct {
	// Files are INI files read after those VCAGENT_CONFIG_FILE names: the
	// --config-file and --config-dir arguments, in order.
	Files []string
	// LookupEnv reads a variable; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
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
	env := o.LookupEnv
	if env == nil {
		env = os.LookupEnv
	}
	c := Config{sources: map[string]string{}}
	table, err := settingsTable()
	if err != nil {
		return c, err
	}
	v := reflect.ValueOf(&c).Elem()
	for _, s := range table {
		c.sources[s.env] = "default"
		if s.hasDef {
			if err := setFromEnv(v.FieldByIndex(s.index), s.def); err != nil {
				return c, fmt.Errorf("%w: default of %s: %w", ErrConfig, s.envName(), err)
			}
		}
	}

	var paths, from []string
	if raw, ok := env(EnvPrefix + "_" + configFileEnv); ok {
		for _, p := range strings.Split(raw, ",") {
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
		if s.env == configFileEnv {
			continue
		}
		raw, ok := env(s.envName())
		if !ok {
			continue
		}
		if err := setFromEnv(v.FieldByIndex(s.index), raw); err != nil {
			if s.secret != "" {
				return c, fmt.Errorf("%w: %s: invalid value", ErrConfig, s.envName())
			}
			return c, fmt.Errorf("%w: %s: %w", ErrConfig, s.envName(), err)
		}
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

// Unused returns the options the files set that vcagent does not use, each
// once; the caller logs them at debug level.
func (c Config) Unused() []UnusedOption { return c.unusedOpts }

// Pending returns the cinder-volume and neutron agent options the files
// carry, which no role uses yet.
func (c Config) Pending() PendingOptions { return c.pending }
