package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// This file reads the OpenStack services' own INI files (nova.conf,
// nova-compute.conf, cinder.conf, the neutron agent's ini) with
// oslo.config's semantics, so that replacing the Python service only means
// replacing the container image. Which option feeds which setting is not
// written here: the conf tags of Config are the one table (see config.go).

// iniValue is one occurrence of an option in a file.
type iniValue struct {
	value string
	line  int
}

// iniFile is one parsed file: section → option → occurrences in file order.
// Section names are normalised as oslo.config does: lower case, except
// DEFAULT (any case) which is DEFAULT.
type iniFile struct {
	path     string
	sections map[string]map[string][]iniValue
}

// normSection is oslo.config's group name normalisation.
func normSection(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "default" {
		return "DEFAULT"
	}
	return s
}

// parseINI parses data as oslo.config's iniparser does: "[section]"
// headers, "key = value" or "key: value", "#" and ";" comment lines (no
// inline comments), indented continuation lines joined with "\n", a blank
// line ending a value, one pair of matching quotes around a value removed,
// and an option given several times kept in order (MultiStrOpt). Syntax
// errors name the file and line but never echo the line: it may hold a
// password.
func parseINI(path string, data []byte) (*iniFile, error) {
	f := &iniFile{path: path, sections: map[string]map[string][]iniValue{}}
	section := ""
	var key string
	var value []string
	keyLine := 0
	flush := func() {
		if key == "" {
			return
		}
		f.sections[section][key] = append(f.sections[section][key], iniValue{value: strings.Join(value, "\n"), line: keyLine})
		key, value = "", nil
	}
	fail := func(n int, msg string) error {
		return fmt.Errorf("%w: %s line %d: %s", ErrConfig, path, n, msg)
	}
	text := strings.TrimPrefix(string(data), "\ufeff")
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		line = strings.TrimRight(line, " \t\r\f\v")
		switch {
		case line == "":
			flush()
			continue
		case line[0] == ' ' || line[0] == '\t':
			if key == "" {
				// a lone indented comment line is a comment, as in oslo
				if t := strings.TrimLeft(line, " \t"); t[0] == '#' || t[0] == ';' {
					continue
				}
				return nil, fail(n, "continuation line without an option before it")
			}
			value = append(value, strings.TrimLeft(line, " \t"))
			continue
		}
		flush()
		switch line[0] {
		case '[':
			if line[len(line)-1] != ']' {
				return nil, fail(n, "invalid section header")
			}
			name := strings.TrimSpace(line[1 : len(line)-1])
			if name == "" {
				return nil, fail(n, "empty section name")
			}
			section = normSection(name)
			if f.sections[section] == nil {
				f.sections[section] = map[string][]iniValue{}
			}
		case '#', ';':
		default:
			colon, equal := strings.IndexByte(line, ':'), strings.IndexByte(line, '=')
			var k, v string
			switch {
			case colon < 0 && equal < 0:
				return nil, fail(n, "not a section header, comment or key = value")
			case colon < 0 || (equal >= 0 && equal < colon):
				k, v = line[:equal], line[equal+1:]
			default:
				k, v = line[:colon], line[colon+1:]
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if k == "" {
				return nil, fail(n, "empty option name")
			}
			if section == "" {
				return nil, fail(n, "option before the first [section]")
			}
			if len(v) >= 2 && v[0] == v[len(v)-1] && (v[0] == '"' || v[0] == '\'') {
				v = v[1 : len(v)-1]
			}
			key, value, keyLine = k, []string{v}, n
		}
	}
	flush()
	return f, nil
}

// confFiles is the ordered set of files of one load, with the record of
// which options the configuration used (the rest is reported as unused).
type confFiles struct {
	files []*iniFile
	used  map[confKey]bool
}

// confKey names an option: [section] key.
type confKey struct{ section, key string }

func (k confKey) String() string { return "[" + k.section + "] " + k.key }

// origin is where one value came from: a file, a section and an option.
type origin struct {
	path string
	key  confKey
	line int
}

func (o origin) String() string { return o.path + " " + o.key.String() }

// source is how a setting's source is shown by `vcagent config`.
func (o origin) source() string { return "file:" + o.path + ":" + o.key.section + "." + o.key.key }

// fileError is a bad value in a file; its message names the file, the
// section and the option.
func fileError(o origin, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, o, fmt.Sprintf(format, args...))
}

