package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConf writes name in dir and returns its path.
func writeConf(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// setEnv gives the test the VCAGENT_* variables of m and no others: those
// of the process are unset until the test ends (t.Setenv restores them).
func setEnv(t *testing.T, m map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix+"_") {
			t.Setenv(k, "")
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	for k, v := range m {
		t.Setenv(k, v)
	}
}

func TestParseINI(t *testing.T) {
	tests := []struct {
		name, text string
		want       map[string]map[string][]string
	}{
		{"sections and separators", "[DEFAULT]\nhost = a\nmy_ip: 10.0.0.1\n[vmware]\nhost_ip=vc\n",
			map[string]map[string][]string{"DEFAULT": {"host": {"a"}, "my_ip": {"10.0.0.1"}}, "vmware": {"host_ip": {"vc"}}}},
		{"DEFAULT in any case, other sections lower-cased", "[default]\nhost = a\n[VMware]\nx = 1\n",
			map[string]map[string][]string{"DEFAULT": {"host": {"a"}}, "vmware": {"x": {"1"}}}},
		{"comments, no inline comments", "# c\n; c\n[DEFAULT]\n  # indented comment\nhost = a # not a comment\n",
			map[string]map[string][]string{"DEFAULT": {"host": {"a # not a comment"}}}},
		{"continuation lines", "[DEFAULT]\nx = one\n  two\n\tthree\n\ny = 2\n",
			map[string]map[string][]string{"DEFAULT": {"x": {"one\ntwo\nthree"}, "y": {"2"}}}},
		{"repeated keys kept in order", "[vmware]\ncluster_name = C1\ncluster_name = C2\n",
			map[string]map[string][]string{"vmware": {"cluster_name": {"C1", "C2"}}}},
		{"quotes, = inside values, empty values, CRLF", "[DEFAULT]\r\na = \"q v\"\r\nb = x=y:z\r\nc =\r\n",
			map[string]map[string][]string{"DEFAULT": {"a": {"q v"}, "b": {"x=y:z"}, "c": {""}}}},
		{"a section given twice merges", "[a]\nx = 1\n[b]\n[a]\ny = 2\n",
			map[string]map[string][]string{"a": {"x": {"1"}, "y": {"2"}}, "b": {}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseINI("x.conf", []byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]map[string][]string{}
			for s, opts := range f.sections {
				got[s] = map[string][]string{}
				for k, vs := range opts {
					for _, v := range vs {
						got[s][k] = append(got[s][k], v.value)
					}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseINIErrorsNameFileAndLineNotTheLine(t *testing.T) {
	for _, text := range []string{
		"host = a\n",                  // before any section
		"[DEFAULT]\nsecretline\n",     // no =
		"[DEFAULT\nx = 1\n",           // bad header
		"[]\n",                        // empty section
		"[DEFAULT]\n\n  continued\n",  // continuation without option
		"[DEFAULT]\n = secretvalue\n", // empty key
	} {
		_, err := parseINI("nova.conf", []byte(text))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "nova.conf line ") {
			t.Errorf("%q: error %v", text, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: error shows the line: %v", text, err)
		}
	}
}

func TestLoadFromFiles(t *testing.T) {
	dir := t.TempDir()
	nova := writeConf(t, dir, "nova.conf", `[DEFAULT]
transport_url = rabbit://nova:rabbitpw@rmq1:5672,nova:rabbitpw@rmq2:5672/nova
host = from-nova-conf
control_exchange = nova
my_ip = 10.1.2.3
report_interval = 7
update_resources_interval = 0
scheduler_instance_sync_interval = 300
cpu_allocation_ratio = 4.0
initial_ram_allocation_ratio = 1.0
reserved_host_memory_mb = 1024
reserved_host_cpus = 2
graceful_shutdown_timeout = 30
debug = yes
state_path = /var/lib/nova
service_down_time = 60
rpc_response_timeout = 90

[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 30
amqp_durable_queues = True
rabbit_qos_prefetch_count = 10
heartbeat_rate = 3

[vmware]
host_ip = vc.example.com
host_port = 8443
host_username = administrator@vsphere.local
host_password = vc$$pw
insecure = ON
cluster_name = C1
cluster_name = C2
datastore_regex = ^nfs-
cache_prefix = $my_ip-cache
task_poll_interval = 0.5

[placement]
auth_type = password
auth_url = http://keystone:5000/v3
username = nova
password = placementpw
project_name = services
user_domain_name = Users
project_domain_name = Projects
region_name = RegionTwo
endpoint_override = http://placement:8778

[glance]
endpoint_override = http://glance:9292

[database]
connection = mysql+pymysql://nova:dbpw@db/nova
`)
	site := writeConf(t, dir, "site.conf", "[default]\nhost = from-site\n[vmware]\ncluster_name = C3\n")

	setEnv(t, nil)
	c, err := Load(LoadOptions{Files: []string{nova, site}})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"transport url", c.TransportURL, "rabbit://nova:rabbitpw@rmq1:5672,nova:rabbitpw@rmq2:5672/nova"},
		{"later file wins", c.Host, "from-site"},
		{"my_ip", c.MyIP, "10.1.2.3"},
		{"integer seconds", c.ReportInterval, 7 * time.Second},
		{"0 is nova's default interval", c.ResourceInterval, 60 * time.Second},
		{"sync interval", c.SchedulerSyncInterval, 300 * time.Second},
		{"ratio", c.CPUAllocationRatio, 4.0},
		{"initial ratio", c.InitialRAMAllocationRatio, 1.0},
		{"reserved memory", c.ReservedHostMemoryMB, int64(1024)},
		{"reserved cpus", c.ReservedHostCPUs, int64(2)},
		{"graceful_shutdown_timeout", c.ShutdownTimeout, 30 * time.Second},
		{"debug = yes", c.LogLevel, "debug"},
		{"vCenter URL from host_ip and host_port", c.VCenterURL, "https://vc.example.com:8443/sdk"},
		{"vCenter user", c.VCenterUser, "administrator@vsphere.local"},
		{"$$ is $", c.VCenterPassword, "vc$pw"},
		{"insecure = on", c.VCenterInsecure, true},
		{"cluster_name repeated, across files", c.Clusters, []string{"C1", "C2", "C3"}},
		{"datastore regex", c.DatastoreRegex, "^nfs-"},
		{"$my_ip substituted", c.CachePrefix, "10.1.2.3-cache"},
		{"auth url", c.AuthURL, "http://keystone:5000/v3"},
		{"auth user", c.AuthUsername, "nova"},
		{"auth password", c.AuthPassword, "placementpw"},
		{"project", c.AuthProjectName, "services"},
		{"user domain", c.AuthUserDomainName, "Users"},
		{"project domain", c.AuthProjectDomainName, "Projects"},
		{"region", c.RegionName, "RegionTwo"},
		{"no token with password auth", c.AuthToken, ""},
		{"placement endpoint", c.PlacementEndpoint, "http://placement:8778"},
		{"glance endpoint", c.GlanceEndpoint, "http://glance:9292"},
		{"bus option from the file", c.rpcOpts.HeartbeatTimeout, 30 * time.Second},
		{"bus boolean", c.rpcOpts.DurableQueues, true},
		{"bus integer", c.rpcOpts.PrefetchCount, 10},
		{"[DEFAULT] rpc option", c.rpcOpts.ResponseTimeout, 90 * time.Second},
		{"database connection kept for cinder-volume", c.Pending().DatabaseConnection, "mysql+pymysql://nova:dbpw@db/nova"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s: got %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
	var unused []string
	for _, u := range c.Unused() {
		unused = append(unused, u.Section+"."+u.Option)
	}
	for _, want := range []string{"DEFAULT.state_path", "DEFAULT.service_down_time", "oslo_messaging_rabbit.heartbeat_rate", "vmware.task_poll_interval"} {
		if !strings.Contains(strings.Join(unused, " "), want) {
			t.Errorf("unused options %v lack %s", unused, want)
		}
	}
	for _, used := range []string{"DEFAULT.host", "vmware.cluster_name", "placement.auth_type", "database.connection", "oslo_messaging_rabbit.amqp_durable_queues"} {
		if strings.Contains(" "+strings.Join(unused, " ")+" ", " "+used+" ") {
			t.Errorf("%s is reported unused", used)
		}
	}
}

// TestPrecedence: environment over files over defaults; VCAGENT_CONFIG_FILE
// before --config-file; the sources say so.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	a := writeConf(t, dir, "a.conf", "[DEFAULT]\nhost = a\nmy_ip = 10.0.0.1\nreport_interval = 20\n[vmware]\ncluster_name = FILE1\n")
	b := writeConf(t, dir, "b.conf", "[DEFAULT]\nhost = b\n")
	env := map[string]string{
		"VCAGENT_CONFIG_FILE":     a,
		"VCAGENT_REPORT_INTERVAL": "3s",
		"VCAGENT_CLUSTERS":        "E1,E2",
	}
	setEnv(t, env)
	c, err := Load(LoadOptions{Files: []string{b}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "b" || c.MyIP != "10.0.0.1" || c.ReportInterval != 3*time.Second || !reflect.DeepEqual(c.Clusters, []string{"E1", "E2"}) || c.ControlExchange != "nova" {
		t.Fatalf("got host %q my_ip %q report %s clusters %v exchange %q", c.Host, c.MyIP, c.ReportInterval, c.Clusters, c.ControlExchange)
	}
	src := map[string]string{}
	for _, s := range c.Settings() {
		src[s.Name] = s.Source
	}
	want := map[string]string{
		"VCAGENT_HOST":             "file:" + b + ":DEFAULT.host",
		"VCAGENT_MY_IP":            "file:" + a + ":DEFAULT.my_ip",
		"VCAGENT_REPORT_INTERVAL":  "env VCAGENT_REPORT_INTERVAL",
		"VCAGENT_CLUSTERS":         "env VCAGENT_CLUSTERS",
		"VCAGENT_CONTROL_EXCHANGE": "default",
		"VCAGENT_CONFIG_FILE":      "env VCAGENT_CONFIG_FILE, --config-file",
	}
	for k, v := range want {
		if src[k] != v {
			t.Errorf("%s from %q, want %q", k, src[k], v)
		}
	}
	if !reflect.DeepEqual(c.ConfigFiles, []string{a, b}) {
		t.Errorf("config files %v", c.ConfigFiles)
	}

	t.Run("an empty variable overrides the file", func(t *testing.T) {
		f := writeConf(t, dir, "vc.conf", "[vmware]\nhost_ip = vc\nhost_username = u\n")
		setEnv(t, map[string]string{"VCAGENT_VCENTER_URL": ""})
		c, err := Load(LoadOptions{Files: []string{f}})
		if err != nil || c.VCenterURL != "" {
			t.Fatalf("%q, %v", c.VCenterURL, err)
		}
	})
	t.Run("a config dir is its *.conf files in name order", func(t *testing.T) {
		d := filepath.Join(dir, "nova.conf.d")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeConf(t, d, "20-b.conf", "[DEFAULT]\nhost = twenty\n")
		writeConf(t, d, "10-a.conf", "[DEFAULT]\nhost = ten\nmy_ip = 10.9.9.9\n")
		writeConf(t, d, "99-z.conf.disabled", "[DEFAULT]\nhost = ignored\n")
		paths, rest, err := ParseConfigArgs([]string{"--config-file", a, "config", "--config-dir=" + d})
		if err != nil || !reflect.DeepEqual(rest, []string{"config"}) {
			t.Fatal(rest, err)
		}
		setEnv(t, nil)
		c, err := Load(LoadOptions{Files: paths})
		if err != nil || c.Host != "twenty" || c.MyIP != "10.9.9.9" {
			t.Fatalf("%q %q %v", c.Host, c.MyIP, err)
		}
	})
	t.Run("token auth", func(t *testing.T) {
		f := writeConf(t, dir, "tok.conf", "[placement]\nauth_type = admin_token\nendpoint = http://pl:8778\ntoken = tok\nauth_url = http://ks/v3\nusername = u\npassword = p\n")
		setEnv(t, nil)
		c, err := Load(LoadOptions{Files: []string{f}})
		if err != nil || c.AuthToken != "tok" || c.PlacementEndpoint != "http://pl:8778" || c.AuthURL != "" || c.AuthPassword != "" {
			t.Fatalf("%+v %v", c, err)
		}
	})
}

// TestFileErrorsNameFileSectionOption: a bad value in a file stops Load
// with an error naming the file, the section and the option.
func TestFileErrorsNameFileSectionOption(t *testing.T) {
	setEnv(t, nil)
	tests := []struct{ text, want string }{
		{"[DEFAULT]\nreport_interval = abc\n", `[DEFAULT] report_interval: "abc" is not an integer`},
		{"[DEFAULT]\nreport_interval = -5\n", `[DEFAULT] report_interval: must be positive`},
		{"[DEFAULT]\nreserved_host_memory_mb = lots\n", `[DEFAULT] reserved_host_memory_mb: "lots" is not an integer`},
		{"[DEFAULT]\ncpu_allocation_ratio = high\n", `[DEFAULT] cpu_allocation_ratio: "high" is not a number`},
		{"[DEFAULT]\ndebug = maybe\n", `[DEFAULT] debug: "maybe" is not a boolean`},
		{"[DEFAULT]\nmy_ip = nowhere\n", `[DEFAULT] my_ip: "nowhere" is not an IP address`},
		{"[DEFAULT]\ntransport_url = kafka://h/\n", `[DEFAULT] transport_url: `},
		{"[DEFAULT]\nhost = $nosuchopt\n", `[DEFAULT] host: no such option to substitute: $nosuchopt`},
		{"[vmware]\ninsecure = perhaps\n", `[vmware] insecure: "perhaps" is not a boolean`},
		{"[vmware]\ninsecure = y\n", `[vmware] insecure: "y" is not a boolean`},
		{"[vmware]\nhost_ip = vc\nhost_port = https\nhost_username = u\n", `[vmware] host_port: "https" is not a port number`},
		{"[vmware]\ndatastore_regex = ([\n", `[vmware] datastore_regex: `},
		{"[placement]\nauth_type = v3applicationcredential\n", `[placement] auth_type: auth_type "v3applicationcredential" is not supported`},
		{"[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = many\n", `[oslo_messaging_rabbit] rabbit_qos_prefetch_count: `},
		{"[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\nrabbit_ha_queues = true\n", `rabbit_quorum_queue and rabbit_ha_queues`},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			p := writeConf(t, t.TempDir(), "nova.conf", tc.text)
			_, err := Load(LoadOptions{Files: []string{p}})
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !strings.Contains(tc.want, "rabbit_ha") && !strings.Contains(err.Error(), p+" [") {
				t.Fatalf("error %v does not name the file %s", err, p)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		t.Setenv("VCAGENT_CONFIG_FILE", "/nonexistent/nova.conf")
		_, err := Load(LoadOptions{})
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "/nonexistent/nova.conf") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("the environment's value is named as before", func(t *testing.T) {
		p := writeConf(t, t.TempDir(), "nova.conf", "[DEFAULT]\nreport_interval = 5\n")
		t.Setenv("VCAGENT_REPORT_INTERVAL", "-1s")
		_, err := Load(LoadOptions{Files: []string{p}})
		if err == nil || !strings.Contains(err.Error(), "VCAGENT_REPORT_INTERVAL") {
			t.Fatalf("got %v", err)
		}
	})
}

// TestConfigOutputRedactsSecrets: `vcagent config` shows every setting
// with its source and no password or token, from files or environment.
func TestConfigOutputRedactsSecrets(t *testing.T) {
	dir := t.TempDir()
	nova := writeConf(t, dir, "nova.conf", `[DEFAULT]
transport_url = rabbit://nova:RABBITPW@rmq1:5672,nova:RABBITPW2@rmq2/nova
[vmware]
host_ip = vc
host_username = admin
host_password = VCPW
[placement]
auth_type = password
auth_url = http://ks/v3
username = nova
password = PLACEMENTPW
[database]
connection = mysql+pymysql://cinder:DBPW@db/cinder?charset=utf8
`)
	cinder := writeConf(t, dir, "cinder.conf", `[DEFAULT]
enabled_backends = vmdk1, lvm
[vmdk1]
volume_driver = cinder.volume.drivers.vmware.vmdk.VMwareVcVmdkDriver
volume_backend_name = vmdk
vmware_host_ip = vc2
vmware_host_password = CINDERVCPW
vmware_cluster_name = CA
vmware_cluster_name = CB
[lvm]
volume_driver = cinder.volume.drivers.lvm.LVMVolumeDriver
[ovs]
bridge_mappings = physnet1:br-ex, physnet2:br-vlan
`)
	env := map[string]string{"VCAGENT_AUTH_TOKEN": "ENVTOKEN", "VCAGENT_PLACEMENT_ENDPOINT": "http://pl", "VCAGENT_VCENTER_URL": "https://admin:URLPW@vc/sdk"}
	setEnv(t, env)
	c, err := Load(LoadOptions{Files: []string{nova, cinder}})
	if err != nil {
		t.Fatal(err)
	}
	out := c.Effective()
	for _, secret := range []string{"RABBITPW", "VCPW", "PLACEMENTPW", "DBPW", "CINDERVCPW", "ENVTOKEN", "URLPW"} {
		if strings.Contains(out, secret) {
			t.Errorf("vcagent config shows %s:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		"VCAGENT_TRANSPORT_URL=rabbit://nova:***@rmq1:5672,nova:***@rmq2:5672/nova  # file:" + nova + ":DEFAULT.transport_url\n",
		"VCAGENT_VCENTER_PASSWORD=***  # file:" + nova + ":vmware.host_password\n",
		"VCAGENT_AUTH_PASSWORD=***  # file:" + nova + ":placement.password\n",
		"VCAGENT_AUTH_TOKEN=***  # env VCAGENT_AUTH_TOKEN\n",
		"VCAGENT_VCENTER_URL=https://admin:xxxxx@vc/sdk  # env VCAGENT_VCENTER_URL\n",
		"VCAGENT_VCENTER_CA_FILE=\"\"  # default\n",
		"[database] connection=mysql+pymysql://cinder:xxxxx@db/cinder?charset=utf8  # file:" + nova + ":database.connection; not used yet (cinder-volume)\n",
		"[DEFAULT] enabled_backends=vmdk1,lvm  # file:" + cinder + ":DEFAULT.enabled_backends; not used yet (cinder-volume)\n",
		"[vmdk1] vmware_host_password=***  # file:" + cinder,
		"[vmdk1] vmware_cluster_name=CB  # file:" + cinder,
		"[ovs] bridge_mappings=physnet1:br-ex,physnet2:br-vlan  # file:" + cinder + ":ovs.bridge_mappings; not used yet (neutron agent)\n",
		"# not used: [lvm] volume_driver (" + cinder + ")\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("vcagent config lacks %q:\n%s", want, out)
		}
	}
	p := c.Pending()
	if len(p.VolumeBackends) != 1 || p.VolumeBackends[0].BackendName != "vmdk" ||
		!reflect.DeepEqual(p.VolumeBackends[0].VMware["vmware_cluster_name"], []string{"CA", "CB"}) ||
		p.VolumeBackends[0].VMware["vmware_host_password"][0] != "CINDERVCPW" ||
		!reflect.DeepEqual(p.BridgeMappings, []string{"physnet1:br-ex", "physnet2:br-vlan"}) {
		t.Errorf("pending options %+v", p)
	}
}

// TestOneTable: every setting has a variable and a description; every conf
// key is used by exactly one setting; and descriptions do not spell file
// options themselves (the conf tag does), so help and mapping agree.
func TestOneTable(t *testing.T) {
	table, err := settingsTable()
	if err != nil {
		t.Fatal(err)
	}
	setEnv(t, map[string]string{"VCAGENT_HOST": "h"})
	seen := map[confKey]string{}
	help := Usage()
	for _, s := range table {
		if s.desc == "" {
			t.Errorf("%s has no desc", s.envName())
		}
		if strings.Contains(s.desc, "([") {
			t.Errorf("%s: desc names a file option; use the conf tag: %q", s.envName(), s.desc)
		}
		if !strings.Contains(help, "  "+s.envName()+"\n") && !strings.Contains(help, "  "+s.envName()+"  (default") {
			t.Errorf("--help lacks %s", s.envName())
		}
		for i, k := range s.keys {
			if s.mode == "token_auth" || s.mode == "password_auth" {
				if i == 1 {
					continue // auth_type gates several settings
				}
			}
			if other, dup := seen[k]; dup {
				t.Errorf("%s is the option of %s and %s", k, other, s.envName())
			}
			seen[k] = s.envName()
			if !strings.Contains(help, k.String()) && !strings.Contains(help, k.key) {
				t.Errorf("--help lacks %s of %s", k, s.envName())
			}
		}
		if s.hasDef {
			c, err := Load(LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := formatValue(reflect.ValueOf(c).FieldByIndex(s.index)); s.def != "" && got == "" {
				t.Errorf("%s: default %q not applied", s.envName(), s.def)
			}
		}
	}
}

// TestSubstitution: oslo.config's $templates in the values the agent uses.
func TestSubstitution(t *testing.T) {
	setEnv(t, nil)
	tests := []struct{ name, text, want string }{
		{"$$ and \\$ are a dollar", "[vmware]\nhost_username = a$$b\\$c\n", "a$b$c"},
		{"bare name: own section first", "[DEFAULT]\nuser = fromdefault\n[vmware]\nuser = fromvmware\nhost_username = $user\n", "fromvmware"},
		{"bare name: then DEFAULT", "[DEFAULT]\nuser = fromdefault\n[vmware]\nhost_username = ${user}x\n", "fromdefaultx"},
		{"group.name", "[other]\nuser = o\n[vmware]\nhost_username = ${other.user}-$other.user\n", "o-o"},
		{"nested", "[DEFAULT]\na = $b\nb = deep\n[vmware]\nhost_username = $a\n", "deep"},
		{"a lone $ is kept", "[vmware]\nhost_username = a$ b$\n", "a$ b$"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConf(t, t.TempDir(), "nova.conf", tc.text)
			c, err := Load(LoadOptions{Files: []string{p}})
			if err != nil || c.VCenterUser != tc.want {
				t.Fatalf("got %q, %v; want %q", c.VCenterUser, err, tc.want)
			}
		})
	}
	t.Run("a failed substitution in a secret does not show it", func(t *testing.T) {
		p := writeConf(t, t.TempDir(), "nova.conf", "[vmware]\nhost_password = pa$ssw0rd\n")
		_, err := Load(LoadOptions{Files: []string{p}})
		if err == nil || !strings.Contains(err.Error(), "[vmware] host_password") || strings.Contains(err.Error(), "ssw0rd") {
			t.Fatalf("got %v", err)
		}
	})
}
