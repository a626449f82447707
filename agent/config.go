package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// EnvPrefix prefixes every environment variable the agent reads.
const EnvPrefix = "VCAGENT"

// Config is the agent's whole configuration, read once at start-up from
// VCAGENT_* environment variables and passed down; nothing reads the
// environment later. The desc tags feed `vcagent --help`.
type Config struct {
	TransportURL string `envconfig:"TRANSPORT_URL" default:"rabbit://guest:guest@127.0.0.1:5672/" desc:"oslo.messaging transport_url of the OpenStack bus ([DEFAULT] transport_url)"`
	Host         string `envconfig:"HOST" desc:"host name the agent serves as ([DEFAULT] host); default: the machine's host name"`
	// ControlExchange is the exchange of the compute service (nova's default).
	ControlExchange string `envconfig:"CONTROL_EXCHANGE" default:"nova" desc:"control exchange of the compute role ([DEFAULT] control_exchange in nova.conf)"`

	VCenterURL      string   `envconfig:"VCENTER_URL" desc:"vCenter SDK URL ([vmware] host_ip/host_port); empty starts the embedded vCenter simulator"`
	VCenterUser     string   `envconfig:"VCENTER_USER" desc:"vCenter user ([vmware] host_username)"`
	VCenterPassword string   `envconfig:"VCENTER_PASSWORD" desc:"vCenter password ([vmware] host_password)"`
	VCenterInsecure bool     `envconfig:"VCENTER_INSECURE" default:"false" desc:"skip vCenter certificate verification ([vmware] insecure)"`
	VCenterCAFile   string   `envconfig:"VCENTER_CA_FILE" desc:"CA bundle for vCenter's certificate ([vmware] ca_file)"`
	Clusters        []string `envconfig:"CLUSTERS" desc:"comma-separated vCenter clusters to serve ([vmware] cluster_name); empty: every cluster"`
	DatastoreRegex  string   `envconfig:"DATASTORE_REGEX" desc:"regular expression selecting datastores ([vmware] datastore_regex); empty: all"`

	AuthURL               string `envconfig:"AUTH_URL" desc:"keystone URL for placement and glance ([placement] auth_url)"`
	AuthUsername          string `envconfig:"AUTH_USERNAME" desc:"service user ([placement] username)"`
	AuthPassword          string `envconfig:"AUTH_PASSWORD" desc:"service user's password ([placement] password)"`
	AuthProjectName       string `envconfig:"AUTH_PROJECT_NAME" default:"service" desc:"service project ([placement] project_name)"`
	AuthUserDomainName    string `envconfig:"AUTH_USER_DOMAIN_NAME" default:"Default" desc:"([placement] user_domain_name)"`
	AuthProjectDomainName string `envconfig:"AUTH_PROJECT_DOMAIN_NAME" default:"Default" desc:"([placement] project_domain_name)"`
	RegionName            string `envconfig:"REGION_NAME" desc:"region of the endpoints in the catalog ([placement] region_name)"`
	AuthToken             string `envconfig:"AUTH_TOKEN" desc:"a fixed token instead of keystone (needs VCAGENT_PLACEMENT_ENDPOINT); for test clouds ([placement] auth_type=admin_token)"`
	PlacementEndpoint     string `envconfig:"PLACEMENT_ENDPOINT" desc:"placement URL, instead of the catalog's ([placement] endpoint_override)"`
	GlanceEndpoint        string `envconfig:"GLANCE_ENDPOINT" desc:"glance URL, instead of the catalog's ([glance] endpoint_override)"`

	CachePrefix                string        `envconfig:"CACHE_PREFIX" desc:"image cache folder <prefix>_base on each datastore ([vmware] cache_prefix); default: my_ip, else the host name"`
	MyIP                       string        `envconfig:"MY_IP" desc:"IP address reported as the compute nodes' host_ip ([DEFAULT] my_ip)"`
	ReportInterval             time.Duration `envconfig:"REPORT_INTERVAL" default:"10s" desc:"service heartbeat interval ([DEFAULT] report_interval)"`
	ResourceInterval           time.Duration `envconfig:"RESOURCE_INTERVAL" default:"60s" desc:"compute node refresh interval ([DEFAULT] update_resources_interval)"`
	SchedulerSyncInterval      time.Duration `envconfig:"SCHEDULER_SYNC_INTERVAL" default:"120s" desc:"instance list sent to the scheduler ([DEFAULT] scheduler_instance_sync_interval)"`
	CPUAllocationRatio         float64       `envconfig:"CPU_ALLOCATION_RATIO" default:"0" desc:"VCPU allocation ratio; 0 keeps placement's ([DEFAULT] cpu_allocation_ratio)"`
	RAMAllocationRatio         float64       `envconfig:"RAM_ALLOCATION_RATIO" default:"0" desc:"MEMORY_MB allocation ratio; 0 keeps placement's ([DEFAULT] ram_allocation_ratio)"`
	DiskAllocationRatio        float64       `envconfig:"DISK_ALLOCATION_RATIO" default:"0" desc:"DISK_GB allocation ratio; 0 keeps placement's ([DEFAULT] disk_allocation_ratio)"`
	InitialCPUAllocationRatio  float64       `envconfig:"INITIAL_CPU_ALLOCATION_RATIO" default:"16.0" desc:"VCPU ratio of a new node ([DEFAULT] initial_cpu_allocation_ratio)"`
	InitialRAMAllocationRatio  float64       `envconfig:"INITIAL_RAM_ALLOCATION_RATIO" default:"1.5" desc:"MEMORY_MB ratio of a new node ([DEFAULT] initial_ram_allocation_ratio)"`
	InitialDiskAllocationRatio float64       `envconfig:"INITIAL_DISK_ALLOCATION_RATIO" default:"1.0" desc:"DISK_GB ratio of a new node ([DEFAULT] initial_disk_allocation_ratio)"`
	ReservedHostMemoryMB       int64         `envconfig:"RESERVED_HOST_MEMORY_MB" default:"512" desc:"([DEFAULT] reserved_host_memory_mb)"`
	ReservedHostDiskMB         int64         `envconfig:"RESERVED_HOST_DISK_MB" default:"0" desc:"([DEFAULT] reserved_host_disk_mb)"`
	ReservedHostCPUs           int64         `envconfig:"RESERVED_HOST_CPUS" default:"0" desc:"([DEFAULT] reserved_host_cpus)"`

	SimClusters        int `envconfig:"SIM_CLUSTERS" default:"2" desc:"embedded simulator: number of clusters"`
	SimHostsPerCluster int `envconfig:"SIM_HOSTS_PER_CLUSTER" default:"3" desc:"embedded simulator: ESXi hosts per cluster"`
	SimDatastores      int `envconfig:"SIM_DATASTORES" default:"2" desc:"embedded simulator: shared datastores"`
	// SimSessionTimeout ends idle simulator sessions, as vCenter's session
	// timeout does (tests use it to exercise re-login).
	SimSessionTimeout time.Duration `envconfig:"SIM_SESSION_TIMEOUT" default:"0s" desc:"embedded simulator: idle session timeout (0: none)"`

	HTTPAddr string `envconfig:"HTTP_ADDR" default:":9400" desc:"listen address of /metrics, /healthz and /readyz; empty turns them off"`

	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"trace, debug, info, warn or error ([DEFAULT] debug=true is debug)"`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"auto" desc:"json, console, or auto (console on a terminal, JSON otherwise)"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"60s" desc:"how long in-flight work may finish after SIGTERM ([DEFAULT] graceful_shutdown_timeout)"`

	// Derived by Load: parsed forms of the values above.
	transport rpc.TransportURL
	rpcOpts   rpc.Options
	dsRegex   *regexp.Regexp
	level     zerolog.Level
}

// ErrConfig marks a configuration error; its message names the variable.
var ErrConfig = errors.New("configuration error")

// LoadConfig reads and checks the configuration from the environment.
// An error names the variable at fault.
func LoadConfig() (Config, error) {
	var c Config
	if err := envconfig.Process(EnvPrefix, &c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return c, c.finish()
}

func bad(name string, format string, args ...any) error {
	return fmt.Errorf("%w: %s_%s: %s", ErrConfig, EnvPrefix, name, fmt.Sprintf(format, args...))
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
	c.rpcOpts = rpc.DefaultOptions()
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

// Usage writes every variable with its default and description, for --help.
func Usage() string {
	var b strings.Builder
	b.WriteString("vcagent is configured by environment variables only:\n\n")
	_ = envconfig.Usagef(EnvPrefix, &Config{}, &b, "{{range .}}  {{usage_key .}}\n      {{usage_description .}}{{if usage_default .}} (default {{usage_default .}}){{end}}\n{{end}}")
	return b.String()
}
