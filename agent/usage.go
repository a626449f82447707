package agent

import (
	"cmp"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// setting is one row of the configuration table, read from a Config
// field's tags (see Config).
type setting struct {
	index  []int
	env    string // variable name without the prefix
	def    string
	hasDef bool
	desc   string
	keys   []confKey
	mode   string
	secret string // "", "true" or "url"
}

func (s setting) envName() string { return EnvPrefix + "_" + s.env }

// validEnvName is what a variable's name without the prefix may be (an
// exported Go identifier: processEnv names a field after it).
var validEnvName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// knownConfMode tells the modes a conf tag may name after ";":
//
//   - multi: a MultiStrOpt, every occurrence in every file is one element;
//   - zero_default: integer seconds where 0 means the default (nova's
//     periodic task intervals);
//   - debug: [DEFAULT] debug, true sets the level to debug;
//   - vcenter_url: https://host_ip:host_port/sdk from the two keys (port
//     443 when not set);
//   - token_auth: the first key when the second (auth_type) is admin_token,
//     token or v3token;
//   - password_auth: the first key when the second (auth_type) is unset,
//     password or v3password.
func knownConfMode(mode string) bool {
	switch mode {
	case "", "multi", "zero_default", "debug", "vcenter_url", "token_auth", "password_auth":
		return true
	}
	return false
}

// settingsTable reads the table from Config's tags. Every exported field
// is a setting; its variable is named as envconfig names it: VCAGENT_ and
// the upper-cased envconfig tag, else the upper-cased field name.
func settingsTable() ([]setting, error) {
	t := reflect.TypeFor[Config]()
	var out []setting
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		s := setting{index: f.Index, desc: f.Tag.Get("desc"), secret: f.Tag.Get("secret")}
		s.env = strings.ToUpper(cmp.Or(f.Tag.Get("envconfig"), f.Name))
		if !validEnvName.MatchString(s.env) {
			return nil, fmt.Errorf("%w: field %s: %q is not a variable name", ErrConfig, f.Name, s.env)
		}
		s.def, s.hasDef = f.Tag.Lookup("default")
		if conf := f.Tag.Get("conf"); conf != "" {
			keys, mode, _ := strings.Cut(conf, ";")
			if !knownConfMode(mode) {
				return nil, fmt.Errorf("%w: field %s: unknown conf mode %q", ErrConfig, f.Name, mode)
			}
			s.mode = mode
			for _, k := range strings.Split(keys, ",") {
				sec, key, ok := strings.Cut(strings.TrimSpace(k), ".")
				if !ok || sec == "" || key == "" {
					return nil, fmt.Errorf("%w: field %s: conf key %q is not section.key", ErrConfig, f.Name, k)
				}
				s.keys = append(s.keys, confKey{normSection(sec), key})
			}
			if (mode == "vcenter_url" || mode == "token_auth" || mode == "password_auth") != (len(s.keys) == 2) && mode != "" {
				return nil, fmt.Errorf("%w: field %s: conf mode %s needs two keys", ErrConfig, f.Name, mode)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// formatValue is the text of a setting's value, in the syntax of its
// variable.
func formatValue(v reflect.Value) string {
	if v.Type() == reflect.TypeFor[time.Duration]() {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Float32, reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, v.Type().Bits())
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = formatValue(v.Index(i))
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}

// redact hides a secret value: "***" for a set secret; for "url", the
// passwords inside the URL (a transport URL's, or any URL's user info).
func redact(secret, value string) string {
	switch {
	case secret == "" || value == "":
		return value
	case secret == "url":
		if tu, err := rpc.ParseTransportURL(value); err == nil {
			return tu.Redacted()
		}
		if u, err := url.Parse(value); err == nil && u.Opaque == "" {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
			return u.String()
		}
	}
	return "***"
}

// redactDBURL hides the password of an SQLAlchemy URL.
func redactDBURL(value string) string {
	if value == "" {
		return ""
	}
	u, err := url.Parse(value)
	if err != nil || u.Opaque != "" {
		return "***"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// Setting is one line of `vcagent config`: a setting, its effective value
// with every secret redacted, and where the value came from.
type Setting struct {
	// Name is the VCAGENT_* variable, or "[section] option" for what only
	// the files carry.
	Name string
	// Value is the effective value; secrets are "***" (in URLs, the
	// passwords only).
	Value string
	// Source is "default", "env VCAGENT_X" or "file:PATH:section.key".
	Source string
	// Note says more, e.g. that no role uses the value yet.
	Note string
}

// String is the line `vcagent config` prints.
func (s Setting) String() string {
	v := s.Value
	if v == "" || strings.ContainsAny(v, " \t\n#\"'") {
		v = strconv.Quote(v)
	}
	line := s.Name + "=" + v + "  # " + s.Source
	if s.Note != "" {
		line += "; " + s.Note
	}
	return line
}

// Settings lists the effective configuration: every variable, then the
// bus options and the not-yet-used options the files set, with every
// secret redacted.
func (c Config) Settings() []Setting {
	table, err := settingsTable()
	if err != nil {
		return nil
	}
	v := reflect.ValueOf(c)
	var out []Setting
	for _, s := range table {
		src := c.sources[s.env]
		if src == "" {
			src = "default"
		}
		out = append(out, Setting{Name: s.envName(), Value: redact(s.secret, formatValue(v.FieldByIndex(s.index))), Source: src})
	}
	for _, o := range c.fileRPC {
		out = append(out, Setting{Name: o.from.key.String(), Value: o.value, Source: o.from.source(), Note: "bus option (a transport_url query parameter wins)"})
	}
	out = append(out, c.pending.shown...)
	return out
}

// Effective is the text of `vcagent config`: one line per setting, secrets
// redacted, then the options of the files vcagent does not use.
func (c Config) Effective() string {
	var b strings.Builder
	for _, s := range c.Settings() {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	for _, u := range c.unusedOpts {
		fmt.Fprintf(&b, "# not used: [%s] %s (%s)\n", u.Section, u.Option, u.File)
	}
	return b.String()
}

// Usage is the text of `vcagent --help`: the commands, the precedence, and
// every variable with its default and its nova.conf option, all from
// Config's tags.
func Usage() string {
	var b strings.Builder
	b.WriteString(`vcagent joins an OpenStack cloud's RabbitMQ bus as nova-compute (VMware vCenter driver).

usage:
  vcagent [--config-file FILE]... [--config-dir DIR]...   run the agent
  vcagent config [--config-file FILE]... [--config-dir DIR]...
                                   print the effective configuration (secrets redacted) and where each value comes from
  vcagent --help                   this text

Configuration: every setting has a default; the services' own oslo.config INI files
(nova.conf, nova-compute.conf, ...) override the defaults, and VCAGENT_* environment
variables override the files. The files are those of VCAGENT_CONFIG_FILE, then the
--config-file and --config-dir arguments, read in order; a later file wins. Options
vcagent does not use are logged at debug level; a bad value stops start-up with an
error naming the file, section and option.

Settings (variable, default, file option):

`)
	table, err := settingsTable()
	if err != nil {
		b.WriteString(err.Error())
		return b.String()
	}
	for _, s := range table {
		b.WriteString("  " + s.envName())
		if s.hasDef && s.def != "" {
			b.WriteString("  (default " + s.def + ")")
		}
		b.WriteString("\n")
		if len(s.keys) > 0 {
			b.WriteString("      file: " + confKeysText(s) + "\n")
		}
		b.WriteString("      " + s.desc + "\n")
	}
	b.WriteString(`
Read from the files only:
  [oslo_messaging_rabbit] options the bus implements (amqp_durable_queues, amqp_auto_delete,
      rabbit_ha_queues, rabbit_quorum_queue, rabbit_quorum_*, rabbit_transient_queues_ttl,
      rabbit_qos_prefetch_count, heartbeat_timeout_threshold, kombu_reconnect_delay,
      kombu_missing_consumer_retry_timeout, rabbit_retry_interval, rabbit_retry_backoff,
      rabbit_interval_max, ssl, ssl_ca_file, ssl_cert_file, ssl_key_file) and [DEFAULT]
      rpc_response_timeout, executor_thread_pool_size; the same option in the
      transport_url's query string wins.
  Not used yet (shown by vcagent config for the roles to come): cinder.conf's [DEFAULT]
      enabled_backends, each enabled backend section with volume_driver =
      cinder.volume.drivers.vmware.vmdk.VMwareVcVmdkDriver and its vmware_* options,
      [database] connection; the neutron agent's bridge_mappings.
`)
	return b.String()
}

// confKeysText is the file option(s) of s for --help.
func confKeysText(s setting) string {
	names := make([]string, len(s.keys))
	for i, k := range s.keys {
		names[i] = k.String()
	}
	switch s.mode {
	case "vcenter_url":
		return names[0] + " + " + s.keys[1].key
	case "token_auth":
		return names[0] + " (with auth_type = admin_token or token)"
	case "password_auth":
		return names[0] + " (with auth_type = password)"
	case "multi":
		return names[0] + " (repeated)"
	case "debug":
		return names[0] + " = true"
	}
	return strings.Join(names, " or ")
}