// expandConfigPaths turns the configured paths into files in reading order:
// a directory stands for its *.conf files in name order (oslo.config's
// --config-dir).
func expandConfigPaths(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%w: config file: %w", ErrConfig, err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		m, err := filepath.Glob(filepath.Join(p, "*.conf"))
		if err != nil {
			return nil, fmt.Errorf("%w: config dir %s: %w", ErrConfig, p, err)
		}
		sort.Strings(m)
		out = append(out, m...)
	}
	return out, nil
}

// readConfFiles reads and parses the files in order.
func readConfFiles(paths []string) (*confFiles, error) {
	cf := &confFiles{used: map[confKey]bool{}}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%w: config file: %w", ErrConfig, err)
		}
		f, err := parseINI(p, data)
		if err != nil {
			return nil, err
		}
		cf.files = append(cf.files, f)
	}
	return cf, nil
}

// lookup returns the value of the first of keys (alternative names, as
// oslo's deprecated names) in the last file that sets one of them; within
// a file the last occurrence wins. It marks the keys used.
func (cf *confFiles) lookup(keys ...confKey) (string, origin, bool) {
	for _, k := range keys {
		cf.used[k] = true
	}
	for i := len(cf.files) - 1; i >= 0; i-- {
		f := cf.files[i]
		for _, k := range keys {
			if vs := f.sections[k.section][k.key]; len(vs) > 0 {
				v := vs[len(vs)-1]
				return v.value, origin{path: f.path, key: k, line: v.line}, true
			}
		}
	}
	return "", origin{}, false
}

// lookupMulti returns every occurrence of key across the files, in file
// order: oslo.config's MultiStrOpt.
func (cf *confFiles) lookupMulti(k confKey) ([]string, []origin) {
	cf.used[k] = true
	var vals []string
	var origins []origin
	for _, f := range cf.files {
		for _, v := range f.sections[k.section][k.key] {
			vals = append(vals, v.value)
			origins = append(origins, origin{path: f.path, key: k, line: v.line})
		}
	}
	return vals, origins
}

