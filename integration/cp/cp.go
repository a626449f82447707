//go:build integration

// Package cp runs the OpenStack control plane of integration/controlplane (real nova-api,
// nova-conductor, nova-scheduler, placement and glance from Debian's packages, no keystone)
// for end-to-end tests, and offers small REST / CLI helpers against it.
//
// Typical use, from a TestMain:
//
//	var ctrl *cp.ControlPlane
//
//	func TestMain(m *testing.M) {
//		var err error
//		ctrl, err = cp.Start(context.Background(), "") // "" = $VCAGENT_CP_WORK or /tmp/vcagent-cp
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := m.Run()
//		ctrl.Stop()
//		os.Exit(code)
//	}
//
// up.sh runs once per work dir and test process. Several test binaries (go test runs
// packages in parallel) may share one work dir: each registers itself under WORK/users,
// and only the last one to Stop runs down.sh. VCAGENT_CP_KEEP=1 leaves the control plane
// running after Stop (for a look at it afterwards, or a faster next run).
package cp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Env is WORK/env.json as written by integration/controlplane/up.sh.
type Env struct {
	Work                  string            `json:"work"`
	TransportURL          string            `json:"transport_url"` // for the compute (the vhost)
	Rabbit                Rabbit            `json:"rabbit"`
	Token                 string            `json:"token"`       // value of AuthHeader
	AuthHeader            string            `json:"auth_header"` // "X-Auth-Token"
	NovaURL               string            `json:"nova_url"`    // http://127.0.0.1:18774/v2.1
	NovaMicroversion      string            `json:"nova_microversion"`
	PlacementURL          string            `json:"placement_url"`
	PlacementMicroversion string            `json:"placement_microversion"`
	GlanceURL             string            `json:"glance_url"`  // without /v2
	NeutronURL            string            `json:"neutron_url"` // neutron-server, as nova uses it
	NovaConf              string            `json:"nova_conf"`
	NovaComputeConf       string            `json:"nova_compute_conf"` // a VMware nova-compute's config
	PlacementConf         string            `json:"placement_conf"`
	GlanceConf            string            `json:"glance_conf"`
	ComputeHost           string            `json:"compute_host"` // [DEFAULT] host in NovaComputeConf
	Cell                  string            `json:"cell"`
	ReportInterval        int               `json:"report_interval"`
	ServiceDownTime       int               `json:"service_down_time"`
	DiscoverHostsInterval int               `json:"discover_hosts_interval"`
	MySQLSocket           string            `json:"mysql_socket"`
	Databases             map[string]string `json:"databases"`
	NovaManageCmd         []string          `json:"nova_manage"`
	OpenStackEnv          map[string]string `json:"openstack_env"`
	LogDir                string            `json:"log_dir"`
	RunDir                string            `json:"run_dir"`
	Pids                  map[string]int    `json:"pids"`

	// cinder-api and cinder-scheduler (no cinder-volume: the agent is the volume service)
	CinderURL          string   `json:"cinder_url"` // http://127.0.0.1:18776/v3/<project>
	CinderMicroversion string   `json:"cinder_microversion"`
	CinderConf         string   `json:"cinder_conf"`     // cinder-api's and cinder-scheduler's config
	CinderDB           string   `json:"cinder_db"`       // go-sql-driver/mysql DSN of the cinder database
	CinderExchange     string   `json:"cinder_exchange"` // cinder's oslo.messaging exchange ("openstack")
	CinderManageCmd    []string `json:"cinder_manage"`   // argv prefix of cinder-manage
	Project            string   `json:"project"`         // the project of Token ("user:project")

	// the real neutron-server (ML2, mechanism driver vmware_dvs from contrib/neutron) on a
	// port of its own; nova uses it too (NeutronURL is the same)
	NeutronServerURL     string `json:"neutron_server_url"`      // http://127.0.0.1:19697 (API below /v2.0)
	NeutronExchange      string `json:"neutron_exchange"`        // neutron's oslo.messaging exchange ("neutron")
	NeutronConf          string `json:"neutron_conf"`            // neutron-server's config
	ML2Conf              string `json:"ml2_conf"`                // its ml2_conf.ini
	NeutronAgentDownTime int    `json:"neutron_agent_down_time"` // seconds an agent stays alive after a report
}

