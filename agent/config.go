package agent

import (
	"errors"
	"fmt"
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

	SimClusters        int `envconfig:"SIM_CLUSTERS" default:"2" desc:"embedded simulator: number of clusters"`
	SimHostsPerCluster int `envconfig:"SIM_HOSTS_PER_CLUSTER" default:"3" desc:"embedded simulator: ESXi hosts per cluster"`
	SimDatastores      int `envconfig:"SIM_DATASTORES" default:"2" desc:"embedded simulator: shared datastores"`

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