// sectionKeys lists the options set in section across the files, sorted.
func (cf *confFiles) sectionKeys(section string) []string {
	seen := map[string]bool{}
	for _, f := range cf.files {
		for k := range f.sections[section] {
			seen[k] = true
		}
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// unused lists the options set in the files that nothing read, each once
// with the first file that sets it, sorted.
func (cf *confFiles) unused() []UnusedOption {
	seen := map[confKey]bool{}
	var out []UnusedOption
	for _, f := range cf.files {
		for s, opts := range f.sections {
			for k := range opts {
				ck := confKey{s, k}
				if cf.used[ck] || seen[ck] {
					continue
				}
				seen[ck] = true
				out = append(out, UnusedOption{File: f.path, Section: s, Option: k})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Section != out[j].Section {
			return out[i].Section < out[j].Section
		}
		return out[i].Option < out[j].Option
	})
	return out
}

// UnusedOption is an option a file sets that vcagent does not use; the
// agent logs each once at debug level (without its value: it may be a
// secret).
type UnusedOption struct {
	File, Section, Option string
}

// errNoSubst marks a $reference that names no option the files set.
var errNoSubst = errors.New("no such option to substitute")

// substitute expands oslo.config's templates in v, an option of group:
// "$$" (or "\$") is a literal "$"; "$name" and "${name}" are the value of
// name in group, else in [DEFAULT]; "$group.name" and "${group.name}" the
// value of [group] name; each looked up in the files (vcagent does not know
// the defaults of options the files do not set). A "$" followed by
// anything else is kept.
func (cf *confFiles) substitute(v, group string, depth int) (string, error) {
	if !strings.Contains(v, "$") {
		return v, nil
	}
	if depth > 10 {
		return "", fmt.Errorf("%w: substitution nested too deeply", errNoSubst)
	}
	v = strings.ReplaceAll(v, `\$`, "$$")
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '$' || i+1 == len(v) {
			b.WriteByte(v[i])
			continue
		}
		rest := v[i+1:]
		var name string
		switch {
		case rest[0] == '$':
			b.WriteByte('$')
			i++
			continue
		case rest[0] == '{':
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name = rest[1:end]
			i += end + 1
		case isIdentStart(rest[0]):
			n := 1
			for n < len(rest) && (isIdentStart(rest[n]) || rest[n] == '.' || (rest[n] >= '0' && rest[n] <= '9')) {
				n++
			}
			name = rest[:n]
			i += n
		default:
			b.WriteByte('$')
			continue
		}
		keys := []confKey{{group, name}, {"DEFAULT", name}}
		if g, o, ok := strings.Cut(name, "."); ok {
			keys = []confKey{{normSection(g), o}}
		}
		var ref string
		var from origin
		found := false
		for _, k := range keys {
			if ref, from, found = cf.lookup(k); found {
				break
			}
		}
		if !found {
			return "", fmt.Errorf("%w: $%s", errNoSubst, name)
		}
		ref, err := cf.substitute(ref, from.key.section, depth+1)
		if err != nil {
			return "", err
		}
		b.WriteString(ref)
	}
	return b.String(), nil
}

// substFailed is the error for a failed substitution in o's value; for a
// secret it does not name the reference, which is part of the secret.
func substFailed(o origin, err error, secret bool) error {
	if secret {
		return fileError(o, "a $ in the value names no option (write $$ for a literal $)")
	}
	return fileError(o, "%v", err)
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// ParseConfigArgs takes the --config-file PATH and --config-dir DIR flags
// (also spelled --flag=value, repeatable, in command-line order as
// oslo.config reads them) out of args, and returns the paths and the other
// arguments.
func ParseConfigArgs(args []string) (paths, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		if name != "--config-file" && name != "--config-dir" {
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 == len(args) {
				return nil, nil, fmt.Errorf("%s needs a path", name)
			}
			i++
			val = args[i]
		}
		if val == "" {
			return nil, nil, fmt.Errorf("%s needs a path", name)
		}
		if name == "--config-dir" {
			st, err := os.Stat(val)
			if err != nil {
				return nil, nil, fmt.Errorf("--config-dir: %w", err)
			}
			if !st.IsDir() {
				return nil, nil, fmt.Errorf("--config-dir %s is not a directory", val)
			}
		}
		paths = append(paths, val)
	}
	return paths, rest, nil
}

// setFromFile sets v from an oslo.config value: oslo's boolean spellings,
// integers, durations in integer seconds, comma-separated lists. The error
// is the message after the file, section and option.
func setFromFile(v reflect.Value, raw string) error {
	t := strings.TrimSpace(raw)
	if v.Type() == reflect.TypeFor[time.Duration]() {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", raw)
		}
		v.SetInt(n * int64(time.Second))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(raw)
	case reflect.Bool:
		b, err := osloBool(t)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(t, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not an integer", raw)
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(t, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a non-negative integer", raw)
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(t, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a number", raw)
		}
		v.SetFloat(f)
	case reflect.Slice: // a ListOpt
		var parts []string
		if t != "" {
			parts = strings.Split(t, ",")
			for i := range parts {
				parts[i] = strings.TrimSpace(parts[i])
			}
		}
		return setSlice(v, parts, setFromFile)
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// setSlice sets the slice v to the elements parts, each set by set.
func setSlice(v reflect.Value, parts []string, set func(reflect.Value, string) error) error {
	sl := reflect.MakeSlice(v.Type(), len(parts), len(parts))
	for i, p := range parts {
		if err := set(sl.Index(i), p); err != nil {
			return err
		}
	}
	v.Set(sl)
	return nil
}

// osloBool is oslo.config's Boolean type: true, 1, on, yes and false, 0,
// off, no, in any case.
func osloBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "on", "yes":
		return true, nil
	case "0", "false", "off", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}

// isSecretKey tells the options whose values are secrets: passwords,
// tokens, and URLs that may hold a password.
func isSecretKey(key string) bool {
	return strings.Contains(key, "password") || strings.Contains(key, "token") ||
		strings.Contains(key, "secret") || key == "transport_url" || key == "connection"
}

// value looks keys up and expands the value's $templates.
func (cf *confFiles) value(keys ...confKey) (string, origin, bool, error) {
	raw, o, ok := cf.lookup(keys...)
	if !ok {
		return "", o, false, nil
	}
	v, err := cf.substitute(raw, o.key.section, 0)
	if err != nil {
		return "", o, true, substFailed(o, err, isSecretKey(o.key.key))
	}
	return v, o, true, nil
}

// applyFile sets the field v of setting s from the files, if they set it,
// and returns where the value came from (nothing when they do not).
func applyFile(cf *confFiles, s setting, v reflect.Value) ([]origin, error) {
	set := func(o origin, raw string) ([]origin, error) {
		if err := setFromFile(v, raw); err != nil {
			if s.secret != "" {
				return nil, fileError(o, "invalid value")
			}
			return nil, fileError(o, "%v", err)
		}
		return []origin{o}, nil
	}
	switch s.mode {
	case "multi":
		vals, origins := cf.lookupMulti(s.keys[0])
		if len(vals) == 0 {
			return nil, nil
		}
		sl := reflect.MakeSlice(v.Type(), len(vals), len(vals))
		for i, raw := range vals {
			x, err := cf.substitute(raw, origins[i].key.section, 0)
			if err != nil {
				return nil, substFailed(origins[i], err, s.secret != "")
			}
			if err := setFromFile(sl.Index(i), x); err != nil {
				return nil, fileError(origins[i], "%v", err)
			}
		}
		v.Set(sl)
		return origins, nil
	case "vcenter_url":
		ip, o, ok, err := cf.value(s.keys[0])
		if err != nil || !ok || strings.TrimSpace(ip) == "" {
			cf.used[s.keys[1]] = true
			return nil, err
		}
		origins := []origin{o}
		port, po, ok, err := cf.value(s.keys[1])
		if err != nil {
			return nil, err
		}
		if ok {
			origins = append(origins, po)
		} else {
			port = "443"
		}
		if n, err := strconv.Atoi(strings.TrimSpace(port)); err != nil || n < 1 || n > 65535 {
			return nil, fileError(po, "%q is not a port number", port)
		}
		host := strings.Trim(strings.TrimSpace(ip), "[]")
		v.SetString("https://" + net.JoinHostPort(host, strings.TrimSpace(port)) + "/sdk")
		return origins, nil
	case "token_auth", "password_auth":
		authType, ao, _, err := cf.value(s.keys[1])
		if err != nil {
			return nil, err
		}
		var tokenAuth bool
		switch strings.ToLower(strings.TrimSpace(authType)) {
		case "admin_token", "token", "v3token":
			tokenAuth = true
		case "", "password", "v3password":
		default:
			return nil, fileError(ao, "auth_type %q is not supported: password, v3password, admin_token or token", authType)
		}
		raw, o, ok, err := cf.value(s.keys[0])
		if err != nil || !ok || tokenAuth != (s.mode == "token_auth") {
			return nil, err
		}
		return set(o, raw)
	}
	raw, o, ok, err := cf.value(s.keys...)
	if err != nil || !ok {
		return nil, err
	}
	switch s.mode {
	case "zero_default":
		if n, err := strconv.ParseInt(strings.TrimSpace(raw), 10, 64); err == nil && n == 0 {
			return nil, nil
		}
	case "debug":
		b, err := osloBool(raw)
		if err != nil {
			return nil, fileError(o, "%v", err)
		}
		if !b {
			return nil, nil
		}
		raw = "debug"
		v.SetString(raw)
		return []origin{o}, nil
	}
	return set(o, raw)
}

// fileOption is a bus option a file sets.
type fileOption struct {
	name, value string
	from        origin
}

// rpcOptions returns the options of [oslo_messaging_rabbit], and
// [DEFAULT] rpc_response_timeout and executor_thread_pool_size, that the
// bus implements; a bad value is an error, an option it does not know is
// left unused.
func (cf *confFiles) rpcOptions() ([]fileOption, error) {
	var keys []confKey
	for _, k := range cf.sectionKeys("oslo_messaging_rabbit") {
		keys = append(keys, confKey{"oslo_messaging_rabbit", k})
	}
	keys = append(keys, confKey{"DEFAULT", "rpc_response_timeout"}, confKey{"DEFAULT", "executor_thread_pool_size"})
	var out []fileOption
	for _, k := range keys {
		v, o, ok, err := cf.value(k)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		scratch := rpc.DefaultOptions()
		known, err := scratch.Set(k.key, strings.TrimSpace(v))
		if err != nil {
			return nil, fileError(o, "%v", err)
		}
		if !known {
			delete(cf.used, k)
			continue
		}
		out = append(out, fileOption{name: k.key, value: strings.TrimSpace(v), from: o})
	}
	return out, nil
}

// VMDKDriver is cinder's VMware VMDK volume driver.
const VMDKDriver = "cinder.volume.drivers.vmware.vmdk.VMwareVcVmdkDriver"

// PendingOptions are the cinder-volume and neutron agent options the files
// carry that no role of vcagent uses yet. Load reads them so that
// `vcagent config` shows them and the roles, when they land, take them
// from here instead of reading the files again; nothing acts on them.
type PendingOptions struct {
	// EnabledBackends is cinder's [DEFAULT] enabled_backends.
	EnabledBackends []string
	// VolumeBackends are the enabled backend sections whose volume_driver
	// is VMDKDriver.
	VolumeBackends []VolumeBackend
	// DatabaseConnection is [database] connection (cinder-volume's
	// database; nova-compute has none). A secret.
	DatabaseConnection string
	// BridgeMappings is the neutron agent's bridge_mappings, and
	// BridgeMappingsSection the section that set it.
	BridgeMappings        []string
	BridgeMappingsSection string

	shown []Setting // for `vcagent config`, redacted
}

// VolumeBackend is one cinder backend section served by the VMDK driver.
type VolumeBackend struct {
	// Section is the backend's section (its name in enabled_backends).
	Section string
	// BackendName is volume_backend_name.
	BackendName string
	// VMware holds the section's vmware_* options by name, every
	// occurrence (vmware_cluster_name is a MultiStrOpt).
	// vmware_host_password is a secret.
	VMware map[string][]string
}

// pendingOptions reads the options of PendingOptions.
func (cf *confFiles) pendingOptions() (PendingOptions, error) {
	var p PendingOptions
	const note = "not used yet"
	show := func(o origin, value, role string) {
		p.shown = append(p.shown, Setting{Name: o.key.String(), Value: value, Source: o.source(), Note: note + " (" + role + ")"})
	}
	if v, o, ok, err := cf.value(confKey{"DEFAULT", "enabled_backends"}); err != nil {
		return p, err
	} else if ok {
		for _, b := range strings.Split(v, ",") {
			if b = strings.TrimSpace(b); b != "" {
				p.EnabledBackends = append(p.EnabledBackends, b)
			}
		}
		show(o, strings.Join(p.EnabledBackends, ","), "cinder-volume")
	}
	for _, name := range p.EnabledBackends {
		sec := normSection(name)
		drv, o, ok, err := cf.value(confKey{sec, "volume_driver"})
		if err != nil {
			return p, err
		}
		if !ok || strings.TrimSpace(drv) != VMDKDriver {
			delete(cf.used, confKey{sec, "volume_driver"})
			continue
		}
		show(o, drv, "cinder-volume")
		b := VolumeBackend{Section: sec, VMware: map[string][]string{}}
		if v, o, ok, err := cf.value(confKey{sec, "volume_backend_name"}); err != nil {
			return p, err
		} else if ok {
			b.BackendName = v
			show(o, v, "cinder-volume")
		}
		for _, k := range cf.sectionKeys(sec) {
			if !strings.HasPrefix(k, "vmware_") {
				continue
			}
			vals, origins := cf.lookupMulti(confKey{sec, k})
			if k != "vmware_cluster_name" {
				vals, origins = vals[len(vals)-1:], origins[len(origins)-1:]
			}
			for i, v := range vals {
				x, err := cf.substitute(v, sec, 0)
				if err != nil {
					return p, substFailed(origins[i], err, isSecretKey(k))
				}
				b.VMware[k] = append(b.VMware[k], x)
				if isSecretKey(k) && x != "" {
					x = "***"
				}
				show(origins[i], x, "cinder-volume")
			}
		}
		p.VolumeBackends = append(p.VolumeBackends, b)
	}
	if v, o, ok, err := cf.value(confKey{"database", "connection"}); err != nil {
		return p, err
	} else if ok {
		p.DatabaseConnection = v
		show(o, redactDBURL(v), "cinder-volume")
	}
	for _, f := range cf.files {
		secs := make([]string, 0, len(f.sections))
		for sec := range f.sections {
			secs = append(secs, sec)
		}
		sort.Strings(secs)
		for _, sec := range secs {
			if _, has := f.sections[sec]["bridge_mappings"]; has && p.BridgeMappingsSection == "" {
				p.BridgeMappingsSection = sec
			}
		}
	}
	if p.BridgeMappingsSection != "" {
		v, o, _, err := cf.value(confKey{p.BridgeMappingsSection, "bridge_mappings"})
		if err != nil {
			return p, err
		}
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				p.BridgeMappings = append(p.BridgeMappings, m)
			}
		}
		show(o, strings.Join(p.BridgeMappings, ","), "neutron agent")
	}
	return p, nil
}