// Rabbit is the broker and vhost of the control plane.
type Rabbit struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Password string `json:"password"`
	VHost    string `json:"vhost"`
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	Env
	scripts string
	client  *http.Client
	refs    int
}

// HTTPError is returned for an HTTP status >= 400.
type HTTPError struct {
	Method, URL string
	StatusCode  int
	Body        string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.StatusCode, strings.TrimSpace(e.Body))
}

// StatusCode returns the HTTP status of err if it is (or wraps) an *HTTPError, else 0.
func StatusCode(err error) int {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

var (
	mu      sync.Mutex
	running = map[string]*ControlPlane{}
)

// Start brings the control plane up in work (integration/controlplane/up.sh; "" means
// $VCAGENT_CP_WORK, else /tmp/vcagent-cp; keep it short: the MariaDB socket lives there)
// and reads its env.json. Within one process up.sh runs once per work dir; later calls
// return the same *ControlPlane. up.sh's output goes to WORK/log/up.log.
func Start(ctx context.Context, work string) (*ControlPlane, error) {
	if work == "" {
		work = os.Getenv("VCAGENT_CP_WORK")
	}
	if work == "" {
		work = "/tmp/vcagent-cp"
	}
	work, err := filepath.Abs(work)
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	if c := running[work]; c != nil {
		c.refs++
		return c, nil
	}
	scripts, err := scriptsDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(work, "log"), 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockUsers(work)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := runScript(ctx, filepath.Join(scripts, "up.sh"), work); err != nil {
		// leave no half-started control plane behind, unless someone else uses it
		if unregisterUser(work) == 0 && os.Getenv("VCAGENT_CP_KEEP") != "1" {
			dctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if derr := runScript(dctx, filepath.Join(scripts, "down.sh"), work); derr != nil {
				err = fmt.Errorf("%w (and down.sh: %v)", err, derr)
			}
		}
		return nil, err
	}
	c := &ControlPlane{scripts: scripts, client: &http.Client{Timeout: 2 * time.Minute}, refs: 1}
	data, err := os.ReadFile(filepath.Join(work, "env.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &c.Env); err != nil {
		return nil, fmt.Errorf("%s/env.json: %w", work, err)
	}
	if err := registerUser(work); err != nil {
		return nil, err
	}
	running[work] = c
	return c, nil
}

// Stop runs down.sh unless another Start (this process, or another test binary on the
// same work dir) still uses the control plane, or VCAGENT_CP_KEEP=1.
func (c *ControlPlane) Stop() error {
	mu.Lock()
	defer mu.Unlock()
	if c.refs--; c.refs > 0 {
		return nil
	}
	delete(running, c.Work)
	unlock, err := lockUsers(c.Work)
	if err != nil {
		return err
	}
	defer unlock()
	if others := unregisterUser(c.Work); others > 0 || os.Getenv("VCAGENT_CP_KEEP") == "1" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return runScript(ctx, filepath.Join(c.scripts, "down.sh"), c.Work)
}

// Nova sends a request to nova-api (path below /v2.1, e.g. "/servers/detail") at the
// microversion of env.json and returns the decoded JSON object (nil for an empty body).
func (c *ControlPlane) Nova(ctx context.Context, method, path string, body any) (map[string]any, error) {
	h := http.Header{}
	h.Set("OpenStack-API-Version", "compute "+c.NovaMicroversion)
	h.Set("X-OpenStack-Nova-API-Version", c.NovaMicroversion)
	return c.Do(ctx, method, c.NovaURL+path, body, h)
}

// NovaGET is Nova(ctx, "GET", path, nil).
func (c *ControlPlane) NovaGET(ctx context.Context, path string) (map[string]any, error) {
	return c.Nova(ctx, http.MethodGet, path, nil)
}

// NovaPOST is Nova(ctx, "POST", path, body); body is marshalled unless it is []byte.
func (c *ControlPlane) NovaPOST(ctx context.Context, path string, body any) (map[string]any, error) {
	return c.Nova(ctx, http.MethodPost, path, body)
}

// NovaDELETE is Nova(ctx, "DELETE", path, nil).
func (c *ControlPlane) NovaDELETE(ctx context.Context, path string) (map[string]any, error) {
	return c.Nova(ctx, http.MethodDelete, path, nil)
}

// PlacementGET sends GET path (e.g. "/resource_providers") to placement at the
// microversion of env.json.
func (c *ControlPlane) PlacementGET(ctx context.Context, path string) (map[string]any, error) {
	h := http.Header{}
	h.Set("OpenStack-API-Version", "placement "+c.PlacementMicroversion)
	return c.Do(ctx, http.MethodGet, c.PlacementURL+path, nil, h)
}

// Do sends a JSON request with the control plane's token to any URL (e.g. glance:
// c.GlanceURL+"/v2/images") and decodes a JSON object answer. A status >= 400 gives an
// *HTTPError.
func (c *ControlPlane) Do(ctx context.Context, method, url string, body any, h http.Header) (map[string]any, error) {
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return nil, err
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set(c.AuthHeader, c.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// The caller's headers win (e.g. a binary upload's content type).
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		return nil, &HTTPError{Method: method, URL: url, StatusCode: resp.StatusCode, Body: string(data)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s %s: HTTP %d, not a JSON object: %w", method, url, resp.StatusCode, err)
	}
	return out, nil
}

// NovaManage runs nova-manage with the control plane's nova.conf and returns its stdout.
func (c *ControlPlane) NovaManage(ctx context.Context, args ...string) (string, error) {
	argv := append(append([]string{}, c.NovaManageCmd...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = cleanEnv()
	return run(cmd)
}

// OpenStack runs the openstack CLI (python3-openstackclient, keystoneauth's admin_token
// plugin: fixed token, one fixed endpoint = nova) and returns its stdout. For glance or
// placement commands pass the endpoint first: "--os-endpoint", c.GlanceURL+"/v2" or
// c.PlacementURL.
func (c *ControlPlane) OpenStack(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "/usr/bin/openstack", args...)
	cmd.Env = cleanEnv()
	for k, v := range c.OpenStackEnv {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return run(cmd)
}

// cleanEnv is the environment without OS_* (the CLI's auth settings come from env.json)
// and without PYTHONPATH / PYTHONHOME (a virtualenv's must not reach Debian's python3).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OS_") && !strings.HasPrefix(kv, "PYTHONPATH=") &&
			!strings.HasPrefix(kv, "PYTHONHOME=") {
			env = append(env, kv)
		}
	}
	return env
}

func run(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, lastLines(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// runScript runs up.sh / down.sh WORK, output appended to WORK/log/up.log.
func runScript(ctx context.Context, script, work string) error {
	logf, err := os.OpenFile(filepath.Join(work, "log", "up.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s %s %s\n", time.Now().Format(time.RFC3339), script, work)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "/bin/bash", script, work)
	cmd.Stdout = io.MultiWriter(logf, &out)
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(script), work, err, lastLines(out.String(), 30))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// scriptsDir finds integration/controlplane: $VCAGENT_CP_SCRIPTS, else next to this
// source file, else above the working directory (go test runs in the package dir).
func scriptsDir() (string, error) {
	var cands []string
	if d := os.Getenv("VCAGENT_CP_SCRIPTS"); d != "" {
		cands = append(cands, d)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		cands = append(cands, filepath.Join(filepath.Dir(file), "..", "controlplane"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cands = append(cands, filepath.Join(d, "integration", "controlplane"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range cands {
		if _, err := os.Stat(filepath.Join(d, "up.sh")); err == nil {
			return filepath.Clean(d), nil
		}
	}
	return "", errors.New("cp: integration/controlplane/up.sh not found (set VCAGENT_CP_SCRIPTS)")
}

// ---- users of a work dir across processes: WORK/users/PID holds the process' start time
// (so that a recycled pid does not count), guarded by flock(WORK/.users.lock).

func lockUsers(work string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(work, ".users.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		if f := strings.Fields(s[i+1:]); len(f) > 19 {
			return f[19] // field 22: starttime
		}
	}
	return ""
}

func registerUser(work string) error {
	dir := filepath.Join(work, "users")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pid := os.Getpid()
	return os.WriteFile(filepath.Join(dir, strconv.Itoa(pid)), []byte(procStart(pid)), 0o644)
}

// unregisterUser removes this process (and dead ones) and returns how many users remain.
func unregisterUser(work string) int {
	dir := filepath.Join(work, "users")
	os.Remove(filepath.Join(dir, strconv.Itoa(os.Getpid())))
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || procStart(pid) == "" || procStart(pid) != string(b) {
			os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		n++
	}
	return n
}
