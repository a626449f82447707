//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// confHost is this test's compute host; no other test uses it.
const confHost = "confhost1"

// TestConfFileReplacesPythonNovaCompute: the agent reads the very files
// integration/controlplane/up.sh writes for the Python services — the
// control plane's nova.conf and a VMware nova-compute's nova-compute.conf —
// given only through VCAGENT_CONFIG_FILE, and joins the real control plane:
// its nova-compute service comes up in nova's API, serving the cluster
// [vmware] cluster_name names on the datastores datastore_regex selects.
// `vcagent config` on the same files shows each value's source (later
// files winning, the environment winning over files) and never a password
// or token of those files, and the agent's own log has none either.
func TestConfFileReplacesPythonNovaCompute(t *testing.T) {
	ctrl := controlPlane(t)
	dir := t.TempDir()
	// An operator's site file read last: it names this test's compute host
	// (up.sh's nova-compute.conf names vcagent-1, shared by other tests) and
	// turns on debug logging, so that the options vcagent does not use are
	// logged.
	site := filepath.Join(dir, "site.conf")
	if err := os.WriteFile(site, []byte("[DEFAULT]\n# this test's host\nhost = "+confHost+"\ndebug = True\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := ctrl.NovaConf + "," + ctrl.NovaComputeConf + "," + site
	secrets := fileSecrets(t, ctrl.NovaConf, ctrl.NovaComputeConf)
	for _, must := range []string{"=" + ctrl.Token + " ", ":" + ctrl.Rabbit.Password + "@"} {
		if !slices.Contains(secrets, must) {
			t.Fatalf("the files' secrets %q lack %q", secrets, must)
		}
	}

	// The only variables besides VCAGENT_CONFIG_FILE are those the files
	// cannot carry: VCAGENT_VCENTER_URL set empty overrides the files'
	// [vmware] host_ip/host_port (vcsim placeholders no vCenter listens on)
	// and starts the agent's embedded vCenter simulator, whose clusters and
	// datastores carry the names the files' cluster_name and datastore_regex
	// select (DC0_C0, LocalDS_*); startAgent adds the JSON log format the
	// test reads, an ephemeral port for /metrics and a short drain.
	env := []string{"VCAGENT_CONFIG_FILE=" + files, "VCAGENT_VCENTER_URL="}

	t.Run("config", func(t *testing.T) {
		out := runConfig(t, env)
		lines := settingLines(out)
		tu, err := rpc.ParseTransportURL(ctrl.TransportURL)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][2]string{ // value, source
			"VCAGENT_CONFIG_FILE":        {files, "env VCAGENT_CONFIG_FILE"},
			"VCAGENT_HOST":               {confHost, "file:" + site + ":DEFAULT.host"},
			"VCAGENT_TRANSPORT_URL":      {tu.Redacted(), "file:" + ctrl.NovaComputeConf + ":DEFAULT.transport_url"},
			"VCAGENT_REPORT_INTERVAL":    {(time.Duration(ctrl.ReportInterval) * time.Second).String(), "file:" + ctrl.NovaComputeConf + ":DEFAULT.report_interval"},
			"VCAGENT_VCENTER_URL":        {`""`, "env VCAGENT_VCENTER_URL"},
			"VCAGENT_VCENTER_PASSWORD":   {"***", "file:" + ctrl.NovaComputeConf + ":vmware.host_password"},
			"VCAGENT_CLUSTERS":           {"DC0_C0", "file:" + ctrl.NovaComputeConf + ":vmware.cluster_name"},
			"VCAGENT_DATASTORE_REGEX":    {"LocalDS_.*", "file:" + ctrl.NovaComputeConf + ":vmware.datastore_regex"},
			"VCAGENT_AUTH_TOKEN":         {"***", "file:" + ctrl.NovaComputeConf + ":placement.token"},
			"VCAGENT_PLACEMENT_ENDPOINT": {ctrl.PlacementURL, "file:" + ctrl.NovaComputeConf + ":placement.endpoint"},
			"VCAGENT_GLANCE_ENDPOINT":    {ctrl.GlanceURL, "file:" + ctrl.NovaComputeConf + ":glance.endpoint_override"},
			"VCAGENT_LOG_LEVEL":          {"debug", "file:" + site + ":DEFAULT.debug"},
			"VCAGENT_SHUTDOWN_TIMEOUT":   {"5s", "file:" + ctrl.NovaConf + ":DEFAULT.graceful_shutdown_timeout"},
			"VCAGENT_CONTROL_EXCHANGE":   {"nova", "default"},
			"[database] connection":      {"", "file:" + ctrl.NovaConf + ":database.connection"},
		}
		for name, w := range want {
			got, ok := lines[name]
			if !ok {
				t.Errorf("vcagent config has no %s:\n%s", name, out)
				continue
			}
			if (w[0] != "" && got[0] != w[0]) || got[1] != w[1] {
				t.Errorf("%s: got %q from %q, want %q from %q", name, got[0], got[1], w[0], w[1])
			}
		}
		if db := lines["[database] connection"][0]; !strings.Contains(db, ":xxxxx@") {
			t.Errorf("database connection not redacted: %s", db)
		}
		if !strings.Contains(out, "# not used: [vmware] task_poll_interval") || !strings.Contains(out, "# not used: [api] auth_strategy") {
			t.Errorf("unused options not listed:\n%s", out)
		}
		noSecrets(t, "vcagent config", out, secrets)

		// the same files as --config-file arguments, without the site
		// file and the environment: the vCenter of the files, and the
		// compute file's host
		out = runConfig(t, nil, "--config-file", ctrl.NovaConf, "--config-file", ctrl.NovaComputeConf)
		lines = settingLines(out)
		if got := lines["VCAGENT_HOST"]; got[0] != ctrl.ComputeHost || got[1] != "file:"+ctrl.NovaComputeConf+":DEFAULT.host" {
			t.Errorf("host %q from %q", got[0], got[1])
		}
		if got := lines["VCAGENT_VCENTER_URL"]; !strings.HasPrefix(got[0], "https://") || !strings.HasSuffix(got[0], "/sdk") ||
			got[1] != "file:"+ctrl.NovaComputeConf+":vmware.host_ip + file:"+ctrl.NovaComputeConf+":vmware.host_port" {
			t.Errorf("vCenter URL %q from %q", got[0], got[1])
		}
		noSecrets(t, "vcagent config --config-file", out, secrets)
	})

	t.Run("agent", func(t *testing.T) {
		a := startAgent(t, env...)
		waitServiceState(t, ctrl, confHost, "up", 90*time.Second)
		// [vmware] cluster_name = DC0_C0 of nova-compute.conf: one
		// cluster of the simulator's two, one compute node
		cls := clusterLogs(t, a)
		if len(cls) != 1 {
			t.Fatalf("serving %d clusters, want the one of cluster_name: %v", len(cls), cls)
		}
		for _, c := range cls {
			if c["cluster"] != "DC0_C0" {
				t.Errorf("serving %v, want DC0_C0", c["cluster"])
			}
			for _, ds := range c["datastores"].([]any) {
				if !strings.HasPrefix(ds.(string), "LocalDS_") {
					t.Errorf("datastore %v does not match datastore_regex", ds)
				}
			}
		}
		hypervisorsOf(t, ctrl, confHost, 1)
		// debug = True of the site file: the options vcagent does not use
		// are logged, each once, without their values
		unused := 0
		seen := map[string]bool{}
		a.mu.Lock()
		var all bytes.Buffer
		for _, l := range a.logs {
			b, _ := json.Marshal(l)
			all.Write(b)
			all.WriteByte('\n')
			if l["message"] == "config file option not used by vcagent" {
				unused++
				k := l["section"].(string) + "." + l["option"].(string)
				if seen[k] {
					t.Errorf("unused option %s logged twice", k)
				}
				seen[k] = true
			}
		}
		a.mu.Unlock()
		if unused == 0 || !seen["api.auth_strategy"] || !seen["vmware.task_poll_interval"] {
			t.Errorf("unused options logged: %v", seen)
		}
		noSecrets(t, "the agent's log", all.String(), secrets)
		if err := a.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-a.done:
			if err != nil {
				t.Errorf("agent exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop within 30 s of SIGINT")
		}
	})
}

// runConfig runs `vcagent config` with args, in an environment without any
// VCAGENT_* variable but env's.
func runConfig(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(agentBinary, append([]string{"config"}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VCAGENT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("vcagent config: %v\n%s", err, stderr.String())
	}
	return stdout.String()
}

// settingLines parses `vcagent config` lines "NAME=VALUE  # SOURCE[; note]"
// into NAME → {VALUE, SOURCE}.
func settingLines(out string) map[string][2]string {
	m := map[string][2]string{}
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		nv, src, _ := strings.Cut(l, "  # ")
		src, _, _ = strings.Cut(src, "; ")
		name, value, _ := strings.Cut(nv, "=")
		m[name] = [2]string{value, src}
	}
	return m
}

// fileSecrets returns the secret values the files hold: passwords and
// tokens, and the passwords inside URLs. Each is returned with the text
// around it that makes it unambiguous in output ("guest" is also the user
// name of "guest:guest@").
func fileSecrets(t *testing.T, paths ...string) []string {
	t.Helper()
	var out []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(l, "=")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !ok || v == "" || strings.HasPrefix(k, "#") {
				continue
			}
			switch {
			case strings.HasSuffix(k, "password") || k == "token":
				out = append(out, "="+v+"\n", "="+v+" ", `"`+v+`"`)
			case strings.Contains(v, "://") && strings.Contains(v, "@"):
				// user:password@ of every host of the URL
				for _, part := range strings.Split(v, ",") {
					if at := strings.LastIndexByte(part, '@'); at >= 0 {
						cred := part[:at]
						if i := strings.LastIndex(cred, "/"); i >= 0 {
							cred = cred[i+1:]
						}
						if _, pw, ok := strings.Cut(cred, ":"); ok && pw != "" {
							out = append(out, ":"+pw+"@")
						}
					}
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("the files hold no secret to look for")
	}
	return out
}

func noSecrets(t *testing.T, what, text string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s shows a secret of the files (%q)", what, strings.TrimSpace(s))
		}
	}
}
